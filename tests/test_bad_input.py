"""The bad-input catalogue (issue 14): each class of bad input, given to the command line, ends in exit
code 2 and one line that names the problem and the fix, before any training, and writes nothing to the
output directory. Hyper-parameter ranges are also checked field by field for every algorithm."""

from __future__ import annotations

import logging
import math
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer
from typer.testing import CliRunner

from offbench.algorithms.config import field_range, numeric_fields, resolve_config
from offbench.algorithms.registry import available_algorithms, get_algorithm
from offbench.bench.cli import app
from offbench.datasets.d4rl_hdf5 import write_d4rl_hdf5

runner = CliRunner()


def refused(args: list[str], fragment: str, out: Path) -> str:
    """Run the command line; it must exit 2 with one error line holding ``fragment`` and write nothing."""
    result = runner.invoke(app, args, catch_exceptions=False)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1 and fragment in errors[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not [path for path in out.rglob("*") if path.is_file()]
    return errors[0]


# --------------------------------------------------------------------------------------------------
# Hyper-parameters: declared ranges, checked in resolve_config


def test_every_numeric_field_of_every_algorithm_declares_a_range():
    undeclared = [
        f"{name}.{field}"
        for name in available_algorithms()
        for field in numeric_fields(get_algorithm(name).Config)
        if field_range(get_algorithm(name).Config, field) is None
    ]
    assert not undeclared, f"declare these with bounded(): {undeclared}"


def out_of_range_values(config_type: type, field: str) -> list:
    """Values just outside the field's declared range, and NaN and infinity where the field takes floats."""
    valid = field_range(config_type, field)
    default = getattr(config_type(), field)
    integer = isinstance(default[0] if isinstance(default, tuple) else default, int)
    values = []
    if math.isfinite(valid.low):
        values.append(valid.low if valid.low_open else valid.low - 1)
    if math.isfinite(valid.high):
        values.append(valid.high if valid.high_open else valid.high + 1)
    if not integer:
        values += [math.nan, math.inf]
    if integer:
        values = [int(v) for v in values]
    return [(v,) if isinstance(default, tuple) else v for v in values]


CASES = [
    (name, field, value)
    for name in available_algorithms()
    for field in numeric_fields(get_algorithm(name).Config)
    for value in out_of_range_values(get_algorithm(name).Config, field)
]


@pytest.mark.parametrize(("algorithm", "field", "value"), CASES, ids=[f"{a}-{f}={v}" for a, f, v in CASES])
def test_every_out_of_range_value_is_refused(algorithm, field, value):
    config_type = get_algorithm(algorithm).Config
    with pytest.raises(ValueError, match=rf"^{algorithm}: {field}=.* is out of range: it must be .*\. Fix"):
        resolve_config(config_type, "x", (), {field: value})


@pytest.fixture(scope="module")
def hopper_file(tmp_path_factory) -> Path:
    """A D4RL-format file of 30 random Hopper-shaped steps (its name says Hopper-v5)."""
    return write_hopper_like(tmp_path_factory.mktemp("data") / "hopper-random-v2.hdf5")


def write_hopper_like(path: Path, **replace) -> Path:
    n = 30
    rng = np.random.default_rng(0)
    arrays = {
        "observations": rng.normal(size=(n, 11)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": np.eye(1, n, n - 1, dtype=bool)[0],
    }
    arrays.update(replace)
    return write_d4rl_hdf5(path, {key: value for key, value in arrays.items() if value is not None})


@pytest.mark.parametrize(
    ("hparam", "message"),
    [
        (
            "batch_size=0",
            "td3bc: batch_size=0 is out of range: it must be an integer >= 1. Fix the -p/suite value.",
        ),
        ("alpha=nan", "td3bc: alpha=nan is out of range: it must be a finite number >= 0."),
        ("discount=1.5", "discount=1.5 is out of range: it must be a number in (0, 1]."),
        ("actor_lr=-0.001", "actor_lr=-0.001 is out of range: it must be a finite number > 0."),
        ("hidden_dims=0", "hidden_dims=(0,) is out of range: it must be one or more integers >= 1."),
        ("tau=0", "tau=0.0 is out of range: it must be a number in (0, 1]."),
        ("policy_freq=0", "policy_freq=0 is out of range"),
        ("sampler_top_fraction=1.5", "sampler_top_fraction=1.5 is out of range"),
        ("batch_size=inf", "hyper-parameter batch_size='inf' is not a valid int."),
        ("batch_size=2.5", "hyper-parameter batch_size='2.5' is not a valid int."),
    ],
)
def test_run_refuses_out_of_range_hyper_parameters(hopper_file, tmp_path, hparam, message):
    out = tmp_path / "out"
    args = [
        "run",
        "--algorithm",
        "td3bc",
        "--dataset",
        str(hopper_file),
        "--steps",
        "10",
        "--eval-every",
        "10",
    ]
    refused([*args, "-p", hparam, "--out", str(out)], message, out)


# --------------------------------------------------------------------------------------------------
# Suites: every key's type, the evaluation schedule, hyper-parameter ranges


SUITE = """
name = "tiny"
datasets = ["x/y-v0"]
seeds = "0-1"
steps = 60
eval_every = 20
eval_episodes = 1
final_k = 2

[[algorithms]]
name = "td3bc"
hparams = { hidden_dims = [16, 16], batch_size = 32 }
"""


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("batch_size = 32", "batch_size = 32, alpha = nan", "td3bc: alpha=nan is out of range"),
        ("batch_size = 32", "batch_size = 0", "td3bc: batch_size=0 is out of range"),
        ("eval_every = 20", "eval_every = 100", "eval_every=100 is larger than steps=60"),
        ("final_k = 2", "final_k = 4", "final_k=4 is more than the 3 evaluation(s)"),
        ("steps = 60", 'steps = "60"', "steps must be a positive integer, got '60'. Write it as a number"),
        ('datasets = ["x/y-v0"]', "datasets = 3", "datasets must be a string or a non-empty list of strings"),
        ('name = "td3bc"', 'name = "td3bc"\nsamplers = 3', "samplers must be a string or a non-empty list"),
        ('name = "td3bc"', 'name = "td3bc"\nsamplers = "fancy"', "unknown sampler 'fancy'"),
        ("hparams = {", "hparams = 3\ngrid = {", "'hparams' must be a table of name = value"),
        ('name = "td3bc"', 'name = "td3bc"\ngrid = { alpha = 2.5 }', "grid.alpha must be a non-empty list"),
        ('name = "td3bc"', "name = 3", "name must be an algorithm name in quotes"),
        ('name = "td3bc"', 'label = "x"', "each [[algorithms]] table needs a 'name'"),
        ('name = "tiny"', 'name = "../elsewhere"', "names the results folder"),
        ('seeds = "0-1"', "seeds = [0, true]", "seeds must be a string like '0-4'"),
    ],
)
def test_sweep_refuses_bad_suites(tmp_path, old, new, message):
    path = tmp_path / "suite.toml"
    assert old in SUITE
    path.write_text(SUITE.replace(old, new, 1))
    out = tmp_path / "out"
    refused(["sweep", str(path), "--out", str(out)], message, out)


# --------------------------------------------------------------------------------------------------
# Data: malformed files and datasets, unknown environments


@pytest.fixture(scope="module")
def bad_minari(tmp_path_factory) -> Path:
    """A Minari root with damaged datasets: main_data.hdf5 truncated or missing, no episodes, unreadable
    metadata."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINARI_DATASETS_PATH", str(root))
        spaces = {
            "observation_space": gym.spaces.Box(-10.0, 10.0, (2,), np.float32),
            "action_space": gym.spaces.Box(-1.0, 1.0, (1,), np.float32),
        }
        meta = {
            "algorithm_name": "t",
            "author": "t",
            "author_email": "t@t.invalid",
            "code_permalink": "https://t.invalid",
            "description": "t",
        }
        steps = 50
        buffers = [
            EpisodeBuffer(
                id=i,
                observations=np.zeros((steps + 1, 2), np.float32),
                actions=np.zeros((steps, 1), np.float32),
                rewards=np.ones(steps, np.float32),
                terminations=np.eye(1, steps, steps - 1, dtype=bool)[0],
                truncations=np.zeros(steps, bool),
                infos={},
            )
            for i in range(20)
        ]
        for name in ("truncated", "nodata", "metadata"):
            minari.create_dataset_from_buffers(f"bad/toy/{name}-v0", buffers, env=None, **spaces, **meta)
        minari.create_dataset_from_buffers("bad/toy/empty-v0", [], env=None, **spaces, **meta)
    data = root / "bad" / "toy"
    content = (data / "truncated-v0" / "data" / "main_data.hdf5").read_bytes()
    (data / "truncated-v0" / "data" / "main_data.hdf5").write_bytes(content[: len(content) // 2])
    (data / "nodata-v0" / "data" / "main_data.hdf5").unlink()
    (data / "metadata-v0" / "data" / "metadata.json").write_text("{ not json")
    return root


def bad_d4rl_file(folder: Path, kind: str) -> Path:
    path = folder / "hopper-bad-v2.hdf5"
    n = 30
    if kind == "empty":
        return write_hopper_like(
            path,
            observations=np.zeros((0, 11), np.float32),
            actions=np.zeros((0, 3), np.float32),
            rewards=np.zeros(0, np.float32),
            terminals=np.zeros(0, bool),
            timeouts=np.zeros(0, bool),
        )
    if kind == "truncated":
        write_hopper_like(
            path, observations=np.random.default_rng(0).normal(size=(n, 2000)).astype(np.float32)
        )
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path
    replace = {
        "obs-1d": {"observations": np.zeros(n, np.float32)},
        "obs-text": {"observations": np.array([b"x"] * n)},
        "rewards-2d": {"rewards": np.zeros((n, 2), np.float32)},
        "rewards-short": {"rewards": np.zeros(n - 1, np.float32)},
        "actions-missing": {"actions": None},
        "nan": {"actions": np.full((n, 3), np.nan, np.float32)},
    }[kind]
    return write_hopper_like(path, **replace)


def bad_npz_file(folder: Path, kind: str) -> Path:
    path = folder / "cube-single-play-singletask-task1-v0.npz"
    n = 11
    arrays = {
        "observations": np.zeros((n, 28), np.float32),
        "actions": np.zeros((n, 5), np.float32),
        "terminals": np.eye(1, n, n - 1, dtype=np.float32)[0],
        "qpos": np.zeros((n, 21), np.float32),
    }
    changes = {
        "npz-missing": {"qpos": None},
        "npz-obs-1d": {"observations": np.zeros(n, np.float32)},
        "npz-short": {"terminals": np.eye(1, n - 1, n - 2, dtype=np.float32)[0]},
        "npz-empty": {key: value[:0] for key, value in arrays.items()},
        "npz-qpos": {"qpos": np.zeros((n, 2), np.float32)},
    }[kind]
    arrays.update(changes)
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", "holds no steps: its arrays have 0 rows"),
        ("truncated", "is not a readable HDF5 file"),
        ("obs-1d", "'observations' has shape (30,); a D4RL-format file stores it as a 2-D"),
        ("obs-text", "'observations' holds |S1 values, not numbers"),
        ("rewards-2d", "'rewards' has shape (30, 2); it needs one value per row"),
        ("rewards-short", "mismatched lengths, 'rewards' has 29 rows but 'observations' has 30"),
        ("actions-missing", "has no 'actions' dataset(s)"),
        ("nan", "NaN/inf values"),
        ("npz-missing", "has no 'qpos' array(s)"),
        ("npz-obs-1d", "'observations' has shape (11,), not [rows, dimensions]"),
        ("npz-short", "mismatched lengths"),
        ("npz-empty", "holds no steps"),
        ("npz-qpos", "could not be relabelled for cube-single-singletask-task1-v0"),
    ],
)
def test_run_refuses_malformed_files(tmp_path, kind, message):
    path = (bad_npz_file if kind.startswith("npz") else bad_d4rl_file)(tmp_path, kind)
    out = tmp_path / "out"
    refused(
        ["run", "--algorithm", "bc", "--dataset", str(path), "--steps", "10", "--out", str(out)], message, out
    )


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        ("bad/toy/truncated-v0", "its episodes could not be read (OSError"),
        ("bad/toy/nodata-v0", "could not be read (ValueError: No data found"),
        ("bad/toy/empty-v0", "contains no episodes with at least one step"),
        ("bad/toy/metadata-v0", "Minari cannot read its metadata"),
    ],
)
def test_run_refuses_damaged_minari_datasets(bad_minari, tmp_path, monkeypatch, dataset, message):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(bad_minari))
    out = tmp_path / "out"
    line = refused(
        ["run", "--algorithm", "bc", "--dataset", dataset, "--steps", "10", "--out", str(out)], message, out
    )
    assert "delete" in line.lower() and "regenerate" in line.lower()


def test_run_refuses_data_of_another_environment_before_training(hopper_file, tmp_path):
    out = tmp_path / "out"
    args = ["run", "--algorithm", "bc", "--dataset", str(hopper_file), "--env", "HalfCheetah-v5"]
    line = refused([*args, "--steps", "10", "--out", str(out)], "belongs to another environment", out)
    assert "11 observation dimensions" in line and "'HalfCheetah-v5' has 17" in line


def test_run_refuses_an_evaluation_environment_that_does_not_exist(hopper_file, tmp_path):
    out = tmp_path / "out"
    args = ["run", "--algorithm", "bc", "--dataset", str(hopper_file), "--env", "Hoper-v5", "--steps", "10"]
    line = refused([*args, "--out", str(out)], "cannot create evaluation environment 'Hoper-v5'", out)
    assert "Pass --env with a registered Gymnasium id" in line


# --------------------------------------------------------------------------------------------------
# Downloads without a connection


@pytest.fixture
def offline(monkeypatch, tmp_path) -> Iterator[Path]:
    """No name resolves, as on a machine without a network, and the remote client's retry waits are
    skipped; yields an empty Minari root."""

    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    # huggingface_hub logs its retries through a handler bound to the stderr of the CliRunner call that
    # first imported it, which is closed by now: keep the retries quiet.
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    yield root
    hub_logger.setLevel(level)


@pytest.mark.parametrize(
    "command",
    [
        ["run", "--algorithm", "bc", "--dataset", "mujoco/hopper/medium-v0", "--download", "--steps", "10"],
        ["datasets", "info", "mujoco/hopper/medium-v0", "--download"],
    ],
    ids=["run", "datasets-info"],
)
def test_downloading_offline_says_there_is_no_connection(offline, tmp_path, command):
    out = tmp_path / "out"
    args = [*command, "--out", str(out)] if command[0] == "run" else command
    line = refused(
        args,
        "downloading Minari dataset 'mujoco/hopper/medium-v0' failed: no connection to the Minari server",
        out,
    )
    assert "Connect to the internet and retry" in line
    assert not (offline / "mujoco" / "hopper" / "medium-v0").exists()


def test_sweep_download_offline_says_there_is_no_connection(offline, tmp_path):
    path = tmp_path / "suite.toml"
    path.write_text(SUITE.replace('"x/y-v0"', '"mujoco/hopper/medium-v0"'))
    out = tmp_path / "out"
    refused(["sweep", str(path), "--out", str(out), "--download"], "no connection to the Minari server", out)


# --------------------------------------------------------------------------------------------------
# The datasets commands


def test_datasets_generate_refuses_missing_only_with_overwrite(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    refused(
        ["datasets", "generate", "--missing-only", "--overwrite"], "pass one of the two", tmp_path / "minari"
    )


def test_download_of_a_local_dataset_needs_no_connection(offline, hopper_minari, minari_root):
    """--download touches the network only for a missing dataset: one copied into place (the fix the
    offline message names) loads without it."""
    shutil.copytree(minari_root / hopper_minari, offline / hopper_minari)
    result = runner.invoke(app, ["datasets", "info", hopper_minari, "--download"], catch_exceptions=False)
    assert result.exit_code == 0 and "transitions" in result.output, result.output
