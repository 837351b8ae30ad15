"""The ``offbench run`` command: end to end, and clear errors that leave no partial files."""

from __future__ import annotations

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from offbench.bench.cli import app, parse_seeds

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    ("text", "seeds"), [("0-4", (0, 1, 2, 3, 4)), ("0,2,5", (0, 2, 5)), ("3", (3,)), ("0-1,7", (0, 1, 7))]
)
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["a-b", "4-1", "0,,1", "-3", "1,1", ""])
def test_parse_seeds_rejects_bad_input(text):
    with pytest.raises(typer.BadParameter):
        parse_seeds(text)


def assert_no_results(out):
    assert not list(out.rglob("*.parquet")) and not list(out.rglob("*.tmp-*"))


def test_run_end_to_end(hopper_minari, tmp_path):
    out = tmp_path / "results"
    result = invoke(
        "run",
        "--algorithm",
        "iql",
        "--dataset",
        hopper_minari,
        "--seeds",
        "0-1",
        "--steps",
        "30",
        "--eval-every",
        "15",
        "--eval-episodes",
        "2",
        "--out",
        str(out),
        "-p",
        "hidden_dims=32,32",
    )
    assert result.exit_code == 0, result.output
    assert "runs:" in result.output and "evals:" in result.output
    runs = pd.read_parquet(out / "runs")
    evals = pd.read_parquet(out / "evals")
    assert sorted(runs["seed"]) == [0, 1] and len(evals) == 4
    assert set(runs["algorithm"]) == {"iql"} and set(runs["sampler"]) == {"uniform"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--algorithm", "td3_bc"], "unknown algorithm 'td3_bc'"),
        (["--seeds", "zero"], "cannot parse 'zero'"),
        (["--dataset", "missing/file.hdf5"], "does not exist"),
        (["--dataset", "test/hopper/noisey-v0"], "Did you mean 'test/hopper/noisy-v0'"),
        (["--steps", "0"], "steps must be positive"),
    ],
)
def test_run_errors_are_clear_and_write_nothing(hopper_minari, tmp_path, args, message):
    out = tmp_path / "out"
    base = {"--algorithm": "td3bc", "--dataset": hopper_minari, "--seeds": "0", "--steps": "10"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    result = invoke("run", *[x for pair in base.items() for x in pair], "--out", str(out))
    assert result.exit_code == 2
    assert message in result.output.replace("\n", " ") or message in result.output
    assert_no_results(out)


def test_run_refuses_an_output_path_that_is_a_file(hopper_minari, tmp_path):
    out = tmp_path / "taken"
    out.write_text("not a directory")
    result = invoke(
        "run", "--algorithm", "bc", "--dataset", hopper_minari, "--steps", "10", "--out", str(out)
    )
    assert result.exit_code == 2 and "is a file" in result.output
    assert out.read_text() == "not a directory"


def test_error_messages_are_one_line_and_keep_bracketed_text(tmp_path):
    suite = tmp_path / "suite.toml"
    suite.write_text('datasets = ["x/y-v0"]\nsteps = 10\neval_every = 10\n\n[[algorithms]]\nlabel = "x"\n')
    result = invoke("sweep", str(suite), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert result.output.splitlines()[0] == (
        f"error: {suite}: algorithms[0]: each [[algorithms]] table needs a 'name'."
    )
    # User text that looks like rich markup is printed as typed.
    missing = tmp_path / "[red]data[/red]" / "hopper-medium-v2.hdf5"
    result = invoke("run", "--algorithm", "bc", "--dataset", str(missing), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert result.output.startswith(f"error: dataset file {missing} does not exist")


def test_datasets_list_on_an_empty_store_says_where_and_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    result = invoke("datasets", "list")
    assert result.exit_code == 0
    assert result.output.startswith(f"no datasets under {tmp_path / 'store'} ($MINARI_DATASETS_PATH).")
    assert "`offbench datasets generate`" in result.output and "--download" in result.output
    assert len(result.output.splitlines()) == 1


def test_run_generates_a_missing_offbench_id_as_a_sweep_does(tmp_path, monkeypatch):
    from offbench.datasets.generate import catalog

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    monkeypatch.setattr(catalog, "DEFAULT_SIZE", 600)
    monkeypatch.setattr(catalog, "REFERENCE_EPISODES", 3)
    out = tmp_path / "out"
    dataset = "offbench/hopper/random-v0"
    args = ["--dataset", dataset, "--seeds", "0", "--steps", "2", "--eval-episodes", "1", "--out", str(out)]
    result = invoke("run", "--algorithm", "bc", *args, "-p", "hidden_dims=8,8", "--no-save-policy")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "store" / dataset / "data" / "main_data.hdf5").is_file()
    runs = pd.read_parquet(out / "runs")
    assert list(runs["dataset"]) == [dataset] and runs["dataset_transitions"].iloc[0] >= 600


def test_run_asks_for_download_before_fetching_a_remote_id(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    out = tmp_path / "out"
    result = invoke("run", "--algorithm", "bc", "--dataset", "mujoco/hopper/medium-v0", "--out", str(out))
    assert result.exit_code == 2
    assert "unknown dataset 'mujoco/hopper/medium-v0'" in result.output and "--download" in result.output
    assert_no_results(out)


def test_version_prints_the_package_version_and_the_code_version_rows_record():
    from importlib.metadata import version

    from offbench.bench.provenance import code_version

    result = invoke("--version")
    assert result.exit_code == 0
    code = code_version()
    first, second = result.output.splitlines()
    assert first == f"offbench {version('offbench')}"
    assert second.startswith(f"code version {code['code_version']} (")


def test_an_installed_package_inside_another_repository_is_not_that_repository_s_code(monkeypatch, tmp_path):
    """A virtual environment inside some checkout (or a home folder under git): git answers for the
    enclosing repository, whose commit is not the code that runs."""
    from offbench.bench import provenance

    answers = {"rev-parse --show-toplevel": f"{tmp_path}\n", "rev-parse HEAD": "f" * 40 + "\n"}
    monkeypatch.setattr(provenance, "_git", lambda *args: answers[" ".join(args)])
    provenance.code_version.cache_clear()
    try:
        code = provenance.code_version()
        shown = invoke("--version").output
    finally:
        provenance.code_version.cache_clear()  # the next caller sees this checkout again
    assert code["git_sha"] is None and code["code_version"] == f"offbench-{code['offbench_version']}"
    assert shown.splitlines()[1] == (
        f"code version {code['code_version']} (installed package, no git checkout)"
    )
