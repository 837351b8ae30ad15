"""Run a suite: expand it into jobs, run them locally or on Ray, resume, record failures.

Jobs are named by their identity (``train.identify``): a digest of everything that determines their
rows. A job's rows are written atomically when it finishes (``runs/<job>.parquet`` last, marking it
done), with its policy saved under ``policies/<job>/``; a rerun skips finished jobs and resumes an
unfinished one from its last checkpoint (``checkpoints/<job>/``) when the identity and code version
match. A changed suite reruns exactly the changed jobs, and the rows they replace move to
``superseded/``. A job that raises is recorded in ``failures/<job>.json`` with its error and the
sweep goes on; a rerun tries it again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from offbench import files
from offbench.bench import provenance, results
from offbench.bench.suite import Suite, SuiteError, expand_datasets
from offbench.bench.train import (
    ChunkReport,
    Job,
    JobIdentity,
    identify,
    job_code_version,
    resolve,
    run_job,
    state_bytes,
)
from offbench.datasets import provision
from offbench.datasets.dataset import Dataset, DatasetError, DatasetSpec
from offbench.files import write_text_atomic


@dataclasses.dataclass
class SweepSummary:
    total: int
    skipped: int
    finished: list[str]
    failed: dict[str, str]
    # Ray only: job name -> the node id it ran on, the update it resumed from, the device JAX used.
    placements: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class PlannedJob:
    job: Job
    identity: JobIdentity


@dataclasses.dataclass
class Plan:
    """What a sweep will do: the jobs to run, those already finished, and what planning changed on disk."""

    todo: list[PlannedJob]
    done: list[PlannedJob]
    messages: list[str]


def run_and_write(
    planned: PlannedJob,
    out: Path,
    dataset: Dataset | None = None,
    on_chunk: Callable[[ChunkReport], None] | None = None,
    log: Callable[[str], None] = print,
    save_policy: bool = True,
) -> str:
    """Run one job with checkpoints under ``out``, save its policy and write its rows (``runs`` last).
    Returns the job name."""
    from offbench.bench import checkpoint
    from offbench.bench.policy import save_policy as write_policy

    job, name = planned.job, planned.identity.name
    checkpoint_dir = out / "checkpoints" / name
    output = run_job(
        job,
        dataset=dataset,
        on_chunk=on_chunk,
        checkpoint_dir=checkpoint_dir,
        identity=planned.identity,
        log=log,
    )
    if save_policy:
        retrying(name, out, lambda: write_policy(out / "policies" / name, output, job))
    retrying(name, out, lambda: results.write_job(out, name, output.frames))
    checkpoint.remove(checkpoint_dir)
    with contextlib.suppress(OSError):  # only when empty: other jobs' checkpoints stay
        checkpoint_dir.parent.rmdir()
    (out / "failures" / f"{name}.json").unlink(missing_ok=True)
    return name


# A failing write is tried this many times, this many seconds apart, before the job is recorded as failed:
# a network file system's hiccup passes, a full disk does not.
WRITE_ATTEMPTS = 3
WRITE_RETRY_SECONDS = 2.0


class OutputError(OSError):
    """The results of a finished job could not be written; the message names the folder and the fix."""


def retrying(name: str, out: Path, write: Callable[[], Any]) -> None:
    for attempt in range(WRITE_ATTEMPTS):
        try:
            write()
            return
        except OSError as error:
            if attempt + 1 == WRITE_ATTEMPTS:
                raise OutputError(
                    f"cannot write the results of {name} to {out} ({error.strerror or error}), after "
                    f"{WRITE_ATTEMPTS} attempts; its training is lost. Free space or fix the folder, then "
                    "rerun: finished jobs are kept."
                ) from error
            time.sleep(WRITE_RETRY_SECONDS)


class JobFailed(Exception):
    """A job failed in another process (a local worker, a Ray task): its message and details as text."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details or message


def record_failure(out: Path, planned: PlannedJob, error: BaseException) -> str:
    """Write ``failures/<job>.json``; an OSError here (a full disk) propagates, nothing half-written stays."""
    if isinstance(error, JobFailed):
        message, details = error.message, error.details
    else:
        message, details = f"{type(error).__name__}: {error}", "".join(traceback.format_exception(error))
    job = dataclasses.asdict(planned.job)
    if planned.job.plugin is not None:  # where the plug-in came from, not its whole source
        job["plugin"] = planned.job.plugin.record()
    record = {
        "job": job,
        "name": planned.identity.name,
        "job_id": planned.identity.job_id,
        "error": message,
        "traceback": details,
        "timestamp": results.utc_now(),
    }
    write_text_atomic(
        out / "failures" / f"{planned.identity.name}.json", json.dumps(record, indent=2, default=str)
    )
    return message


# Room a job's rows take on disk, beyond its checkpoint and policy (a generous bound: tens of kB is usual).
ROW_BYTES = 5_000_000
# What a sweep does with finished jobs whose rows were written by another code version.
CODE_CHANGE_POLICIES = ("refuse", "rerun", "keep")
ROW_KEYS = ["suite", "label", "sampler", "dataset", "job_id", "code_version"]


def plan(suite: Suite, out: Path, download: bool = False, on_code_change: str = "refuse") -> Plan:
    """Validate everything and decide what runs, before training starts (see :func:`plan_jobs`).

    ``download`` fetches the suite's remote Minari ids that are not local (the ``minari-mujoco`` suite).
    Rows of this suite that the suite no longer asks for are moved to ``superseded/``.
    """
    results.check_output_dir(out)
    available = provision.available_dataset_ids()
    dataset_ids = expand_datasets(suite.datasets, lambda: available)
    jobs = suite.jobs(dataset_ids)
    check_distinct_jobs(jobs)  # before any dataset is generated: a suite error should cost nothing
    check_plugins(jobs)
    try:
        provision.ensure_datasets(dataset_ids, available, download)
    except DatasetError as error:
        raise SuiteError(str(error)) from error
    return plan_jobs(jobs, out, lambda keys: keys.get("suite") == suite.name, on_code_change)


def check_plugins(jobs: list[Job]) -> None:
    """The cheap part of the conformance check (the declaration, and ``init``/``update``/``act`` traced on
    a small spec, nothing compiled) for every plug-in the jobs use, so that a broken plug-in stops the
    sweep before any dataset is generated or any job trains."""
    from offbench.bench import conformance

    for source in dict.fromkeys(job.plugin for job in jobs if job.plugin is not None):
        failures = conformance.check_cheap(source)
        if failures:
            raise SuiteError(
                f"the plug-in {source.name} ({source.origin}) fails the conformance check: "
                + "; ".join(str(failure) for failure in failures)
                + f". Run `offbench algorithms check {source.path or source.module}` for details."
            )


def same_slot(job: Job) -> Callable[[dict[str, Any]], bool]:
    """For ``offbench run``: rows of the same method, sampler and dataset are replaced by a new run."""
    sampler = resolve(job).sampler
    wanted = {"suite": job.suite, "label": job.method, "sampler": sampler, "dataset": job.dataset}
    return lambda keys: all(keys.get(key) == value for key, value in wanted.items())


def plan_jobs(
    jobs: list[Job],
    out: Path,
    replaces: Callable[[dict[str, Any]], bool],
    on_code_change: str = "refuse",
    datasets: dict[str, Dataset] | None = None,
) -> Plan:
    """Split ``jobs`` into those to run and those finished, by identity, and tidy ``out`` for them.

    - A job is finished when rows with its identity exist. Rows that ``replaces`` claims (this suite's,
      or for ``offbench run`` the same method on the same dataset) under another identity are stale:
      they are moved to ``superseded/<time>/``, out of the tables readers load, never deleted.
    - Finished jobs written by another code version: ``on_code_change`` refuses (the default, naming
      the flags), reruns them (their old rows are superseded) or keeps them beside the new rows. The
      refusal comes when new rows would join them, and also when a plug-in's own source changed since
      its rows were written: the same command after an edit must not report the old code's rows.
    - Checkpoints of finished jobs, and of stale ones, are removed; those of jobs to run are resumed
      only when their identity and code version match (:func:`checkpoint.load`).
    """
    from offbench.bench import checkpoint

    if on_code_change not in CODE_CHANGE_POLICIES:
        raise SuiteError(
            f"unknown code-change policy {on_code_change!r}: use {', '.join(CODE_CHANGE_POLICIES)}."
        )
    datasets = datasets or {}
    described = {
        (job.dataset, job.env_id): inspect_dataset(job.dataset, job.env_id, datasets.get(job.dataset))
        for job in jobs
    }
    planned = [PlannedJob(job, identify(job, described[job.dataset, job.env_id][0])) for job in jobs]
    wanted = {p.identity.name for p in planned}
    existing = existing_rows(out)
    code = {p.identity.name: job_code_version(p.job) for p in planned}
    other_code = {name for name in wanted & set(existing) if existing[name]["code_version"] != code[name]}
    rerun = other_code if on_code_change == "rerun" else set()
    done = [p for p in planned if p.identity.name in existing and p.identity.name not in rerun]
    todo = [p for p in planned if p not in done]
    files.check_free_space(
        out,
        sum(2 * state_bytes(p.job, described[p.job.dataset, p.job.env_id][1]) + ROW_BYTES for p in todo),
    )
    by_name = {p.identity.name: p.job for p in planned}
    edited_plugins = {
        name
        for name in other_code
        if by_name[name].plugin is not None
        and not existing[name]["code_version"].endswith(code[name].rpartition("+")[2])
    }
    if other_code and (todo or edited_plugins) and on_code_change == "refuse":
        versions = sorted({existing[name]["code_version"] for name in other_code})
        current = sorted({code[name] for name in other_code})
        raise SuiteError(
            f"{out} holds {len(other_code)} finished job(s) of this suite written by other code "
            f"({', '.join(versions)}; this is {', '.join(current)}); new rows would mix code versions. "
            "Rerun with --on-code-change rerun to redo them with this code (old rows are kept in "
            "superseded/), or --on-code-change keep to keep them beside the new rows."
        )
    messages = []
    removed = files.remove_stale_temporaries(out)
    if removed:
        messages.append(f"removed {len(removed)} temporary file(s) left by an interrupted run in {out}")
    if other_code and on_code_change == "keep":
        messages.append(
            f"keeping {len(other_code)} finished job(s) written by other code (--on-code-change keep)"
        )
    stale_rows = sorted(
        name for name, keys in existing.items() if replaces(keys) and (name not in wanted or name in rerun)
    )
    stale_failures = sorted(
        name for name, keys in failure_records(out).items() if replaces(keys) and name not in wanted
    )
    if stale_rows or stale_failures:
        folder = supersede(out, sorted({*stale_rows, *stale_failures}))
        moved = [f"the rows of {len(stale_rows)} replaced job(s)"] if stale_rows else []
        moved += [f"{len(stale_failures)} failure record(s) of replaced jobs"] if stale_failures else []
        messages.append(f"moved {' and '.join(moved)} to {folder}")
    todo_names = {p.identity.name for p in todo}
    for directory in sorted((out / "checkpoints").glob("*")):
        if directory.name in todo_names:
            continue
        progress = checkpoint.read_progress(directory) or {}
        if directory.name in wanted:
            why = "its job is finished"
        elif replaces(progress.get("keys", {})) or not progress:
            why = "its job's settings or dataset contents changed" if progress else "it is unreadable"
        else:
            continue  # another suite's job, resumable by that suite
        checkpoint.remove(directory)
        messages.append(f"discarded checkpoint {directory}: {why}")
    return Plan(todo, done, messages)


def inspect_dataset(
    name: str, env_id: str | None = None, dataset: Dataset | None = None
) -> tuple[str, DatasetSpec]:
    """A dataset's content fingerprint and spec, once its observation and action shapes are checked
    against its evaluation environment (from the cached spec, or ``dataset``, or by loading it)."""
    from offbench.datasets.envs import check_spaces
    from offbench.datasets.fingerprint import describe

    digest, spec = describe(name, env_id=env_id, dataset=dataset)
    check_spaces(spec)
    return digest, spec


def existing_rows(out: Path) -> dict[str, dict[str, Any]]:
    """The keys of every finished job in ``out``: job name -> suite, label, sampler, dataset, job_id and
    code version of its runs rows."""
    import pyarrow.parquet as pq

    found = {}
    for path in sorted((out / "runs").glob("*.parquet")):
        first = pq.read_table(path, columns=ROW_KEYS).slice(0, 1).to_pylist()
        if first:
            found[path.stem] = first[0]
    return found


def failure_records(out: Path) -> dict[str, dict[str, Any]]:
    """Job name -> keys of each failure record in ``out``."""
    found = {}
    for path in sorted((out / "failures").glob("*.json")):
        try:
            keys = results.failure_keys(json.loads(path.read_text())["job"])
        except (OSError, ValueError, KeyError, TypeError):
            keys = {}
        found[path.stem] = keys
    return found


def supersede(out: Path, names: list[str]) -> Path:
    """Move every file of the jobs ``names`` (rows, policies, failure records) to ``superseded/<time>/``."""
    folder = out / "superseded" / results.utc_now().replace(":", "")
    for name in names:
        for path in (
            *(results.table_path(out, table, name) for table in results.TABLES),
            out / "policies" / name,
            out / "failures" / f"{name}.json",
        ):
            if path.exists():
                target = folder / path.relative_to(out)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    return folder


def check_distinct_jobs(jobs: list[Job]) -> None:
    """Refuse two entries asking for one job (same algorithm, dataset and resolved hyper-parameters):
    they would train the same thing twice under two labels."""
    seen: dict[tuple[str, str, str], Job] = {}
    for job in jobs:
        key = (job.algorithm, job.dataset, results.hparams_hash(resolve(job)))
        other = seen.setdefault(key, job)
        if other is not job:
            raise SuiteError(
                f"two [[algorithms]] entries ask for the same job ({job.algorithm} on {job.dataset} with the "
                f"same sampler and resolved hyper-parameters, labels {other.method!r} and {job.method!r}). "
                "Remove one, or change its hyper-parameters."
            )


def chunk_detail(chunk: ChunkReport) -> str:
    """The progress display's words for a finished chunk: speed, score (or return) and success."""
    score = (
        f"score {chunk.normalized_score:.1f}"
        if chunk.normalized_score is not None
        else f"return {chunk.return_mean:.1f}"
    )
    if not math.isnan(chunk.success_rate):
        score += f", success {chunk.success_rate:.0%}"
    return f"{chunk.updates_per_second:,.0f} upd/s/seed, {score}"


def run_local(
    jobs: list[PlannedJob], out: Path, progress: Any | None = None, log: Callable[[str], None] = print
) -> tuple[list[str], dict[str, str]]:
    """Run ``jobs`` one after another in this process."""
    from offbench.datasets.sources import load_dataset

    finished, failed = [], {}
    cache: dict[str, Dataset] = {}
    jobs_task = updates_task = None
    if progress is not None:
        jobs_task = progress.add_task("jobs", total=len(jobs), detail="")
        updates_task = progress.add_task("updates", total=1, detail="")
    for planned in jobs:
        job, name = planned.job, planned.identity.name
        if progress is not None:
            progress.update(updates_task, total=job.steps, completed=0, description=name[:48], detail="")

        def report(chunk: ChunkReport) -> None:
            if progress is not None:
                progress.update(updates_task, completed=chunk.step, detail=chunk_detail(chunk))

        try:
            if job.dataset not in cache:
                cache.clear()  # jobs are grouped by dataset: keep one dataset in memory at a time
                cache[job.dataset] = load_dataset(job.dataset)
            finished.append(run_and_write(planned, out, dataset=cache[job.dataset], on_chunk=report, log=log))
        except Exception as error:  # a failed job is recorded and the sweep goes on
            failed[name] = record_or_stop(out, planned, error)
        if progress is not None:
            progress.advance(jobs_task)
    return finished, failed


class SweepStopped(Exception):
    """A failure could not even be recorded (the output cannot be written): the sweep stops."""


def record_or_stop(out: Path, planned: PlannedJob, error: Exception) -> str:
    """Record a failed job, or stop the sweep with one message when its failure cannot be written either:
    every later job would fail the same way."""
    try:
        return record_failure(out, planned, error)
    except OSError as record_error:
        cause = error if isinstance(error, OutputError) else record_error
        raise SweepStopped(
            f"stopped: {cause} The failure record could not be written either "
            f"({record_error.strerror or record_error})."
        ) from error


EXECUTORS = ("local", "ray")


def check_executor(executor: str) -> None:
    if executor not in EXECUTORS:
        raise SuiteError(f"unknown executor {executor!r}: use {' or '.join(map(repr, EXECUTORS))}.")


def resolve_workers(workers: int | None, jobs: int) -> int:
    """``--workers``: as given (at least 1), or by default one per core on a CPU and one on an
    accelerator (:func:`offbench.bench.workers.default_workers`)."""
    from offbench.bench.workers import default_workers

    if workers is not None:
        if workers < 1:
            raise SuiteError(f"--workers must be at least 1, got {workers}.")
        return workers
    if jobs <= 1:
        return 1
    return default_workers(jobs, accelerator=provenance.device()["device_platform"] != "cpu")


def execute(
    planned: Plan,
    out: Path,
    executor: str = "local",
    address: str | None = None,
    progress: Any | None = None,
    log: Callable[[str], None] = print,
    workers: int | None = 1,
    resources: Any | None = None,
    download: bool = False,
    threads_per_worker: int | None = None,
) -> SweepSummary:
    """Run a plan's jobs on ``executor``: local (one after another in this process, or in child processes,
    ``workers`` at once, when there is more than one worker or ``threads_per_worker`` fixes their XLA
    threads; None picks by :func:`resolve_workers`), or ray (one Ray task per job asking for
    ``resources``, a :class:`offbench.bench.ray_executor.Resources`; ``download``: remote Minari ids are
    fetched on the workers)."""
    check_executor(executor)
    placements: dict[str, dict[str, Any]] = {}
    if executor == "local":
        workers = resolve_workers(workers, len(planned.todo))
        if planned.todo and (threads_per_worker is not None or workers > 1):
            from offbench.bench.workers import run_parallel

            finished, failed = run_parallel(planned.todo, out, workers, progress, log, threads_per_worker)
        else:
            finished, failed = run_local(planned.todo, out, progress, log)
    elif planned.todo:
        from offbench.bench.ray_executor import Resources, run_ray

        finished, failed, placements = run_ray(
            planned.todo, out, address, resources or Resources(), download, log
        )
    else:
        finished, failed = [], {}
    total = len(planned.todo) + len(planned.done)
    return SweepSummary(total, len(planned.done), finished, failed, placements)


def sweep(
    suite: Suite,
    out: Path,
    executor: str = "local",
    address: str | None = None,
    progress: Any | None = None,
    download: bool = False,
    on_code_change: str = "refuse",
    log: Callable[[str], None] = print,
    workers: int | None = 1,
    resources: Any | None = None,
    threads_per_worker: int | None = None,
) -> SweepSummary:
    planned = plan(suite, out, download, on_code_change)
    for message in planned.messages:
        log(message)
    return execute(
        planned, out, executor, address, progress, log, workers, resources, download, threads_per_worker
    )
