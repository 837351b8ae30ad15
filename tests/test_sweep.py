"""Suites and sweeps: validation before training, failures recorded (resume after SIGKILL:
test_faults.py; parallel workers: test_workers.py; the Ray executor on two nodes: test_ray_cluster.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from offbench.bench.suite import SuiteError, builtin_suites, load_suite, parse_suite
from offbench.bench.sweep import plan, sweep

TIMING_COLUMNS = {
    "wall_time_s",
    "train_seconds",
    "compile_seconds",
    "eval_seconds",
    "updates_per_second_per_seed",
    "written_at",
}


def suite_toml(dataset: str, steps: int = 60, extra: str = "") -> str:
    return f"""
name = "tiny"
datasets = ["{dataset}"]
seeds = "0-1"
steps = {steps}
eval_every = 20
eval_episodes = 1
final_k = {1 if steps < 40 else 2}

[[algorithms]]
name = "td3bc"
hparams = {{ hidden_dims = [16, 16], batch_size = 32 }}
{extra}
"""


def test_builtin_suites_parse():
    for name in builtin_suites():
        suite = load_suite(name)
        assert suite.algorithms and suite.datasets


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda s: s.replace('name = "td3bc"', 'name = "td3_bc"'), "unknown algorithm 'td3_bc'"),
        (lambda s: s.replace("hidden_dims", "hiden_dims"), "'hiden_dims' is not a hyper-parameter of td3bc"),
        (lambda s: s + "grid = { alhpa = [1.0, 2.0] }\n", "'alhpa' is not a hyper-parameter"),
        (lambda s: s.replace("steps = 60", "step = 60"), "unknown key 'step'"),
        (lambda s: s.replace('seeds = "0-1"', 'seeds = "one"'), "cannot parse 'one'"),
        (lambda s: s + 'samplers = ["fancy"]\n', "unknown sampler 'fancy'"),
        (lambda s: s.replace("eval_every = 20", "eval_every = 0"), "eval_every must be a positive integer"),
        (lambda s: s.replace("eval_every = 20", "eval_every = 80"), "eval_every=80 is larger than steps=60"),
        (lambda s: s.replace("final_k = 2", "final_k = 4"), "final_k=4 is more than the 3 evaluation(s)"),
        (lambda s: s.replace("steps = 60", "steps = 60.0"), "steps must be a positive integer, got 60.0"),
        (lambda s: s.replace("eval_episodes = 1", "eval_episodes = true"), "eval_episodes must be a"),
        (lambda s: s.replace('seeds = "0-1"', "seeds = [0, -1]"), "seeds must be a string like '0-4'"),
        (lambda s: s.replace('datasets = ["x/y-v0"]', "datasets = []"), "datasets must be a string or a"),
        (lambda s: s.replace('datasets = ["x/y-v0"]', 'datasets = ["x/y-v0", 3]'), "got ['x/y-v0', 3]"),
        (lambda s: s.replace('name = "tiny"', "name = 7"), "name must be a string in quotes, e.g. name ="),
        (lambda s: s.replace('name = "tiny"', 'name = "a/b"'), "name 'a/b' names the results folder"),
        (lambda s: s.split("[[algorithms]]")[0] + "algorithms = 3\n", "not algorithms = 3"),
        (lambda s: s.replace('name = "td3bc"', "name = 1"), "name must be an algorithm name in quotes"),
        (lambda s: s + "samplers = 3\n", "samplers must be a string or a non-empty list of strings"),
        (lambda s: s + "samplers = []\n", "samplers must be a string or a non-empty list of strings"),
        (lambda s: s + 'samplers = ["aw", "aw"]\n', "samplers lists 'aw' more than once"),
        (lambda s: s + 'samplers = "fancy"\n', "unknown sampler 'fancy'"),
        (lambda s: s + "grid = 3\n", "'grid' must be a table of name = value, e.g. grid = { alpha = [2.5"),
        (lambda s: s + "grid = { alpha = 2.5 }\n", "grid.alpha must be a non-empty list of the values"),
        (lambda s: s + "grid = { alpha = [] }\n", "grid.alpha must be a non-empty list of the values to try"),
        (lambda s: s.replace("batch_size = 32", "batch_size = 0"), "td3bc: batch_size=0 is out of range"),
        (lambda s: s.replace("batch_size = 32", "batch_size = true"), "batch_size=True is not a valid int"),
        (lambda s: s.replace("[16, 16]", "[16, 0]"), "hidden_dims=(16, 0) is out of range"),
        (lambda s: s + "grid = { alpha = [2.5, nan] }\n", "td3bc: alpha=nan is out of range"),
        (lambda s: s + "grid = { discount = [0.99, 1.5] }\n", "discount=1.5 is out of range"),
        (lambda s: s + "grid = { actor_lr = [-1e-3] }\n", "actor_lr=-0.001 is out of range"),
        (lambda s: s.replace('name = "td3bc"', 'label = "x"'), "each [[algorithms]] table needs a 'name'"),
    ],
)
def test_bad_suites_are_refused_with_clear_errors(mutate, message):
    import tomllib

    with pytest.raises(SuiteError, match=re.escape(message)) as error:
        parse_suite(tomllib.loads(mutate(suite_toml("x/y-v0"))))
    assert "\n" not in str(error.value)


def test_a_single_string_is_a_list_of_one():
    import tomllib

    raw = suite_toml("x/y-v0", extra='samplers = "aw"')
    suite = parse_suite(tomllib.loads(raw.replace('datasets = ["x/y-v0"]', 'datasets = "x/y-v0"')))
    assert suite.datasets == ("x/y-v0",) and suite.algorithms[0].samplers == ("aw",)


def test_grid_expands_into_jobs_with_seeds_inside():
    import tomllib

    suite = parse_suite(tomllib.loads(suite_toml("a/b-v0", extra="grid = { alpha = [1.0, 2.0, 3.0] }")))
    jobs = suite.jobs(["a/b-v0", "a/c-v0"])
    assert len(jobs) == 6 and all(job.seeds == (0, 1) for job in jobs)
    assert sorted({dict(job.hparams)["alpha"] for job in jobs}) == [1.0, 2.0, 3.0]


def test_unknown_dataset_and_bad_output_dir_fail_before_training(hopper_minari, tmp_path):
    import tomllib

    suite = parse_suite(tomllib.loads(suite_toml("test/hopper/noisey-v0")))
    with pytest.raises(SuiteError, match="unknown dataset 'test/hopper/noisey-v0'.*test/hopper/noisy-v0"):
        plan(suite, tmp_path / "out")
    glob_suite = parse_suite(tomllib.loads(suite_toml("nothing/*")))
    with pytest.raises(SuiteError, match="matches no available dataset"):
        plan(glob_suite, tmp_path / "out")
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ValueError, match="is a file"):
        plan(parse_suite(tomllib.loads(suite_toml(hopper_minari))), a_file)
    assert not (tmp_path / "out").exists()


def test_remote_minari_ids_need_download_and_report_its_failure(hopper_minari, tmp_path, monkeypatch):
    import tomllib

    import minari

    suite = parse_suite(tomllib.loads(suite_toml("mujoco/hopper/medium-v0")))
    with pytest.raises(SuiteError, match="rerun with --download"):
        plan(suite, tmp_path / "out")
    asked = []

    def offline(dataset_id):
        asked.append(dataset_id)
        raise ConnectionError("no route to host")

    monkeypatch.setattr(minari, "download_dataset", offline)
    with pytest.raises(SuiteError, match="downloading Minari dataset 'mujoco/hopper/medium-v0' failed"):
        plan(suite, tmp_path / "out", download=True)
    assert asked == ["mujoco/hopper/medium-v0"] and not (tmp_path / "out" / "runs").exists()


def test_incompatible_schema_version_is_refused(hopper_minari, tmp_path):
    import tomllib

    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    pd.DataFrame({"schema_version": [0]}).to_parquet(out / "runs" / "old.parquet")
    with pytest.raises(ValueError, match="schema version 0"):
        plan(parse_suite(tomllib.loads(suite_toml(hopper_minari))), out)


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    columns = [c for c in frame.columns if c not in TIMING_COLUMNS]
    return frame[columns].sort_values(["seed", *(["step"] if "step" in frame else [])]).reset_index(drop=True)


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(hopper_minari, tmp_path, monkeypatch):
    import tomllib

    from offbench.bench import sweep as sweep_module

    suite = parse_suite(
        tomllib.loads(suite_toml(hopper_minari, steps=20, extra="grid = { alpha = [1.0, 2.0] }"))
    )
    original = sweep_module.run_and_write

    def flaky(planned, out, **kwargs):
        if dict(planned.job.hparams)["alpha"] == 1.0:
            raise RuntimeError("simulated crash")
        return original(planned, out, **kwargs)

    monkeypatch.setattr(sweep_module, "run_and_write", flaky)
    summary = sweep(suite, tmp_path)
    assert summary.total == 2 and len(summary.finished) == 1 and len(summary.failed) == 1
    (failure,) = (tmp_path / "failures").glob("*.json")
    assert "simulated crash" in failure.read_text()
    assert len(pd.read_parquet(tmp_path / "runs")) == 2  # the other job's two seeds

    monkeypatch.setattr(sweep_module, "run_and_write", original)
    summary = sweep(suite, tmp_path)  # the failed job runs again; the finished one is skipped
    assert summary.skipped == 1 and len(summary.finished) == 1 and not summary.failed
    assert not list((tmp_path / "failures").glob("*.json"))


def test_suite_files_ship_with_the_package():
    assert {"default", "ci", "locomotion", "minari-mujoco"} <= set(builtin_suites()), builtin_suites()
    assert all(Path(p).exists() for p in builtin_suites().values())


def test_labels_tell_entries_of_one_algorithm_apart(hopper_minari, tmp_path):
    import tomllib

    from offbench.bench.report import compute_tables, load_results

    extra = """
[[algorithms]]
name = "td3bc"
label = "td3bc-strong-bc"
hparams = { hidden_dims = [16, 16], batch_size = 32, alpha = 1.0 }
"""
    suite = parse_suite(tomllib.loads(suite_toml(hopper_minari, steps=20, extra=extra)))
    assert [job.label for job in suite.jobs([hopper_minari])] == [None, "td3bc-strong-bc"]
    summary = sweep(suite, tmp_path)
    assert len(summary.finished) == 2 and not summary.failed
    runs = pd.read_parquet(tmp_path / "runs")
    assert sorted(runs["label"].unique()) == ["td3bc", "td3bc-strong-bc"]
    tables = compute_tables(load_results(tmp_path), reps=100)
    assert sorted(tables.cells["method"]) == ["td3bc", "td3bc-strong-bc"]  # no "td3bc@hash" pair


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ('name = "td3bc"\nlabel = "td3bc with bc"', "label must be a name of letters"),
        ('name = "bc"\nlabel = "td3bc"', r"labelled 'td3bc', the method name of algorithms\[0\] \(td3bc\)"),
    ],
)
def test_bad_labels_are_refused(entries, message):
    import tomllib

    with pytest.raises(SuiteError, match=message):
        parse_suite(tomllib.loads(suite_toml("x/y-v0") + f"\n[[algorithms]]\n{entries}\n"))


def test_two_entries_asking_for_one_job_are_refused():
    import tomllib

    from offbench.bench.sweep import check_distinct_jobs

    # alpha = 2.5 is TD3+BC's default: both entries resolve to the same configuration, hence one file.
    extra = """
[[algorithms]]
name = "td3bc"
label = "td3bc-default-alpha"
hparams = { hidden_dims = [16, 16], batch_size = 32, alpha = 2.5 }
"""
    suite = parse_suite(tomllib.loads(suite_toml("x/y-v0", extra=extra)))
    with pytest.raises(SuiteError, match=r"ask for the same job.*'td3bc' and 'td3bc-default-alpha'"):
        check_distinct_jobs(suite.jobs(["x/y-v0"]))


def test_two_entries_for_one_job_are_refused_before_any_dataset_is_generated(tmp_path, monkeypatch):
    import tomllib

    from offbench.datasets.generate import catalog

    generated = []
    monkeypatch.setattr(catalog, "generate", lambda identifier: generated.append(identifier) or [identifier])
    extra = """
[[algorithms]]
name = "td3bc"
label = "td3bc-again"
hparams = { hidden_dims = [16, 16], batch_size = 32 }
"""
    suite = parse_suite(tomllib.loads(suite_toml("offbench/walker2d/expert-v0", extra=extra)))
    with pytest.raises(SuiteError, match="ask for the same job"):
        plan(suite, tmp_path / "out")
    assert generated == [] and not (tmp_path / "out").exists()


def test_dqc_ablation_suite_has_one_labelled_job_per_variant_and_dataset():
    from offbench.bench.sweep import check_distinct_jobs
    from offbench.bench.train import resolve

    suite = load_suite("dqc-ablation")
    jobs = suite.jobs(suite.datasets)
    check_distinct_jobs(jobs)
    assert sorted((job.label, job.dataset) for job in jobs) == sorted(
        (label, dataset)
        for label in ("dqc", "dqc-qc", "dqc-os")
        for dataset in ("offbench/ogbench/cube-single-play-singletask-task1-v0", "offbench/hopper/medium-v0")
    )
    horizons = {
        job.label: (cfg.critic_horizon, cfg.action_horizon, cfg.use_chunk_critic, cfg.hidden_dims)
        for job in jobs
        for cfg in [resolve(job)]
    }
    assert horizons == {
        "dqc": (25, 5, True, (256, 256)),
        "dqc-qc": (25, 25, False, (256, 256)),
        "dqc-os": (1, 1, False, (256, 256)),
    }
    assert suite.seeds == (0, 1, 2)


@pytest.mark.parametrize(
    ("dataset", "slug"),
    [
        ("offbench/hopper/medium-v0", "offbench_hopper_medium-v0"),
        ("cube-single-play-singletask-task1-v0", "cube-single-play-singletask-task1-v0"),
        (
            "/data/ogbench/cube-single-play-singletask-task1-v0.npz",
            "cube-single-play-singletask-task1-v0_npz",
        ),
        ("../d4rl/hopper-medium-v2.hdf5", "hopper-medium-v2_hdf5"),
    ],
)
def test_job_names_keep_a_file_name_and_its_kind(dataset, slug):
    from offbench.bench import results

    assert results.job_name("bc", "uniform", dataset, "abc123") == f"bc-uniform__{slug}__abc123"
