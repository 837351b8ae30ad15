"""Parallel local jobs: ``offbench sweep --workers N`` runs up to N jobs at once, each in its own process.

Each job runs in a fresh interpreter (``python -m offbench.bench.workers``: JAX is not fork-safe), started
with a fixed number of XLA intra-op threads (:func:`thread_environment`, :data:`DEFAULT_JOB_THREADS`), and
writes its rows, policy and checkpoints under the output directory exactly as a sequential sweep does.
XLA splits some operations by its thread pool's size, so a job's floats depend on its thread count: with
the same count for every job, a sweep's rows are the same whatever the number of workers and whatever
the machine's core count (docs/scaling.md has the measurements). The parent
sends the job down the child's stdin and reads one JSON event a line back (chunk progress, log lines, the
outcome); everything else the child prints goes to a log file, whose tail a failure record keeps.

- A child that raises reports its error; the parent records the failure and the sweep goes on.
- A child that dies without a word (SIGKILL, out of memory) is recorded as failed with how it died; its
  checkpoints stay, so a rerun resumes it from its last chunk.
- Ctrl-C (or any error in the parent) interrupts every child, waits for them, and kills what is left:
  checkpoints are written atomically, so whatever a child was doing, its job resumes from the last one.

This module imports no JAX at the top: the child sets nothing before JAX loads, but the parent should not
pay for it either when it only starts workers.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import pickle
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from offbench.bench.sweep import PlannedJob

# Seconds an interrupted child gets to finish writing before it is killed.
STOP_GRACE_SECONDS = 20.0
# Characters of a dead child's log kept in its failure record.
LOG_TAIL = 4_000


def usable_cores() -> int:
    """Cores this process may run on (a container's or ``taskset``'s share, not the host's count)."""
    return len(os.sched_getaffinity(0))


def default_workers(jobs: int, accelerator: bool = False) -> int:
    """One worker per usable core, no more than there are jobs; one when JAX trains on an accelerator.

    Measured on a 2-core CPU: two single-threaded processes side by side train 1.07-1.2x more updates than
    one process with XLA's threads on both cores (the networks, 256 wide, leave XLA's threads little to
    split), and evaluation (MuJoCo) runs on one core anyway. On an accelerator the jobs would share one
    device and its memory, which a single process already keeps busy.
    """
    if accelerator:
        return 1
    return max(1, min(usable_cores(), jobs))


# XLA CPU threads of every job of a CPU sweep, whatever --workers is. XLA decides how to split some
# reductions by its thread pool's size, so a fixed count is what makes a sweep's rows independent of the
# worker count and of the machine's cores. One, because offbench's 256-wide networks leave XLA's threads
# little to split: on a 2-core machine two one-thread jobs side by side train more than one job on both
# cores (see default_workers), so one thread per job and one job per core is also the fastest layout.
DEFAULT_JOB_THREADS = 1


def thread_environment(threads: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child that may use ``threads`` cores.

    JAX's CPU client sizes its intra-op thread pool (``XLAEigen``) from ``NPROC`` when it is set, else
    from the cores the process may run on; one thread also turns Eigen's multi-threaded matmuls off
    (``--xla_cpu_multi_thread_eigen=false``), so they run on the calling thread. XLA has no
    ``intra_op_parallelism_threads`` flag (TensorFlow's): naming it in ``XLA_FLAGS`` aborts the process.
    The OpenMP/BLAS pools of the libraries around JAX get the same share."""
    environ = dict(os.environ if environ is None else environ)
    environ["NPROC"] = str(threads)
    flags = [flag for flag in environ.get("XLA_FLAGS", "").split() if "multi_thread_eigen" not in flag]
    if threads == 1:
        flags.append("--xla_cpu_multi_thread_eigen=false")
    environ["XLA_FLAGS"] = " ".join(flags)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        environ[name] = str(threads)
    return environ


@dataclasses.dataclass
class Running:
    """A child process and the job it runs."""

    planned: PlannedJob
    process: subprocess.Popen
    slot: int
    log_path: Path
    outcome: dict[str, Any] | None = None


def start_worker(planned: PlannedJob, out: Path, threads: int, log_path: Path) -> subprocess.Popen:
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "offbench.bench.workers"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log_file,
            env=thread_environment(threads) | {PARENT_ENV: str(os.getpid())},
            process_group=0,  # Ctrl-C reaches the parent only, which interrupts the children itself
        )
    assert process.stdin is not None
    pickle.dump({"planned": planned, "out": str(out.absolute())}, process.stdin)
    process.stdin.close()
    return process


def read_events(slot: int, process: subprocess.Popen, events: queue.Queue) -> None:
    """Forward a child's JSON events, then its exit, to ``events`` (runs in a thread per child)."""
    assert process.stdout is not None
    for line in process.stdout:
        with contextlib.suppress(ValueError):  # a torn line from a killed child
            events.put((slot, json.loads(line)))
    events.put((slot, {"event": "exit", "code": process.wait()}))


def death(code: int, log_path: Path) -> tuple[str, str]:
    """A failure message and details for a child that exited with ``code`` without reporting an outcome."""
    if code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
    else:
        how = f"exited with status {code} without reporting"
    try:
        tail = log_path.read_text(errors="replace")[-LOG_TAIL:]
    except OSError:
        tail = ""
    message = (
        f"WorkerDied: the worker process running this job {how}; its checkpoints are kept, so rerunning the "
        "sweep resumes it from its last chunk."
    )
    return message, f"{message}\n\nlast lines of the worker's output:\n{tail}"


def stop(running: dict[int, Running]) -> None:
    """Interrupt every child (as Ctrl-C would), give them time to finish a write, then kill the rest."""
    for child in running.values():
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGINT)
    for child in running.values():
        try:
            child.process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def run_parallel(
    jobs: list[PlannedJob],
    out: Path,
    workers: int,
    progress: Any | None = None,
    log: Callable[[str], None] = print,
    threads_per_worker: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Run ``jobs`` in up to ``workers`` child processes at once; returns (finished names, failed name ->
    message), like the sequential executor. Each child trains with ``threads_per_worker`` XLA threads
    (default :data:`DEFAULT_JOB_THREADS`)."""
    from offbench.bench.sweep import JobFailed, record_or_stop

    workers = max(1, min(workers, len(jobs)))
    threads = threads_per_worker or DEFAULT_JOB_THREADS
    events: queue.Queue = queue.Queue()
    waiting, running = list(jobs), {}
    finished, failed = [], {}
    jobs_task, slot_tasks = None, []
    if progress is not None:
        layout = f"{workers} workers × {threads} XLA thread{'s' * (threads > 1)}"
        jobs_task = progress.add_task("jobs", total=len(jobs), detail=layout)
        slot_tasks = [progress.add_task(f"worker {i}", total=1, detail="") for i in range(workers)]
    with tempfile.TemporaryDirectory(prefix="offbench-workers-") as logs:
        try:
            while waiting or running:
                for slot in sorted(set(range(workers)) - set(running)):
                    if not waiting:
                        break
                    planned = waiting.pop(0)
                    log_path = Path(logs) / f"{planned.identity.name}.log"
                    process = start_worker(planned, out, threads, log_path)
                    running[slot] = Running(planned, process, slot, log_path)
                    threading.Thread(target=read_events, args=(slot, process, events), daemon=True).start()
                    if progress is not None:
                        progress.update(
                            slot_tasks[slot],
                            description=planned.identity.name[:48],
                            total=planned.job.steps,
                            completed=0,
                            detail="starting",
                        )
                slot, event = events.get()
                child = running[slot]
                if event["event"] == "chunk":
                    if progress is not None:
                        progress.update(slot_tasks[slot], completed=event["step"], detail=event["detail"])
                elif event["event"] == "log":
                    log(event["line"])
                elif event["event"] in ("finished", "failed"):
                    child.outcome = event
                elif event["event"] == "exit":
                    del running[slot]
                    name = child.planned.identity.name
                    outcome = child.outcome or {}
                    if outcome.get("event") == "finished":
                        finished.append(name)
                    else:
                        message, details = (
                            (outcome["error"], outcome["traceback"])
                            if outcome.get("event") == "failed"
                            else death(event["code"], child.log_path)
                        )
                        failed[name] = record_or_stop(out, child.planned, JobFailed(message, details))
                    if progress is not None:
                        progress.advance(jobs_task)
                        progress.update(slot_tasks[slot], description=f"worker {slot}", detail="")
        except BaseException:
            stop(running)
            raise
    return finished, failed


def child_main(stdin: IO[bytes], protocol: IO[str]) -> int:
    """Run the job sent on ``stdin``, reporting events on ``protocol``; the exit status."""
    request = pickle.load(stdin)

    def send(**event: Any) -> None:
        protocol.write(json.dumps(event) + "\n")
        protocol.flush()

    from offbench.bench.sweep import chunk_detail, run_and_write

    try:
        name = run_and_write(
            request["planned"],
            Path(request["out"]),
            on_chunk=lambda chunk: send(event="chunk", step=chunk.step, detail=chunk_detail(chunk)),
            log=lambda line: send(event="log", line=line),
        )
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        send(
            event="failed",
            error=f"{type(error).__name__}: {error}",
            traceback="".join(traceback.format_exception(error)),
        )
        return 1
    send(event="finished", name=name)
    return 0


# The parent's process id, set in a child's environment: a child whose parent is gone exits.
PARENT_ENV = "OFFBENCH_WORKER_PARENT"


def die_with_parent() -> None:
    """Have Linux kill this child when its parent dies (``PR_SET_PDEATHSIG``), so a killed sweep leaves no
    worker writing into its output while the rerun resumes the same job; exit now if it is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(os.environ.get(PARENT_ENV, os.getppid())):
        sys.exit(1)


PR_SET_PDEATHSIG = 1


def main() -> None:
    die_with_parent()
    # The events go to the real stdout; anything else printed (libraries' notices) goes to stderr, the log.
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        code = child_main(sys.stdin.buffer, protocol)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
