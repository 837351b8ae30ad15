"""Results you can trust: job identity, stale rows, exact-or-refused resume, one schema, provenance,
saved policies, and the regression check's budget and code-version rules."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from rollouts import rollout_episodes
from typer.testing import CliRunner

from offbench.bench import checkpoint, provenance, results
from offbench.bench import sweep as sweep_module
from offbench.bench.cli import app
from offbench.bench.suite import SuiteError, parse_suite
from offbench.bench.sweep import plan, sweep
from offbench.bench.train import Job, identify
from offbench.datasets import fingerprint
from offbench.datasets.generate.rollout import write_minari
from offbench.datasets.minari_data import minari_datasets_path

runner = CliRunner()
README = Path(__file__).resolve().parent.parent / "README.md"
TIMING = ["wall_time_s", "train_seconds", "compile_seconds", "eval_seconds", "updates_per_second_per_seed"]
SMALL = "{ hidden_dims = [8], batch_size = 16 }"


def suite_text(dataset: str, seeds: str = "0", episodes: int = 1, td3bc_alpha: float = 2.5) -> str:
    return f"""
name = "trust"
datasets = ["{dataset}"]
seeds = "{seeds}"
steps = 10
eval_every = 5
eval_episodes = {episodes}
final_k = 2

[[algorithms]]
name = "bc"
hparams = {SMALL}

[[algorithms]]
name = "td3bc"
hparams = {{ hidden_dims = [8], batch_size = 16, alpha = {td3bc_alpha} }}
"""


def load(text: str):
    return parse_suite(tomllib.loads(text))


def rows(out: Path, table: str = "runs") -> pd.DataFrame:
    return pd.read_parquet(out / table)


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    drop = [c for c in frame.columns if c in TIMING or c == "written_at"]
    keys = ["label", "seed", *(["step"] if "step" in frame else []), *(["name"] if "name" in frame else [])]
    return frame.drop(columns=drop).sort_values(keys).reset_index(drop=True)


def test_a_changed_suite_reruns_exactly_the_changed_jobs_and_keeps_no_stale_row(hopper_minari, tmp_path):
    out = tmp_path / "out"
    first = sweep(load(suite_text(hopper_minari)), out)
    assert len(first.finished) == 2 and first.skipped == 0
    assert sweep(load(suite_text(hopper_minari)), out).skipped == 2  # unchanged: nothing runs

    logged = []
    wider = sweep(load(suite_text(hopper_minari, seeds="0-2")), out, log=logged.append)
    assert len(wider.finished) == 2 and wider.skipped == 0  # seeds are part of every job's identity
    runs = rows(out)
    assert sorted(runs.groupby("label")["seed"].apply(sorted).tolist()) == [[0, 1, 2], [0, 1, 2]]
    assert any("moved the rows of 2 replaced job(s)" in line for line in logged)
    (superseded,) = (out / "superseded").iterdir()
    assert len(list((superseded / "runs").glob("*.parquet"))) == 2  # kept, out of the tables

    changed = sweep(load(suite_text(hopper_minari, seeds="0-2", td3bc_alpha=1.0)), out)
    assert [name.split("-")[0] for name in changed.finished] == ["td3bc"] and changed.skipped == 1
    more_episodes = sweep(load(suite_text(hopper_minari, seeds="0-2", episodes=3, td3bc_alpha=1.0)), out)
    assert len(more_episodes.finished) == 2
    runs, evals = rows(out), rows(out, "evals")
    assert len(runs) == 6 and runs["eval_episodes"].eq(3).all() and evals["episodes"].eq(3).all()
    assert runs.loc[runs["label"] == "td3bc", "hparams"].map(lambda h: json.loads(h)["alpha"]).eq(1.0).all()
    for table in ("evals", "metrics"):  # every table holds the same jobs as runs
        assert set(rows(out, table)["job"]) == set(runs["job"])
    assert {p.name for p in (out / "policies").iterdir()} == set(runs["job"])


def test_identity_covers_everything_that_determines_the_rows(hopper_minari):
    job = Job("td3bc", hopper_minari, seeds=(0,), steps=10, eval_every=5, eval_episodes=1, final_k=1)
    base = identify(job).job_id
    variants = [
        dataclasses.replace(job, seeds=(0, 1)),
        dataclasses.replace(job, steps=20),
        dataclasses.replace(job, eval_every=10, final_k=1),
        dataclasses.replace(job, eval_episodes=2),
        dataclasses.replace(job, final_k=2),
        dataclasses.replace(job, label="td3bc-x"),
        dataclasses.replace(job, hparams=(("alpha", 1.0),)),
        dataclasses.replace(job, hparams=(("sampler", "aw"),)),
        dataclasses.replace(job, env_id="Hopper-v4"),
        dataclasses.replace(job, log_every=7),
        dataclasses.replace(job, suite="other"),
    ]
    ids = [identify(variant).job_id for variant in variants]
    assert base not in ids and len(set(ids)) == len(ids)
    assert identify(job, dataset_fingerprint="f" * 64).job_id != base  # the data's contents
    assert identify(dataclasses.replace(job, download=True)).job_id == base  # how it is fetched: no


def noisy_policy(observation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.tanh(np.linspace(-0.5, 0.5, 33).reshape(3, 11) @ observation) + 0.3 * rng.standard_normal(3)


def write_replaceable(dataset_id: str, seed: int) -> None:
    shutil.rmtree(minari_datasets_path() / dataset_id, ignore_errors=True)
    episodes = rollout_episodes("Hopper-v5", 400, noisy_policy, seed=seed)
    write_minari(dataset_id, "Hopper-v5", episodes, ref_min_score=-20.0, ref_max_score=3000.0)


def test_fingerprint_follows_the_contents_and_is_cached_beside_the_dataset(hopper_minari):
    write_replaceable("test/hopper/fingerprint-v0", seed=1)
    first = fingerprint.fingerprint("test/hopper/fingerprint-v0")
    cache = fingerprint.cache_file("test/hopper/fingerprint-v0")
    assert cache.is_file() and first in cache.read_text()
    write_replaceable("test/hopper/fingerprint-v0", seed=1)  # the same data written again
    assert fingerprint.fingerprint("test/hopper/fingerprint-v0") == first
    write_replaceable("test/hopper/fingerprint-v0", seed=2)  # other data at the same id
    assert fingerprint.fingerprint("test/hopper/fingerprint-v0") != first


class Killed(Exception):
    """Stands in for SIGKILL right after the first checkpoint is complete."""


def test_a_resume_on_replaced_data_is_refused(hopper_minari, tmp_path, monkeypatch):
    dataset_id = "test/hopper/replaced-v0"
    write_replaceable(dataset_id, seed=1)
    suite = load(suite_text(dataset_id))
    out = tmp_path / "out"
    original_save = checkpoint.save

    def save_then_die(*args, **kwargs):
        original_save(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    summary = sweep(suite, out)
    assert len(summary.failed) == 2 and len(list((out / "checkpoints").iterdir())) == 2
    monkeypatch.setattr(checkpoint, "save", original_save)

    write_replaceable(dataset_id, seed=2)  # the file is replaced at the same path
    logged = []
    resumed = sweep(suite, out, log=logged.append)
    assert len(resumed.finished) == 2 and not resumed.failed
    discarded = [line for line in logged if line.startswith("discarded checkpoint")]
    assert len(discarded) == 2 and all("dataset contents changed" in line for line in discarded)
    clean = tmp_path / "clean"
    sweep(suite, clean)
    for table in results.TABLES:
        pd.testing.assert_frame_equal(comparable(rows(out, table)), comparable(rows(clean, table)))
    assert not (out / "checkpoints").exists() and not list(out.rglob("*.tmp-*"))
    assert not list((out / "failures").glob("*.json"))


def write_d4rl_file(path: Path, seed: int) -> Path:
    """A D4RL-format Hopper file of 300 random steps, uncompressed: every seed gives the same size."""
    rng = np.random.default_rng(seed)
    n = 300
    arrays = {
        "observations": rng.normal(size=(n, 11)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": (np.arange(n) % 100 == 99),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as file:
        for key, value in arrays.items():
            file.create_dataset(key, data=value)
    return path


def replace_keeping_size_and_mtime(path: Path, replacement: Path) -> None:
    """What ``cp -p``, ``rsync -a`` or an extracted archive does: other bytes, the old modification time."""
    before = path.stat()
    assert replacement.stat().st_size == before.st_size
    shutil.copyfile(replacement, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns


def test_a_file_replaced_with_its_modification_time_preserved_is_refused(tmp_path, monkeypatch):
    path = write_d4rl_file(tmp_path / "hopper-medium-v2.hdf5", seed=1)
    other = write_d4rl_file(tmp_path / "other" / "hopper-medium-v2.hdf5", seed=2)
    first = fingerprint.fingerprint(str(path))
    suite = load(suite_text(str(path)))
    out = tmp_path / "out"
    original_save = checkpoint.save

    def save_then_die(*args, **kwargs):
        original_save(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    sweep(suite, out)
    assert len(list((out / "checkpoints").iterdir())) == 2
    monkeypatch.setattr(checkpoint, "save", original_save)

    replace_keeping_size_and_mtime(path, other)
    assert fingerprint.fingerprint(str(path)) == fingerprint.fingerprint(str(other)) != first
    logged = []
    resumed = sweep(suite, out, log=logged.append)
    assert len(resumed.finished) == 2 and not resumed.failed
    discarded = [line for line in logged if line.startswith("discarded checkpoint")]
    assert len(discarded) == 2 and all("dataset contents changed" in line for line in discarded)


def test_a_checkpoint_of_other_code_is_discarded_with_one_line(tmp_path):
    tree = {"w": np.arange(3.0)}
    checkpoint.save(tmp_path / "ck", 5, tree, {"step": 5}, "job1@abc", {"metric_steps": np.arange(2)})
    restored = checkpoint.load(tmp_path / "ck", tree, "job1@abc", log=pytest.fail)
    assert restored is not None and restored[1]["step"] == 5
    np.testing.assert_array_equal(restored[2]["metric_steps"], np.arange(2))
    logged = []
    assert checkpoint.load(tmp_path / "ck", tree, "job1@def", log=logged.append) is None
    assert logged == [
        f"discarding checkpoint {tmp_path / 'ck'}: it was written by other code (abc, this is def); "
        "the job starts from update 0."
    ]
    assert not (tmp_path / "ck").exists()


def fake_code(monkeypatch, version: str) -> None:
    monkeypatch.setattr(
        provenance,
        "code_version",
        lambda: {"code_version": version, "git_sha": "0" * 40, "git_dirty": False, "offbench_version": "0"},
    )


def test_rows_of_other_code_are_refused_rerun_or_kept_by_flag(hopper_minari, tmp_path, monkeypatch):
    out = tmp_path / "out"
    one = load(suite_text(hopper_minari).split('[[algorithms]]\nname = "td3bc"')[0])
    fake_code(monkeypatch, "aaaaaaaaaaaa")
    sweep(one, out)
    fake_code(monkeypatch, "bbbbbbbbbbbb")
    two = load(suite_text(hopper_minari))
    assert sweep(one, out).skipped == 1  # nothing to run: nothing mixes
    other_code = r"written by other code \(aaaaaaaaaaaa; this is bbbbbbbbbbbb\).*--on-code-change"
    with pytest.raises(SuiteError, match=other_code):
        plan(two, out)
    assert len(rows(out)) == 1  # refused before anything changed
    kept = sweep(two, out, on_code_change="keep")
    assert kept.skipped == 1 and sorted(rows(out)["code_version"]) == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    rerun = sweep(two, out, on_code_change="rerun")
    assert len(rerun.finished) == 1 and rows(out)["code_version"].eq("bbbbbbbbbbbb").all()


@pytest.fixture(scope="module")
def finished(hopper_minari, tmp_path_factory) -> Path:
    """One sweep of three algorithms (three different sets of training diagnostics), 3 seeds, shared by
    the tests that only read what it wrote."""
    out = tmp_path_factory.mktemp("finished") / "out"
    text = (
        suite_text(hopper_minari, seeds="0-2", episodes=2)
        + '\n[[algorithms]]\nname = "iql"\nhparams = '
        + SMALL
    )
    summary = sweep(load(text + "\n"), out)
    assert len(summary.finished) == 3 and not summary.failed
    return out


def test_every_table_has_one_schema_and_three_readers_agree(finished):
    duckdb = pytest.importorskip("duckdb")
    polars = pytest.importorskip("polars")
    for table, schema in results.SCHEMAS.items():
        files = sorted((finished / table).glob("*.parquet"))
        assert len(files) == 3
        for path in files:
            assert pq.read_schema(path).remove_metadata() == schema.remove_metadata()
        frame = pd.read_parquet(finished / table)
        via_duckdb = duckdb.sql(f"select * from read_parquet('{finished / table}/*.parquet')").df()
        via_polars = polars.read_parquet(finished / table)
        lazy = polars.scan_parquet(finished / table).collect()
        assert frame.shape == via_duckdb.shape == via_polars.shape == lazy.shape
        assert frame.shape[1] == len(schema)
        assert pq.read_schema(files[0]).field("job_id").metadata[b"description"]
    metrics = rows(finished, "metrics")
    assert {"bc_loss", "critic_loss", "value_loss"} <= set(metrics["name"])


def test_every_row_carries_its_provenance(finished):
    for table in results.TABLES:
        frame = rows(finished, table)
        for column in (
            "code_version",
            "jax_version",
            "jaxlib_version",
            "flax_version",
            "optax_version",
            "gymnasium_version",
            "mujoco_version",
            "minari_version",
            "python_version",
            "device",
            "dataset_fingerprint",
            "dataset_transitions",
            "dataset_episodes",
        ):
            assert frame[column].notna().all(), (table, column)
        assert frame["git_dirty"].isin([True, False]).all()
        assert re.fullmatch(r"cpu: .+ \(\d+ cores\)", frame["device"].iloc[0])


def test_the_readme_documents_every_column():
    readme = README.read_text()
    schema_section = readme[readme.index("### Results schema") :]
    for name in results.COLUMN_DOCS:
        assert f"`{name}`" in schema_section, name


def test_a_saved_policy_reproduces_the_jobs_last_evaluation(finished):
    from offbench.bench.policy import evaluate_saved, read_policy

    evals = rows(finished, "evals")
    for job in rows(finished)["job"].unique():
        last = evals[(evals["job"] == job) & (evals["step"] == 10)].set_index("seed")["return_mean"]
        result = runner.invoke(app, ["evaluate", str(finished / "policies" / job)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        for seed, value in last.items():
            (line,) = [row for row in result.output.splitlines() if row.split()[:1] == [str(seed)]]
            assert float(line.split()[1]) == pytest.approx(value, rel=0, abs=1e-4)
        saved = read_policy(finished / "policies" / job)
        returns = evaluate_saved(saved)
        assert [float(np.mean(returns[seed])) for seed in last.index] == last.tolist()  # exactly
        only_one = evaluate_saved(saved, seeds=(1,))
        assert list(only_one) == [1] and float(np.mean(only_one[1])) == last[1]


def test_load_policy_runs_in_a_plain_gymnasium_loop(finished):
    import offbench

    job = rows(finished).query("label == 'td3bc'")["job"].iloc[0]
    policy = offbench.load_policy(finished / "policies" / job)
    env = policy.make_env()
    observation, _ = env.reset(seed=0)
    total, done = 0.0, False
    while not done:
        action = policy(observation)
        assert action.shape == env.action_space.shape
        observation, reward, terminated, truncated, _ = env.step(action)
        total, done = total + float(reward), terminated or truncated
    assert np.isfinite(total)
    with pytest.raises(ValueError, match="seed 9 was not trained"):
        offbench.load_policy(finished / "policies" / job, seed=9)


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_offbench_run_is_a_one_job_sweep(hopper_minari, tmp_path, monkeypatch):
    out = tmp_path / "out"
    common = [
        "run",
        "--algorithm",
        "td3bc",
        "--dataset",
        hopper_minari,
        "--steps",
        "10",
        "--eval-every",
        "5",
        "--eval-episodes",
        "1",
        "--out",
        str(out),
        "-p",
        "hidden_dims=8",
        "--seeds",
        "0",
    ]
    first = invoke(*common, "--sampler", "aw")
    assert first.exit_code == 0, first.output
    assert rows(out)["sampler"].eq("aw").all() and (out / "policies").is_dir()
    again = invoke(*common, "--sampler", "aw")
    assert again.exit_code == 0 and "already finished" in again.output
    wider = invoke(*common[:-2], "--seeds", "0-1", "--sampler", "aw")
    assert wider.exit_code == 0 and "moved the rows of 1 replaced job(s)" in " ".join(wider.output.split())
    assert rows(out)["seed"].tolist() == [0, 1]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_module, "run_job", interrupted)
    stopped = invoke(*common[:-2], "--seeds", "0-2")
    assert stopped.exit_code == 130
    said = " ".join(stopped.output.split())
    assert "interrupted" in said and "Resume with: the same command" in said
    assert rows(out)["seed"].tolist() == [0, 1]  # the finished job's rows are untouched


def test_run_and_sweep_default_to_an_ignored_folder_outside_the_committed_results(monkeypatch, tmp_path):
    """Without --out, `run` writes runs/adhoc and a built-in suite runs/<suite>: never into results/, which
    holds the committed reference runs, and never a folder named like the runs/ table it will hold."""
    import inspect

    from offbench.bench import cli

    defaults = {p.name: p.default for p in inspect.signature(cli.run).parameters.values()}
    assert defaults["out"] == Path("runs/adhoc")
    planned_into = []

    def plan(suite, out, download, on_code_change):
        planned_into.append(out)
        return sweep_module.Plan(todo=[], done=[], messages=[])

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep_module, "plan", plan)
    result = invoke("sweep", "default")
    assert result.exit_code == 0, result.output
    assert planned_into == [Path("runs/default")] and "results: runs/default" in result.output
    assert "/runs/" in (Path(__file__).parents[1] / ".gitignore").read_text().splitlines()


def check(results_dir: Path, baseline: Path):
    return runner.invoke(app, ["check", "--results", str(results_dir), "--baseline", str(baseline)])


def test_check_refuses_other_budgets_and_reports_other_code(finished, tmp_path):
    baseline = tmp_path / "baseline.parquet"
    written = runner.invoke(
        app, ["check", "--results", str(finished), "--baseline", str(baseline), "--write-baseline"]
    )
    assert written.exit_code == 0
    same = check(finished, baseline)
    code = rows(finished)["code_version"].iloc[0]
    assert same.exit_code == 0 and f"same code ({code})" in same.output
    assert "every dataset has the baseline's contents" in same.output
    pair_lines = [line for line in same.output.splitlines() if "/uniform/" in line]
    assert len(pair_lines) == 3 and all("+0.00" in line for line in pair_lines)

    frame = pd.read_parquet(baseline)
    other = tmp_path / "other.parquet"
    frame.assign(code_version="aaaaaaaaaaaa").to_parquet(other)
    said = " ".join(check(finished, other).output.split())
    assert f"baseline was written by other code (aaaaaaaaaaaa) than the results ({code})" in said
    frame.assign(dataset_fingerprint="0" * 64).to_parquet(other)
    assert "differ from the baseline's" in " ".join(check(finished, other).output.split())

    frame.assign(final_k=1).to_parquet(other)
    refused = check(finished, other)
    assert refused.exit_code == 2
    said = " ".join(refused.output.split())
    assert "different budgets" in said and "final_k [2] vs [1]" in said


def test_an_older_results_directory_is_upgraded_to_one_schema(tmp_path):
    keys = {
        "suite": "s",
        "dataset": "d",
        "env": "E-v5",
        "sampler": "uniform",
        "hparams": "{}",
        "hparams_hash": "h",
    }
    for algorithm, metric in (("bc", "bc_loss"), ("iql", "value_loss")):
        evals = pd.DataFrame(
            [
                {
                    **keys,
                    "algorithm": algorithm,
                    "label": algorithm,
                    "seed": 0,
                    "step": step,
                    "return_mean": 1.0,
                    "return_std": 0.0,
                    "episodes": 1,
                    "normalized_score": 5.0,
                    "success_rate": np.nan,
                    "wall_time_s": 1.0,
                    "status": "ok",
                    f"metric_{metric}": float(step),
                    "schema_version": 2,
                }
                for step in (10, 20)
            ]
        )
        runs = (
            evals.iloc[:1]
            .drop(columns=[f"metric_{metric}", "step"])
            .assign(updates_per_second=100.0, timestamp="2026-01-01T00:00:00+00:00", final_score=5.0)
        )
        for table, frame in (("evals", evals), ("runs", runs)):
            (tmp_path / table).mkdir(exist_ok=True)
            frame.to_parquet(tmp_path / table / f"{algorithm}.parquet")
    result = runner.invoke(app, ["upgrade", str(tmp_path)])
    assert result.exit_code == 0 and "6 files rewritten" in result.output
    for table, schema in results.SCHEMAS.items():
        for path in (tmp_path / table).glob("*.parquet"):
            assert pq.read_schema(path).names == schema.names
    metrics = rows(tmp_path, "metrics").sort_values(["name", "step"])
    assert metrics[["job", "name", "step", "value"]].values.tolist() == [
        ["bc", "bc_loss", 10, 10.0],
        ["bc", "bc_loss", 20, 20.0],
        ["iql", "value_loss", 10, 10.0],
        ["iql", "value_loss", 20, 20.0],
    ]
    runs = rows(tmp_path)
    assert runs["updates_per_second_per_seed"].eq(100.0).all() and runs["written_at"].notna().all()
    assert runs["schema_version"].eq(2).all()  # the rows keep the version they were written with
    with pytest.raises(ValueError, match="schema version 2"):
        results.check_output_dir(tmp_path)  # no new rows of another version are added to them
    assert "up to date" in runner.invoke(app, ["upgrade", str(tmp_path)]).output
