"""Shared fixtures: small datasets built here, with Minari's own API or h5py, never downloaded."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# One persistent XLA compilation cache for the whole test session, subprocesses included (they inherit
# the environment): the tests train the same tiny networks over and over, and on a 2-core CPU compiling
# them is most of their time. Set before JAX is imported; a cached executable computes the same numbers.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="offbench-test-xla-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )

# XLA's optimisation passes (LLVM's above all) cost more than they save on programs that run a few
# updates of tiny networks once: without them the default test run compiles about a third faster. The
# numbers stay within the tests' tolerances; the regression check and every benchmark run outside pytest,
# fully optimised. Set OFFBENCH_TEST_OPTIMIZED=1 to test the optimised programs.
if os.environ.get("OFFBENCH_TEST_OPTIMIZED") != "1":
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from rollouts import rollout_episodes  # noqa: E402
from toy import make_toy_dataset  # noqa: E402

from offbench.datasets.generate.rollout import write_minari  # noqa: E402


def noisy_hopper_policy(observation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fixed linear policy plus noise: falls at varied times, so episodes end by termination."""
    weights = np.linspace(-0.5, 0.5, 33).reshape(3, 11)
    return np.tanh(weights @ observation) + 0.3 * rng.standard_normal(3)


@pytest.fixture
def toy_dataset():
    """A factory: ``toy_dataset(n)`` builds a small random dataset with no environment."""
    return make_toy_dataset


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("minari")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("MINARI_DATASETS_PATH", str(root))
    yield root
    patcher.undo()


@pytest.fixture(scope="session")
def hopper_minari(minari_root: Path) -> str:
    """~3k Hopper-v5 steps written with Minari's API, with reference scores."""
    dataset_id = "test/hopper/noisy-v0"
    write_minari(
        dataset_id,
        "Hopper-v5",
        rollout_episodes("Hopper-v5", 3_000, noisy_hopper_policy),
        ref_min_score=-20.0,
        ref_max_score=3000.0,
    )
    write_minari(
        "test/hopper/norefs-v0", "Hopper-v5", rollout_episodes("Hopper-v5", 300, noisy_hopper_policy)
    )
    return dataset_id
