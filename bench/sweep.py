"""Run a suite: expand it into jobs, run them locally or on Ray, resume, record failures.

A job's rows are written atomically when it finishes (``runs/<job>.parquet`` last, marking it done),
so a rerun skips finished jobs and resumes an unfinished one from its last checkpoint
(``checkpoints/<job>/``). A job that raises is recorded in ``failures/<job>.json`` with its error and
the sweep goes on; a rerun tries it again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from offbench.bench import results
from offbench.bench.suite import Suite, SuiteError, expand_datasets
from offbench.bench.train import ChunkReport, Job, job_name, run_job
from offbench.datasets.dataset import Dataset, DatasetError, suggest
from offbench.datasets.sources import OGBENCH_NAME, import_ogbench, ogbench_data_dir, resolve_ogbench_name


@dataclasses.dataclass
class SweepSummary:
    total: int
    skipped: int
    finished: list[str]
    failed: dict[str, str]


def available_dataset_ids() -> list[str]:
    """Local Minari ids plus the ids offbench can generate on demand."""
    import minari

    ids = set(minari.list_local_datasets())
    try:
        from offbench.datasets.generate import catalog
    except ImportError:
        return sorted(ids)
    return sorted(ids | set(catalog.generatable_ids()))


def ensure_datasets(dataset_ids: list[str], available: list[str], download: bool = False) -> None:
    """Make sure every dataset can be loaded before any training starts, by kind:

    - a D4RL HDF5 or OGBench npz path: the file exists. An npz file is named after the OGBench
      singletask dataset it holds (``cube-single-play-singletask-task1-v0.npz``): a suite gives no
      evaluation environment, and that name says which task relabels and evaluates it;
    - an OGBench dataset name (``cube-single-play-singletask-task1-v0``): its file is in the OGBench data
      folder, or with ``download`` is fetched by ``ogbench.download_datasets``;
    - a local Minari id: nothing to do; an id offbench can generate (``offbench/hopper/...``,
      ``offbench/ogbench/...``): generated now;
    - any other id: with ``download``, fetched from the Minari server (``mujoco/hopper/medium-v0``).
    """
    import minari

    local = set(minari.list_local_datasets())
    for dataset_id in dataset_ids:
        if Path(dataset_id).suffix in results.DATASET_FILE_SUFFIXES:
            check_dataset_file(dataset_id)
        elif OGBENCH_NAME.match(dataset_id):
            ensure_ogbench(dataset_id, available, download)
        elif dataset_id in local:
            continue
        elif dataset_id in available:
            from offbench.datasets.generate import catalog

            catalog.generate(dataset_id)
        elif download:
            download_minari(dataset_id)
        else:
            raise SuiteError(
                f"unknown dataset {dataset_id!r}: not a local Minari dataset, not one offbench can generate, "
                "not an OGBench dataset name and not a dataset file. If it is a remote Minari id, rerun with "
                f"--download (needs internet).{suggest(dataset_id, available)}"
            )


def check_dataset_file(dataset_id: str) -> None:
    """A D4RL HDF5 or OGBench npz path exists, and an npz file's name says its task."""
    path = Path(dataset_id).expanduser()
    if not path.is_file():
        raise SuiteError(
            f"dataset file {dataset_id} does not exist (relative paths are resolved from {Path.cwd()})."
        )
    if path.suffix != ".npz":
        return
    try:
        resolve_ogbench_name(path.name.removesuffix(".npz").removesuffix("-val"))
    except DatasetError as error:
        raise SuiteError(
            f"{dataset_id}: a suite's npz file must be named after the OGBench singletask dataset it holds "
            "(e.g. cube-single-play-singletask-task1-v0.npz), which names the task that relabels and "
            f"evaluates it. Rename the file. ({error})"
        ) from error


def ensure_ogbench(name: str, available: list[str], download: bool) -> None:
    """An OGBench dataset name's file is in the OGBench data folder, downloaded there if asked."""
    try:
        data_name, _ = resolve_ogbench_name(name)
    except DatasetError as error:
        raise SuiteError(str(error)) from error
    folder = ogbench_data_dir()
    if (folder / f"{data_name}.npz").exists():
        return
    generated = f"offbench/ogbench/{name}"
    hint = (
        f" Or use {generated!r}, the play data offbench generates locally." if generated in available else ""
    )
    if not download:
        raise SuiteError(
            f"OGBench dataset {name!r} needs the file {folder / data_name}.npz, which is missing: rerun with "
            "--download (needs internet) to fetch it with ogbench.download_datasets, or copy it there (the "
            f"folder is $OGBENCH_DATA_DIR, default ~/.ogbench/data).{hint}"
        )
    ogbench = import_ogbench()
    try:
        ogbench.download_datasets([data_name], dataset_dir=str(folder))
    except OSError as error:  # urllib's URLError and HTTPError are OSErrors
        raise SuiteError(
            f"downloading OGBench dataset {data_name!r} failed ({error}). It needs internet access to "
            f"{ogbench.utils.DATASET_URL}; offline, copy {data_name}.npz into {folder} by hand.{hint}"
        ) from error


def download_minari(dataset_id: str) -> None:
    import minari

    try:
        minari.download_dataset(dataset_id)
    except Exception as error:  # network, unknown remote id, interrupted transfer: one message for all
        raise SuiteError(
            f"downloading Minari dataset {dataset_id!r} failed ({type(error).__name__}: {error}). It needs "
            "internet access and an id listed by `minari list remote`."
        ) from error


def run_and_write(
    job: Job, out: Path, dataset: Dataset | None = None, on_chunk: Callable[[ChunkReport], None] | None = None
) -> str:
    """Run one job with checkpoints under ``out`` and write its rows. Returns the job name."""
    name = job_name(job)
    checkpoint_dir = out / "checkpoints" / name
    evals, runs = run_job(job, dataset=dataset, on_chunk=on_chunk, checkpoint_dir=checkpoint_dir)
    results.write_job(out, name, evals, runs)
    from offbench.bench import checkpoint

    checkpoint.remove(checkpoint_dir)
    (out / "failures" / f"{name}.json").unlink(missing_ok=True)
    return name


def record_failure(out: Path, name: str, job: Job, error: BaseException) -> str:
    message = f"{type(error).__name__}: {error}"
    path = out / "failures" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(
        json.dumps(
            {
                "job": dataclasses.asdict(job),
                "error": message,
                "traceback": "".join(traceback.format_exception(error)),
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            indent=2,
            default=str,
        )
    )
    os.replace(temporary, path)
    return message


def plan(suite: Suite, out: Path, download: bool = False) -> tuple[list[Job], list[Job]]:
    """Validate everything and return (jobs to run, jobs already finished), before training starts.

    ``download`` fetches the suite's remote Minari ids that are not local (the ``minari-mujoco`` suite).
    """
    results.check_output_dir(out)
    available = available_dataset_ids()
    dataset_ids = expand_datasets(suite.datasets, lambda: available)
    ensure_datasets(dataset_ids, available, download)
    jobs = suite.jobs(dataset_ids)
    check_distinct_names(jobs)
    finished = [job for job in jobs if (out / "runs" / f"{job_name(job)}.parquet").exists()]
    return [job for job in jobs if job not in finished], finished


def check_distinct_names(jobs: list[Job]) -> None:
    """Refuse two jobs with one name: they would write one file, and the second would be skipped as done."""
    seen: dict[str, Job] = {}
    for job in jobs:
        name = job_name(job)
        other = seen.setdefault(name, job)
        if other is job:
            continue
        if other.dataset != job.dataset:
            raise SuiteError(
                f"datasets {other.dataset!r} and {job.dataset!r} give the same job name {name!r}: dataset "
                "files are named by their file name alone. Rename one of the files."
            )
        raise SuiteError(
            f"two [[algorithms]] entries ask for the same job {name!r} ({job.algorithm} with the same "
            f"sampler and resolved hyper-parameters, labels {other.label or other.algorithm!r} and "
            f"{job.label or job.algorithm!r}). Remove one, or change its hyper-parameters."
        )


def run_local(jobs: list[Job], out: Path, progress: Any | None = None) -> tuple[list[str], dict[str, str]]:
    from offbench.datasets.sources import load_dataset

    finished, failed = [], {}
    cache: dict[str, Dataset] = {}
    jobs_task = updates_task = None
    if progress is not None:
        jobs_task = progress.add_task("jobs", total=len(jobs), detail="")
        updates_task = progress.add_task("updates", total=1, detail="")
    for job in jobs:
        name = job_name(job)
        if progress is not None:
            progress.update(updates_task, total=job.steps, completed=0, description=name[:48], detail="")

        def report(chunk: ChunkReport) -> None:
            if progress is not None:
                score = (
                    f"score {chunk.normalized_score:.1f}"
                    if chunk.normalized_score is not None
                    else f"return {chunk.return_mean:.1f}"
                )
                if not math.isnan(chunk.success_rate):
                    score += f", success {chunk.success_rate:.0%}"
                progress.update(
                    updates_task,
                    completed=chunk.step,
                    detail=f"{chunk.updates_per_second:,.0f} upd/s/seed, {score}",
                )

        try:
            if job.dataset not in cache:
                cache.clear()  # jobs are grouped by dataset: keep one dataset in memory at a time
                cache[job.dataset] = load_dataset(job.dataset)
            finished.append(run_and_write(job, out, dataset=cache[job.dataset], on_chunk=report))
        except Exception as error:  # a failed job is recorded and the sweep goes on
            failed[name] = record_failure(out, name, job, error)
        if progress is not None:
            progress.advance(jobs_task)
    return finished, failed


def run_ray(jobs: list[Job], out: Path, address: str | None) -> tuple[list[str], dict[str, str]]:
    """One Ray task per job; every task writes its own rows to the shared output path."""
    try:
        import ray
    except ImportError as error:
        raise SuiteError("the Ray executor needs ray: pip install 'offbench[ray]'.") from error
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    remote = ray.remote(num_cpus=1)(_ray_task)
    pending = {remote.remote(job, str(out.absolute())): job for job in jobs}
    finished, failed = [], {}
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(done[0])
        name = job_name(job)
        try:
            finished.append(ray.get(done[0]))
        except Exception as error:
            failed[name] = record_failure(out, name, job, error)
    return finished, failed


def _ray_task(job: Job, out: str) -> str:
    return run_and_write(job, Path(out))


def sweep(
    suite: Suite,
    out: Path,
    executor: str = "local",
    address: str | None = None,
    progress: Any | None = None,
    download: bool = False,
) -> SweepSummary:
    todo, done = plan(suite, out, download)
    if executor == "local":
        finished, failed = run_local(todo, out, progress)
    elif executor == "ray":
        finished, failed = run_ray(todo, out, address)
    else:
        raise SuiteError(f"unknown executor {executor!r}: use 'local' or 'ray'.")
    return SweepSummary(total=len(todo) + len(done), skipped=len(done), finished=finished, failed=failed)
