"""OGBench data: the npz loader (OGBench's own load_dataset and singletask relabelling), the local play-data
generator (OGBench's scripted oracle), bad input, and evaluation in an OGBench singletask environment.
Everything is tiny and offline: hand-made npz files, a few short oracle episodes."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from offbench.bench import sweep as sweep_module
from offbench.bench.cli import app
from offbench.bench.suite import Suite, SuiteError, parse_suite
from offbench.bench.sweep import plan, sweep
from offbench.datasets.dataset import DatasetError
from offbench.datasets.envs import make_env
from offbench.datasets.evaluate import Evaluator
from offbench.datasets.generate import catalog, ogbench_play
from offbench.datasets.ogbench_data import import_ogbench
from offbench.datasets.sources import load_dataset

ogbench = import_ogbench()

TASK1_GOAL = (0.425, -0.1, 0.02)  # cube-single task1's target (ogbench CubeEnv.set_tasks)
TASK2_GOAL = (0.50, 0.0, 0.02)
CUBE_XYZ = slice(14, 17)  # the cube's position in qpos (ogbench.relabel_utils)


def write_npz(path: Path, **overrides: np.ndarray) -> dict[str, np.ndarray]:
    """Two OGBench-format episodes of 6 rows (5 transitions each once OGBench drops each last row).
    The cube sits on task1's target in rows 2-3 and 11, on task2's in row 7, elsewhere away from both."""
    rows = 12
    rng = np.random.default_rng(0)
    qpos = np.zeros((rows, 21), np.float32)
    qpos[:, CUBE_XYZ] = (0.30, 0.20, 0.02)
    qpos[[2, 3, 11], CUBE_XYZ] = TASK1_GOAL
    qpos[7, CUBE_XYZ] = TASK2_GOAL
    terminals = np.zeros(rows, bool)
    terminals[[5, 11]] = True
    arrays = {
        "observations": rng.normal(size=(rows, 28)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (rows, 5)).astype(np.float32),
        "terminals": terminals,
        "qpos": qpos,
        "qvel": np.zeros((rows, 20), np.float32),
        **overrides,
    }
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


@pytest.fixture
def ogbench_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("OGBENCH_DATA_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def minari_root(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "minari"
    path.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    return path


# --------------------------------------------------------------------------------------------------
# The npz loader


def test_npz_by_name_relabels_successes_as_terminals_and_episode_ends_as_timeouts(ogbench_dir):
    raw = write_npz(ogbench_dir / "cube-single-play-v0.npz")
    data = load_dataset("cube-single-play-singletask-task1-v0")

    kept = np.r_[0:5, 6:11]  # OGBench's loader drops the last row of each episode
    np.testing.assert_array_equal(data.observations, raw["observations"][kept])
    np.testing.assert_array_equal(data.next_observations, raw["observations"][kept + 1])
    np.testing.assert_array_equal(data.actions, raw["actions"][kept])
    # reward = (cube at target) - 1 of the state the action was taken in; solved there = a true terminal
    solved = np.isin(kept, [2, 3])
    np.testing.assert_array_equal(data.rewards, np.where(solved, 0.0, -1.0))
    np.testing.assert_array_equal(data.terminals, solved)
    # OGBench's episode ends (its `terminals`) are time-limit cuts
    np.testing.assert_array_equal(np.nonzero(data.timeouts)[0], [4, 9])
    # a terminal ends an episode: the first OGBench episode becomes three
    np.testing.assert_array_equal(data.episodes.start, [0, 3, 4, 5])
    assert data.episodes.complete.all()
    assert data.spec.source == "ogbench-npz" and data.spec.env_id == "cube-single-singletask-task1-v0"
    assert data.spec.action_low == (-1.0,) * 5 and not data.spec.has_reference_scores


def test_npz_by_path_takes_the_task_from_the_environment(tmp_path):
    path = tmp_path / "my-cube-data.npz"
    write_npz(path)
    data = load_dataset(str(path), env_id="cube-single-singletask-task2-v0")
    assert data.spec.id == str(path) and data.spec.env_id == "cube-single-singletask-task2-v0"
    np.testing.assert_array_equal(np.nonzero(data.terminals)[0], [6])  # row 7 of the file
    with pytest.raises(DatasetError, match="cannot tell which OGBench task"):
        load_dataset(str(path))
    # `offbench run` takes the task from --env, so it asks for --env rather than a suite's file name.
    args = ["run", "--algorithm", "bc", "--dataset", str(path), "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "cannot tell which OGBench task" in result.output
    assert "--env cube-single-singletask-task1-v0" in result.output


def test_download_is_only_through_ogbench_and_only_when_asked(ogbench_dir, monkeypatch):
    calls = []

    def fake_download(names, dataset_dir):
        calls.append((names, dataset_dir))
        write_npz(Path(dataset_dir) / f"{names[0]}.npz")

    monkeypatch.setattr(ogbench, "download_datasets", fake_download)
    name = "cube-single-play-singletask-task1-v0"
    with pytest.raises(DatasetError, match=r"does not exist.*--download.*ogbench-cube-single"):
        load_dataset(name)
    assert calls == []
    assert load_dataset(name, download=True).size == 10
    assert calls == [(["cube-single-play-v0"], str(ogbench_dir))]

    def offline(names, dataset_dir):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(ogbench, "download_datasets", offline)
    with pytest.raises(DatasetError, match=r"downloading OGBench dataset 'cube-double-play-v0' failed.*copy"):
        load_dataset("cube-double-play-singletask-task1-v0", download=True)


# --------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("cube-single-plya-singletask-task1-v0", "unknown OGBench dataset.*Did you mean 'cube-single-play-"),
        ("cube-sngle-play-singletask-task1-v0", "not an OGBench singletask environment.*Did you mean"),
        ("cube-single-play-singletask-task9-v0", "not an OGBench singletask environment"),
        ("cube-single-play-v0", "goal-conditioned.*'cube-single-play-singletask-task1-v0'"),
        ("visual-cube-single-play-singletask-task1-v0", "pixel-observation"),
        ("powderworld-easy-play-singletask-task1-v0", "discrete actions"),
    ],
)
def test_bad_ogbench_names_are_refused_with_the_fix(ogbench_dir, name, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset(name)


def test_bad_npz_files_are_refused_with_the_fix(tmp_path):
    task = "cube-single-singletask-task1-v0"
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(str(tmp_path / "missing.npz"), env_id=task)
    write_npz(tmp_path / "noqpos.npz", qpos=None)
    with pytest.raises(DatasetError, match="has no 'qpos'.*qpos/button_states define the rewards"):
        load_dataset(str(tmp_path / "noqpos.npz"), env_id=task)
    terminals = np.zeros(12, bool)
    terminals[5] = True
    write_npz(tmp_path / "cut.npz", terminals=terminals)
    with pytest.raises(DatasetError, match="last row does not end an episode"):
        load_dataset(str(tmp_path / "cut.npz"), env_id=task)
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(DatasetError, match="not a readable npz"):
        load_dataset(str(tmp_path / "corrupt.npz"), env_id=task)
    with pytest.raises(DatasetError, match="not an OGBench singletask environment"):
        load_dataset(str(tmp_path / "cut.npz"), env_id="Hopper-v5")


# --------------------------------------------------------------------------------------------------
# The generator


def test_split_at_terminals_ends_each_piece_once():
    observations = np.arange(7, dtype=np.float32)[:, None]
    terminals = np.array([False, True, True, False, False, False])
    pieces = ogbench_play.split_at_terminals(observations, np.zeros((6, 5)), np.zeros(6), terminals)
    assert [len(p["actions"]) for p in pieces] == [2, 1, 3]
    assert [p["observations"][[0, -1], 0].tolist() for p in pieces] == [[0, 2], [2, 3], [3, 6]]
    assert [(p["terminations"][-1], p["truncations"][-1]) for p in pieces] == [
        (True, False),
        (True, False),
        (False, True),
    ]
    assert not any(p["terminations"][:-1].any() or p["truncations"][:-1].any() for p in pieces)


def test_play_collection_is_a_pure_function_of_the_seed():
    np.random.seed(123)
    expected_draw = np.random.random()
    np.random.seed(123)
    first = ogbench_play.collect_play("cube-single", episodes=2, episode_length=30, seed=5)
    assert np.random.random() == expected_draw  # the caller's global NumPy state is untouched
    again = ogbench_play.collect_play("cube-single", episodes=2, episode_length=30, seed=5)
    other = ogbench_play.collect_play("cube-single", episodes=2, episode_length=30, seed=6)
    assert first["observations"].shape == (2, 31, 28) and first["qpos"].shape == (2, 30, 21)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["actions"], other["actions"])


def test_generated_dataset_loads_and_evaluates_in_the_singletask_env(minari_root):
    written = ogbench_play.generate_play(tasks=(2,), size=100, episode_length=50, seed=3)
    identifier = "offbench/ogbench/cube-single-play-singletask-task2-v0"
    assert written == [identifier]
    play = ogbench_play.collect_play("cube-single", episodes=2, episode_length=50, seed=3)
    rewards, solved = ogbench_play.relabel("cube-single", 2, play["qpos"])
    assert solved.any() and not solved.all()  # this seed's oracle passes over task2's target

    data = load_dataset(identifier)
    assert data.size == 100 and data.spec.env_id == "cube-single-singletask-task2-v0"
    np.testing.assert_array_equal(data.observations, play["observations"][:, :-1].reshape(100, -1))
    np.testing.assert_array_equal(data.rewards, rewards.reshape(-1))
    np.testing.assert_array_equal(data.terminals, solved.reshape(-1))
    time_limited = [50 * k + 49 for k in range(2) if not solved[k, -1]]  # a solved last step is terminal
    np.testing.assert_array_equal(np.nonzero(data.timeouts)[0], time_limited)
    assert not data.spec.has_reference_scores and "CubePlanOracle" in data.spec.description
    assert catalog.generate(identifier) == []  # on demand: already there

    env = make_env(data.spec)
    assert env.spec.id == "cube-single-singletask-task2-v0"
    env.close()
    evaluator = Evaluator(
        data.spec, seeds=(0,), episodes=1, env_factory=lambda: make_env(data.spec, max_episode_steps=5)
    )
    rng = np.random.default_rng(0)
    episodes = evaluator.run(lambda observations, call: rng.uniform(-1, 1, (*observations.shape[:2], 5)))
    evaluator.close()
    assert episodes.returns.shape == (1, 1) and -5.0 <= episodes.returns[0, 0] <= 0.0
    assert episodes.successes[0, 0] in (0.0, 1.0)  # OGBench reports success: never NaN here
    assert evaluator.env_steps >= 1


def test_evaluation_env_is_made_without_importing_ogbench_first():
    """`offbench run` never imports ogbench itself: make_env must register OGBench's environments."""
    code = (
        "from offbench.datasets.dataset import DatasetSpec\n"
        "from offbench.datasets.envs import make_env\n"
        "spec = DatasetSpec('x', 'test', 'cube-single-singletask-task1-v0', 28, 5, (-1.0,) * 5, (1.0,) * 5)\n"
        "print(make_env(spec).spec.max_episode_steps)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "200"


def test_generation_bad_input_is_refused_before_any_work(minari_root):
    with pytest.raises(DatasetError, match="Did you mean 'offbench/ogbench/cube-single-play-singletask"):
        catalog.generate("offbench/ogbench/cube-single-ply-singletask-task1-v0")
    with pytest.raises(DatasetError, match="tasks are 1-5"):
        ogbench_play.generate_play(tasks=(7,), size=10)
    with pytest.raises(DatasetError, match="positive"):
        ogbench_play.generate_play(size=0)
    assert set(ogbench_play.generatable_ids()) <= set(catalog.generatable_ids())

    runner = CliRunner()
    for args, message in (
        (["--env", "ogbench-cube-sngle"], "Did you mean 'ogbench-cube-single'"),
        (["--env", "ogbench-cube-single", "--task", "9"], "tasks are 1-5"),
        (["--env", "hopper", "--task", "2"], "--task labels OGBench play data"),
    ):
        result = runner.invoke(app, ["datasets", "generate", *args])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert list(minari_root.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# Suites


def ogbench_suite(*datasets: str) -> Suite:
    return parse_suite(
        {
            "name": "og",
            "datasets": list(datasets),
            "seeds": [0],
            "steps": 2,
            "eval_every": 2,
            "eval_episodes": 2,
            "algorithms": [{"name": "bc", "hparams": {"hidden_dims": [8], "batch_size": 4}}],
        }
    )


def test_suites_run_ogbench_names_and_npz_files_with_success_rates(ogbench_dir, minari_root, tmp_path):
    write_npz(ogbench_dir / "cube-single-play-v0.npz")
    npz = tmp_path / "data" / "cube-single-play-singletask-task2-v0.npz"
    npz.parent.mkdir()
    write_npz(npz)
    suite = ogbench_suite("cube-single-play-singletask-task1-v0", str(npz))
    out = tmp_path / "out"
    names = sorted(planned.identity.name for planned in plan(suite, out).todo)
    assert [name.split("__")[1] for name in names] == [
        "cube-single-play-singletask-task1-v0",
        "cube-single-play-singletask-task2-v0_npz",
    ]
    summary = sweep(suite, out)
    assert sorted(summary.finished) == names and not summary.failed
    runs = pd.read_parquet(out / "runs").sort_values("dataset")
    assert runs["env"].tolist() == ["cube-single-singletask-task2-v0", "cube-single-singletask-task1-v0"]
    evals = pd.read_parquet(out / "evals")
    # a success flag per episode: 2 episodes give a rate of 0, 0.5 or 1, never NaN
    assert evals["success_rate"].isin([0.0, 0.5, 1.0]).all()
    assert runs["final_success_rate"].isin([0.0, 0.5, 1.0]).all()


def test_suites_generate_offbench_ogbench_ids_on_demand(minari_root, tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(catalog, "generate", lambda identifier: asked.append(identifier) or [identifier])
    monkeypatch.setattr(sweep_module, "inspect_dataset", lambda *args: ("not generated", None))
    monkeypatch.setattr(sweep_module, "state_bytes", lambda job, spec: 0)
    identifier = "offbench/ogbench/cube-single-play-singletask-task3-v0"
    todo = plan(ogbench_suite(identifier), tmp_path / "out").todo
    assert asked == [identifier] and [planned.job.dataset for planned in todo] == [identifier]


def test_suite_ogbench_datasets_are_checked_before_training(ogbench_dir, minari_root, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(
        SuiteError,
        match=r"needs the file .*cube-single-play-v0.npz.*--download.*'offbench/ogbench/cube-single-play-",
    ):
        plan(ogbench_suite("cube-single-play-singletask-task1-v0"), out)
    with pytest.raises(SuiteError, match="not an OGBench singletask environment"):
        plan(ogbench_suite("cube-single-play-singletask-task9-v0"), out)
    with pytest.raises(SuiteError, match="does not exist"):
        plan(ogbench_suite(str(tmp_path / "cube-single-play-singletask-task1-v0.npz")), out)
    write_npz(tmp_path / "my-cube-data.npz")
    with pytest.raises(SuiteError, match="must be named after the OGBench singletask dataset"):
        plan(ogbench_suite(str(tmp_path / "my-cube-data.npz")), out)
    same_name = [tmp_path / folder / "cube-single-play-singletask-task1-v0.npz" for folder in ("a", "b")]
    for path in same_name:
        path.parent.mkdir()
        write_npz(path)
    # Files of one name in two folders are two jobs: the job identity covers the path.
    names = {p.identity.name for p in plan(ogbench_suite(*map(str, same_name)), out).todo}
    assert len(names) == 2 and all("cube-single-play-singletask-task1-v0_npz" in name for name in names)
    assert not out.exists()

    fetched = []

    def fake_download(names, dataset_dir):
        fetched.append((names, dataset_dir))
        write_npz(Path(dataset_dir) / f"{names[0]}.npz")

    monkeypatch.setattr(ogbench, "download_datasets", fake_download)
    todo = plan(ogbench_suite("cube-single-play-singletask-task4-v0"), out, download=True).todo
    assert fetched == [(["cube-single-play-v0"], str(ogbench_dir))] and len(todo) == 1
