"""Fault injection: a sweep killed at random points resumes to the tables of an uninterrupted one, and
write failures (a read-only output, a full disk) end in one message with nothing lost or left behind."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
from same_tables import assert_same_tables
from typer.testing import CliRunner

from offbench import files
from offbench.bench import cli as cli_module
from offbench.bench import results
from offbench.bench import sweep as sweep_module
from offbench.bench.cli import app
from offbench.bench.suite import parse_suite
from offbench.bench.sweep import sweep

runner = CliRunner()


def suite_text(dataset: str) -> str:
    return f"""
name = "faults"
datasets = ["{dataset}"]
seeds = "0-1"
steps = 70
eval_every = 10
eval_episodes = 1
final_k = 2

[[algorithms]]
name = "bc"
hparams = {{ hidden_dims = [8], batch_size = 16 }}

[[algorithms]]
name = "td3bc"
hparams = {{ hidden_dims = [8], batch_size = 16 }}
"""


def leftovers(out: Path) -> list[Path]:
    """Files a finished sweep must not leave: temporaries, checkpoints, failure records."""
    return [
        path
        for path in out.rglob("*")
        if ".tmp-" in path.name
        or "orbax-checkpoint-tmp" in path.name
        or path.parent.name in ("checkpoints", "failures")
    ]


def start(suite_file: Path, out: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "offbench.bench.cli", "sweep", str(suite_file), "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def progress_points(out: Path) -> tuple[int, int]:
    """(finished jobs, sum of checkpoint steps): grows with every chunk a sweep completes."""
    steps = 0
    for path in out.glob("checkpoints/*/progress.json"):
        try:
            steps += json.loads(path.read_text())["step"]
        except (OSError, ValueError):
            continue  # replaced while being read
    return len(list(out.glob("runs/*.parquet"))), steps


def has_temporaries(out: Path) -> bool:
    # os.walk, unlike Path.rglob, passes over folders the running sweep removes while it walks.
    return any(
        ".tmp-" in name or "orbax-checkpoint-tmp" in name
        for _, folders, files in os.walk(out)
        for name in (*folders, *files)
    )


def kill_at(process: subprocess.Popen, out: Path, target: str, rng: np.random.Generator) -> str:
    """SIGKILL ``process`` at ``target``: just after the next chunk's checkpoint, just after the next job's
    rows, while a temporary file exists (mid-write), or at a random time (loading, compiling, training or
    evaluating). Returns where the kill landed."""
    before = progress_points(out)
    deadline = time.perf_counter() + (float(rng.uniform(0.5, 10.0)) if target == "time" else 600.0)
    while process.poll() is None and time.perf_counter() < deadline:
        now = progress_points(out)
        if (
            (target == "checkpoint" and now[1] > before[1])
            or (target == "rows" and now[0] > before[0])
            or (target == "temporary" and has_temporaries(out))
        ):
            break
        time.sleep(0.005)
    if process.poll() is not None:
        return f"{target}: the sweep finished first"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done, steps = progress_points(out)
    temporaries = " (temporary files left)" if has_temporaries(out) else ""
    return f"{target}: killed with {done} job(s) done and checkpoints at {steps} updates{temporaries}"


# Four kills by default (one at each kind of point); the long form with ten runs under `-m slow`.
@pytest.mark.parametrize("kills", [4, pytest.param(10, marks=pytest.mark.slow)])
def test_a_sweep_killed_at_random_points_resumes_to_the_uninterrupted_tables(
    hopper_minari, minari_root, tmp_path, kills
):
    suite_file = tmp_path / "faults.toml"
    suite_file.write_text(suite_text(hopper_minari))
    env = {**os.environ, "MINARI_DATASETS_PATH": str(minari_root)}

    reference = tmp_path / "reference"
    tic = time.perf_counter()
    finished = start(suite_file, reference, env)
    assert finished.wait(timeout=600) == 0, finished.stdout.read()
    duration = time.perf_counter() - tic

    out = tmp_path / "killed"
    rng = np.random.default_rng(1234)
    landed = []
    targets = ["checkpoint", "rows", "temporary", "time"]
    for kill in range(kills):
        target = targets[kill] if kill < len(targets) else str(rng.choice(["checkpoint", *targets]))
        landed.append(f"kill {kill + 1}, {kill_at(start(suite_file, out, env), out, target, rng)}")
    print(f"uninterrupted: {duration:.1f} s", *landed, sep="\n")
    assert sum("finished first" not in line for line in landed) >= kills - 1, landed
    resumed = start(suite_file, out, env)
    output = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, output
    assert_same_tables(out, reference)
    assert leftovers(out) == []


def sweep_suite(dataset: str):
    return parse_suite(tomllib.loads(suite_text(dataset)))


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_writing_rows_is_recorded_and_the_next_run_completes(
    hopper_minari, tmp_path, monkeypatch
):
    monkeypatch.setattr(sweep_module, "WRITE_RETRY_SECONDS", 0.0)
    reference = tmp_path / "reference"
    sweep(sweep_suite(hopper_minari), reference)

    out = tmp_path / "out"
    original = results.pq.write_table
    calls = []

    def full_for_bc(table, path, *args, **kwargs):
        calls.append(path)
        if "bc-uniform" in Path(path).name and "td3bc" not in Path(path).name:
            enospc()
        return original(table, path, *args, **kwargs)

    monkeypatch.setattr(results.pq, "write_table", full_for_bc)
    summary = sweep(sweep_suite(hopper_minari), out)
    assert len(summary.failed) == 1 and len(summary.finished) == 1  # the sweep went on
    (message,) = summary.failed.values()
    assert "No space left on device" in message and "after 3 attempts" in message
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    monkeypatch.setattr(results.pq, "write_table", original)
    again = sweep(sweep_suite(hopper_minari), out)
    assert len(again.finished) == 1 and again.skipped == 1 and not again.failed
    assert_same_tables(out, reference)
    assert leftovers(out) == []


def test_a_disk_too_full_to_record_the_failure_stops_the_sweep_with_one_message(
    hopper_minari, tmp_path, monkeypatch
):
    monkeypatch.setattr(sweep_module, "WRITE_RETRY_SECONDS", 0.0)
    monkeypatch.setattr(results.pq, "write_table", enospc)
    monkeypatch.setattr(sweep_module, "write_text_atomic", enospc)
    suite_file = tmp_path / "faults.toml"
    suite_file.write_text(suite_text(hopper_minari))
    out = tmp_path / "out"
    # The jobs run in this process, as they do on a GPU, so that they write with the patched writers (a
    # CPU sweep's workers are processes of their own).
    monkeypatch.setattr(cli_module, "job_threads", lambda threads_per_worker: None)
    result = runner.invoke(app, ["sweep", str(suite_file), "--out", str(out), "--workers", "1"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "stopped: cannot write the results of bc-uniform" in " ".join(
        result.output.split()
    )
    assert "Traceback" not in result.output
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or "orbax-checkpoint-tmp" in p.name]
    assert not list(out.glob("failures/*")) and not list(out.glob("runs/*"))


def test_offbench_run_on_a_full_disk_says_so_in_one_line(hopper_minari, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep_module, "WRITE_RETRY_SECONDS", 0.0)
    monkeypatch.setattr(results.pq, "write_table", enospc)
    out = tmp_path / "out"
    args = [
        "run",
        "--algorithm",
        "bc",
        "--dataset",
        hopper_minari,
        "--steps",
        "10",
        "--seeds",
        "0",
        "-p",
        "hidden_dims=8",
        "--out",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: cannot write the results of bc-uniform" in " ".join(result.output.split())
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name] and not list(out.glob("runs/*"))


def read_only(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_read_only_output_is_refused_before_training(hopper_minari, tmp_path, monkeypatch, command):
    suite_file = tmp_path / "faults.toml"
    suite_file.write_text(suite_text(hopper_minari))
    out = tmp_path / "out"
    monkeypatch.setattr(files.tempfile, "mkstemp", read_only)
    trained = []
    monkeypatch.setattr(sweep_module, "run_job", lambda *a, **k: trained.append(a))
    args = (
        ["run", "--algorithm", "bc", "--dataset", hopper_minari, "--steps", "10", "--out", str(out)]
        if command == "run"
        else ["sweep", str(suite_file), "--out", str(out)]
    )
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and not trained
    (line,) = [line for line in result.output.splitlines() if line.strip()]
    assert "cannot write to" in line and "Read-only file system" in line and "Choose a writable --out" in line
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_folder_without_write_permission_is_refused(hopper_minari, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    result = runner.invoke(
        app,
        [
            "run",
            "--algorithm",
            "bc",
            "--dataset",
            hopper_minari,
            "--steps",
            "10",
            "--out",
            str(locked / "out"),
        ],
    )
    assert result.exit_code == 2 and "Permission denied" in result.output


def test_too_little_free_space_is_refused_before_training(hopper_minari, tmp_path, monkeypatch):
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 1_000_000})())
    result = runner.invoke(
        app, ["sweep", str(write_suite(tmp_path, hopper_minari)), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 2
    assert "not enough free space" in " ".join(result.output.split()) and not (tmp_path / "out").exists()


def write_suite(tmp_path: Path, dataset: str) -> Path:
    path = tmp_path / "faults.toml"
    path.write_text(suite_text(dataset))
    return path


def test_the_next_run_cleans_what_killed_writers_left(hopper_minari, tmp_path):
    out = tmp_path / "out"
    sweep(sweep_suite(hopper_minari), out)
    dead = 2**22 + 12345  # above the default pid_max: no process has it
    stale = [
        out / "runs" / f".x.parquet.tmp-{dead}",
        out / "failures" / f".x.json.tmp-{dead}",
        out / "policies" / f".job.tmp-{dead}" / "policy.json",
        out / "checkpoints" / "job" / "step_0000000010.orbax-checkpoint-tmp-1234" / "x",
    ]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("partial")
    logged = []
    summary = sweep(sweep_suite(hopper_minari), out, log=logged.append)
    assert summary.skipped == 2
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or "orbax-checkpoint-tmp" in p.name]
    assert any(line.startswith("removed 4 temporary file(s)") for line in logged), logged
