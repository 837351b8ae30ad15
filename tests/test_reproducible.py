"""One dataset name, one dataset: a generated dataset's arrays do not depend on the machine.

Two generations of offbench/hopper/{medium,medium-replay}-v0 side by side, each in its own process and
dataset folder: one as this machine runs it, one under conditions that stand for another machine (XLA
compiling for SSE4.2 instead of the CPU's best vector instructions, one XLA thread, NumPy without its
run-time dispatched SIMD loops, and two collection processes instead of one). Their fingerprints must be
equal. With the behaviour policy computed in float32 they differed from the first action on.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

GENERATE = """
import json, sys
from offbench.datasets.fingerprint import fingerprint
from offbench.datasets.generate import catalog

ids = catalog.generate_env(
    "hopper", size=1000, kinds=("medium", "medium-replay"), reference_episodes=4, workers=int(sys.argv[1])
)
print(json.dumps({identifier: fingerprint(identifier) for identifier in ids}))
"""


def other_machine(environment: dict[str, str]) -> dict[str, str]:
    """``environment`` changed to stand for another CPU and thread count."""
    from numpy._core import _multiarray_umath

    flags = ["--xla_cpu_multi_thread_eigen=false"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        flags.insert(0, "--xla_cpu_max_isa=SSE4_2")
    return {
        **environment,
        "XLA_FLAGS": " ".join(flags),
        # Every feature NumPy dispatches on at run time (its baseline cannot be turned off).
        "NPY_DISABLE_CPU_FEATURES": " ".join(_multiarray_umath.__cpu_dispatch__),
        "NPROC": "1",  # the size of XLA's CPU thread pool
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def start(folder: Path, environment: dict[str, str], workers: int) -> subprocess.Popen:
    folder.mkdir()
    return subprocess.Popen(
        [sys.executable, "-c", GENERATE, str(workers)],
        env={**environment, "MINARI_DATASETS_PATH": str(folder)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def fingerprints(process: subprocess.Popen) -> dict[str, str]:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def test_generated_data_are_the_same_under_another_instruction_set_thread_and_worker_count(tmp_path):
    environment = {key: value for key, value in os.environ.items() if key not in ("XLA_FLAGS",)}
    here = start(tmp_path / "here", environment, workers=1)
    elsewhere = start(tmp_path / "elsewhere", other_machine(environment), workers=2)
    ours, theirs = fingerprints(here), fingerprints(elsewhere)
    assert set(ours) == {"offbench/hopper/medium-v0", "offbench/hopper/medium-replay-v0"}
    assert ours == theirs


def test_generation_records_what_made_the_data(tmp_path, monkeypatch):
    from offbench.bench import provenance
    from offbench.datasets.generate.storage import read_generation_record, write_generation_record

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    folder = tmp_path / "offbench" / "hopper" / "medium-v0"
    write_generation_record(folder, {"generator": "test", "seed": 3, "size": 1000})
    record = read_generation_record("offbench/hopper/medium-v0")
    assert record["seed"] == 3 and record["size"] == 1000
    assert record["mujoco"] == provenance.package_version("mujoco")
    assert record["numpy"] == np.__version__
    assert record["cpu_isa"] == provenance.cpu_isa()
    assert record["code_version"] == provenance.code_version()["code_version"]
    assert read_generation_record("offbench/hopper/expert-v0") is None


def test_a_dataset_generated_by_an_older_offbench_is_refused_with_the_fix(tmp_path, monkeypatch):
    import pytest
    from rollouts import rollout_episodes

    from offbench.datasets import provision
    from offbench.datasets.dataset import DatasetError
    from offbench.datasets.generate.rollout import write_minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    episodes = rollout_episodes("Hopper-v5", 60, lambda observation, rng: rng.uniform(-1, 1, 3), seed=0)
    write_minari("offbench/hopper/medium-v0", "Hopper-v5", episodes)  # no generation record beside it
    with pytest.raises(DatasetError, match=r"older offbench.*rm -r .*offbench/hopper"):
        provision.ensure_datasets(["offbench/hopper/medium-v0"], provision.available_dataset_ids())
