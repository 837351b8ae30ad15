"""Parallel local jobs (``offbench sweep --workers N``): the same rows as a sequential sweep, a worker
killed mid-job recorded and resumed, Ctrl-C stopping every worker, and XLA's threads set per worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from same_tables import assert_same_tables
from typer.testing import CliRunner

from offbench.bench import workers as workers_module
from offbench.bench.cli import app
from offbench.bench.suite import parse_suite
from offbench.bench.sweep import sweep


def suite_text(dataset: str, steps: int = 40) -> str:
    return f"""
name = "workers"
datasets = ["{dataset}"]
seeds = "0-1"
steps = {steps}
eval_every = 10
eval_episodes = 1
final_k = 2

[[algorithms]]
name = "td3bc"
hparams = {{ hidden_dims = [8], batch_size = 16 }}
grid = {{ alpha = [1.0, 2.0] }}
"""


class RecordingProgress:
    """Stands in for rich's Progress: remembers the most jobs shown as running at once."""

    def __init__(self) -> None:
        self.tasks: dict[int, dict] = {}
        self.most_running = 0

    def add_task(self, description: str, **fields) -> int:
        self.tasks[len(self.tasks)] = {"description": description, **fields}
        return len(self.tasks) - 1

    def update(self, task: int, **fields) -> None:
        self.tasks[task].update(fields)
        running = sum(not t["description"].startswith(("worker", "jobs")) for t in self.tasks.values())
        self.most_running = max(self.most_running, running)

    def advance(self, task: int) -> None:
        self.tasks[task]["completed"] = self.tasks[task].get("completed", 0) + 1


def test_workers_write_a_sequential_sweeps_rows_and_a_killed_worker_is_resumed(
    hopper_minari, tmp_path, monkeypatch
):
    """Two workers, one SIGKILLed after its first checkpoint: that job is recorded as failed, the other
    finishes; the rerun resumes it from the checkpoint, and the tables equal a sequential sweep's."""
    suite = parse_suite(tomllib.loads(suite_text(hopper_minari)))
    reference = tmp_path / "sequential"
    assert len(sweep(suite, reference, workers=1, threads_per_worker=1).finished) == 2

    started: dict[str, subprocess.Popen] = {}
    original_start = workers_module.start_worker

    def recording_start(planned, *args, **kwargs):
        started[planned.identity.name] = original_start(planned, *args, **kwargs)
        return started[planned.identity.name]

    monkeypatch.setattr(workers_module, "start_worker", recording_start)
    out = tmp_path / "parallel"

    def kill_after_first_checkpoint() -> None:
        while True:
            for directory in out.glob("checkpoints/*"):
                if (directory / "progress.json").exists() and directory.name in started:
                    started[directory.name].send_signal(signal.SIGKILL)
                    return
            time.sleep(0.002)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    progress = RecordingProgress()
    summary = sweep(suite, out, workers=2, progress=progress)
    watcher.join(timeout=5)
    assert progress.most_running == 2  # the display showed both jobs while they ran
    assert len(summary.failed) == 1 and len(summary.finished) == 1, summary
    ((name, message),) = summary.failed.items()
    assert "killed by SIGKILL" in message
    assert json.loads((out / "failures" / f"{name}.json").read_text())["error"] == message
    step = json.loads((out / "checkpoints" / name / "progress.json").read_text())["step"]
    assert 0 < step < 40

    logged: list[str] = []
    again = sweep(suite, out, workers=2, log=logged.append)
    assert again.skipped == 1 and again.finished == [name] and not again.failed
    assert f"{name}: resuming from its checkpoint at update {step}" in logged
    assert_same_tables(out, reference)
    assert not (out / "checkpoints").exists() and not list((out / "failures").glob("*.json"))


def test_ctrl_c_stops_every_worker_keeps_checkpoints_and_prints_the_resume_line(
    hopper_minari, minari_root, tmp_path
):
    suite_file = tmp_path / "workers.toml"
    suite_file.write_text(suite_text(hopper_minari, steps=200))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "offbench.bench.cli", "sweep", str(suite_file), "--out", str(out)]
    env = {**os.environ, "MINARI_DATASETS_PATH": str(minari_root), "COLUMNS": "300"}
    sweeper = subprocess.Popen(
        [*command, "--workers", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell's background job ignores SIGINT, and its children inherit that: Ctrl-C must reach it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while len(list(out.glob("checkpoints/*/progress.json"))) < 2 and time.monotonic() < deadline:
        assert sweeper.poll() is None, sweeper.stdout.read()
        time.sleep(0.05)
    children = child_pids(sweeper.pid)
    assert len(children) == 2
    sweeper.send_signal(signal.SIGINT)
    output = sweeper.communicate(timeout=120)[0]
    assert sweeper.returncode == 130, output
    text = " ".join(output.split())  # the console wraps long lines
    assert text.count("Resume with:") == 1, output
    assert "2 with a checkpoint to resume; no partial rows were written." in text
    assert f"Resume with: offbench sweep {suite_file} --out {out} --workers 2" in text
    assert len(list(out.glob("checkpoints/*/progress.json"))) == 2
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()]


def child_pids(pid: int) -> list[int]:
    return [
        int(child)
        for task in Path(f"/proc/{pid}/task").iterdir()
        for child in (task / "children").read_text().split()
    ]


def test_a_worker_gets_its_share_of_xlas_threads():
    """NPROC sizes JAX's CPU thread pool: a one-thread worker's process has one XLAEigen thread."""
    script = (
        "import os, jax, jax.numpy as jnp;"
        "jax.jit(lambda a: a @ a)(jnp.ones((256, 256))).block_until_ready();"
        "print(sum(open(f'/proc/self/task/{t}/comm').read().strip() == 'tf_XLAEigen'"
        " for t in os.listdir('/proc/self/task')))"
    )
    for threads in (1, 2):
        environment = workers_module.thread_environment(threads)
        output = subprocess.run(
            [sys.executable, "-c", script], env=environment, capture_output=True, text=True, check=True
        ).stdout
        assert int(output.split()[-1]) == threads


def test_the_cli_gives_every_job_one_xla_thread_whatever_the_worker_count(
    hopper_minari, minari_root, tmp_path
):
    """XLA's CPU floats can depend on its thread count (on some CPUs, at the paper's network sizes), so
    the CLI trains every CPU job with the same one thread: one worker and two write identical rows, which
    record the count, and --threads-per-worker changes it."""
    suite_file = tmp_path / "workers.toml"
    suite_file.write_text(suite_text(hopper_minari, steps=20))
    outputs = {}
    for name, options in {
        "sequential": ["--workers", "1"],
        "parallel": [],
        "two-threads": ["--threads-per-worker", "2"],
    }.items():
        outputs[name] = tmp_path / name
        result = CliRunner().invoke(
            app, ["sweep", str(suite_file), "--out", str(outputs[name]), *options], catch_exceptions=False
        )
        assert result.exit_code == 0 and "finished 2 jobs" in result.output, result.output
    assert_same_tables(outputs["parallel"], outputs["sequential"])
    assert pd.read_parquet(outputs["sequential"] / "runs")["xla_cpu_threads"].eq(1).all()
    assert pd.read_parquet(outputs["two-threads"] / "runs")["xla_cpu_threads"].eq(2).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--workers", "0"], "--workers must be at least 1, got 0."),
        (["--workers", "2", "--executor", "ray"], "--workers is for the local executor"),
        (["--workers", "2", "--threads-per-worker", "0"], "--threads-per-worker must be at least 1, got 0."),
        (["--gpus-per-job", "0.5"], "--cpus-per-job and --gpus-per-job are Ray task requests"),
        (["--executor", "ray", "--gpus-per-job", "1.5"], "--gpus-per-job above 1 must be a whole number"),
    ],
)
def test_bad_scaling_options_are_refused_in_one_line_before_anything_runs(tmp_path, options, message):
    result = CliRunner().invoke(app, ["sweep", "ci", "--out", str(tmp_path / "out"), *options])
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
    assert not (tmp_path / "out").exists()
