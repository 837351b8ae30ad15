"""The Ray executor: one Ray task per job, on a cluster whose nodes share no disk.

The driver owns the output directory; nothing else writes under it.
- **Datasets travel to the task.** The driver packs each dataset's folder (a Minari dataset, generated or
  downloaded, with offbench's quality and fingerprint files; an OGBench npz file) once into Ray's object
  store; a task unpacks it into a temporary ``MINARI_DATASETS_PATH`` (``OGBENCH_DATA_DIR``) of its own, or,
  for a remote Minari id swept with ``--download``, downloads it there. Before training, the task checks
  the dataset's content fingerprint against the driver's: a different dataset under the same name fails
  that job with one line.
- **Results travel back.** A task returns its tables, its saved policy (packed) and its log lines; a job
  that raises returns its error. The driver writes them as the local executor does (rows, ``runs`` last).
- **Checkpoints travel as they are written.** After each chunk the task sends its checkpoint (packed) to
  a :class:`CheckpointStore` actor on the driver's node, and the driver copies it under
  ``checkpoints/<job>/``. When a node dies, Ray reruns its tasks elsewhere (``max_retries``); the rerun asks
  the store for the job's last checkpoint and resumes from it, so the rows equal an uninterrupted run's.
- **Resources.** ``--cpus-per-job`` and ``--gpus-per-job`` (fractions allowed) are the task's request. A
  task that asked for a GPU and finds JAX without one fails at once, naming ``offbench[cuda12]``; the rows
  record the device JAX actually used. XLA's CPU threads are set to the CPUs asked for, and a GPU share
  caps JAX's GPU memory to that fraction so several jobs fit on one device.
- **Algorithms travel with the job**: a built-in by its name, a plug-in as its ``AlgorithmSource`` (a
  file plug-in's source text, a module's name and digest), loaded on the worker; the worker never reads
  the driver's plug-in path.

Everything a task writes on its node lives in one temporary folder, removed when the task ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import tarfile
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from offbench.bench import results
from offbench.bench.suite import SuiteError
from offbench.bench.sweep import JobFailed, PlannedJob, record_or_stop
from offbench.bench.workers import thread_environment

# How often a task that died with its node (or its worker process) is started again elsewhere.
MAX_RETRIES = 3
# Seconds between the driver's looks at the checkpoint store while tasks run.
POLL_SECONDS = 1.0
# JAX preallocates this fraction of a GPU's memory by default; a job given a share of a GPU gets that
# share of it.
JAX_GPU_MEMORY_FRACTION = 0.75
CUDA_HINT = (
    "install offbench[cuda12] on the worker nodes (pip install 'offbench[cuda12]'), or sweep without "
    "--gpus-per-job"
)


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one job asks Ray for."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus <= 0:
            raise SuiteError(f"--cpus-per-job must be positive, got {self.cpus}.")
        if self.gpus < 0:
            raise SuiteError(f"--gpus-per-job must be 0 or more, got {self.gpus}.")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise SuiteError(f"--gpus-per-job above 1 must be a whole number, got {self.gpus}.")

    def task_options(self) -> dict[str, Any]:
        """Ray's options for a task of this size: the request, retries on a lost node, and the
        environment that sizes XLA's threads (and JAX's share of a GPU) to it."""
        environment = thread_environment(max(1, int(self.cpus)), {})
        if self.gpus > 0:  # the node's own XLA_FLAGS (GPU settings) stay; the CPU thread flags do not matter
            del environment["XLA_FLAGS"]
        if 0 < self.gpus < 1:
            environment["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{JAX_GPU_MEMORY_FRACTION * self.gpus:.3f}"
        return {
            "num_cpus": self.cpus,
            "num_gpus": self.gpus,
            "max_retries": MAX_RETRIES,
            "retry_exceptions": False,  # a job that raises is recorded; only a lost node or worker retries
            "runtime_env": {"env_vars": environment},
        }


def pack(path: Path) -> bytes:
    """A file or folder as tar bytes (names relative to its parent)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.add(path, arcname=path.name)
    return buffer.getvalue()


def unpack(data: bytes, parent: Path) -> None:
    parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(parent, filter="data")


def unpack_directory(data: bytes, directory: Path) -> None:
    """Replace ``directory`` with the packed folder ``data``, through a staging folder next to it: a reader
    (or a crash) sees the old folder or the new one, never half of one."""
    staging = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        unpack(data, staging)
        (packed,) = staging.iterdir()
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(packed, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class DatasetParcel:
    """How a task gets a dataset: ``kind`` 'minari' or 'ogbench' with the packed folder or file, or
    'download' (a remote Minari id the task fetches itself)."""

    kind: str
    data: bytes = b""


def dataset_parcel(name: str, download: bool) -> DatasetParcel:
    """Pack the dataset ``name`` as the driver has it (after ``plan`` provisioned it)."""
    from offbench.datasets import minari_data, ogbench_data
    from offbench.datasets.sources import dataset_kind

    kind = dataset_kind(name)
    if kind in ("npz", "hdf5"):
        raise SuiteError(
            f"the Ray executor ships Minari and OGBench datasets to its workers, not dataset files ({name}): "
            "sweep it with the local executor, or load it into a Minari dataset first."
        )
    if kind == "ogbench":
        data_name, _ = ogbench_data.resolve_ogbench_name(name)
        return DatasetParcel("ogbench", pack(ogbench_data.ogbench_data_dir() / f"{data_name}.npz"))
    folder = minari_data.minari_datasets_path() / name
    if folder.is_dir():
        return DatasetParcel("minari", pack(folder))
    if download:
        return DatasetParcel("download")
    raise SuiteError(f"dataset {name!r} is not in {folder.parent}; it cannot be sent to the Ray workers.")


@contextlib.contextmanager
def scratch_folder() -> Iterator[Path]:
    """A temporary folder for one task, with the dataset folders pointed into it; the environment is put
    back and the folder removed when the task ends (Ray reuses worker processes)."""
    saved = {name: os.environ.get(name) for name in ("MINARI_DATASETS_PATH", "OGBENCH_DATA_DIR")}
    with tempfile.TemporaryDirectory(prefix="offbench-task-") as folder:
        root = Path(folder)
        os.environ["MINARI_DATASETS_PATH"] = str(root / "minari")
        os.environ["OGBENCH_DATA_DIR"] = str(root / "ogbench")
        try:
            yield root
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def check_device(gpus: float, node: str) -> None:
    """A job that asked for a GPU runs on one, or fails now, before loading anything."""
    import jax

    backend = jax.default_backend()
    if gpus > 0 and backend != "gpu":
        raise JobFailed(
            f"asked for --gpus-per-job {gpus:g} but JAX on node {node} has no GPU (its backend is "
            f"{backend}): {CUDA_HINT}."
        )


def receive_dataset(name: str, parcel: DatasetParcel, root: Path) -> None:
    from offbench.datasets.minari_data import download_minari_dataset

    if parcel.kind == "ogbench":
        unpack(parcel.data, root / "ogbench")
    elif parcel.kind == "minari":
        unpack(parcel.data, (root / "minari" / name).parent)
    else:
        (root / "minari").mkdir(parents=True, exist_ok=True)
        download_minari_dataset(name)


def run_task(planned: PlannedJob, parcel: DatasetParcel, gpus: float, store: Any) -> dict[str, Any]:
    """One job on a Ray worker (see the module's docstring); returns its outcome for the driver."""
    import ray

    from offbench.bench.policy import save_policy
    from offbench.bench.provenance import device
    from offbench.bench.train import run_job
    from offbench.datasets.fingerprint import content_digest
    from offbench.datasets.sources import load_dataset

    job, name = planned.job, planned.identity.name
    node = ray.get_runtime_context().get_node_id()
    lines: list[str] = []
    outcome: dict[str, Any] = {"node": node, "log": lines, "resumed_from": 0}
    try:
        check_device(gpus, node)
        with scratch_folder() as root:
            receive_dataset(job.dataset, parcel, root)
            dataset = load_dataset(job.dataset, env_id=job.env_id)
            digest = content_digest(dataset)
            if digest != planned.identity.dataset_fingerprint:
                raise JobFailed(
                    f"dataset {job.dataset} on node {node} has fingerprint {digest[:12]}, the driver's has "
                    f"{planned.identity.dataset_fingerprint[:12]}: the node holds another dataset under this "
                    "name. Remove it there (or regenerate it from the same seed and versions)."
                )
            checkpoint_dir = root / "checkpoints" / name
            stored = ray.get(store.latest.remote(name))
            if stored is not None:
                unpack_directory(stored[1], checkpoint_dir)
                outcome["resumed_from"] = stored[0]

            def send_checkpoint(directory: Path, step: int) -> None:
                ray.get(store.put.remote(name, step, pack(directory)))

            output = run_job(
                job,
                dataset=dataset,
                checkpoint_dir=checkpoint_dir,
                identity=planned.identity,
                log=lines.append,
                on_checkpoint=send_checkpoint,
            )
            save_policy(root / "policy" / name, output, job)
            outcome.update(
                frames=output.frames, policy=pack(root / "policy" / name), device=device()["device"]
            )
    except JobFailed as error:
        outcome.update(error=error.message, traceback=error.details)
    except Exception as error:
        outcome.update(
            error=f"{type(error).__name__}: {error}", traceback="".join(traceback.format_exception(error))
        )
    return outcome


class CheckpointStore:
    """Holds each job's latest checkpoint (packed) for the driver; runs as an actor on the driver's node."""

    def __init__(self, initial: dict[str, tuple[int, bytes]]) -> None:
        self.latest_by_job = dict(initial)
        self.unseen: set[str] = set()

    def put(self, name: str, step: int, data: bytes) -> None:
        if step > self.latest_by_job.get(name, (0, b""))[0]:
            self.latest_by_job[name] = (step, data)
            self.unseen.add(name)

    def latest(self, name: str) -> tuple[int, bytes] | None:
        return self.latest_by_job.get(name)

    def take_unseen(self) -> dict[str, tuple[int, bytes]]:
        """The checkpoints stored since the last call."""
        taken = {name: self.latest_by_job[name] for name in self.unseen}
        self.unseen.clear()
        return taken


def saved_checkpoints(out: Path, jobs: list[PlannedJob]) -> dict[str, tuple[int, bytes]]:
    """The driver's checkpoints of ``jobs`` (from an interrupted sweep), packed for the store."""
    from offbench.bench import checkpoint

    found = {}
    for planned in jobs:
        directory = out / "checkpoints" / planned.identity.name
        progress = checkpoint.read_progress(directory)
        if progress is not None:
            found[planned.identity.name] = (int(progress["step"]), pack(directory))
    return found


def connect(address: str | None) -> Any:
    try:
        import ray
    except ImportError as error:
        raise SuiteError("the Ray executor needs ray: pip install 'offbench[ray]'.") from error
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    return ray


def run_ray(
    jobs: list[PlannedJob],
    out: Path,
    address: str | None,
    resources: Resources = Resources(),
    download: bool = False,
    log: Callable[[str], None] = print,
    task_options: Callable[[PlannedJob], dict[str, Any]] | None = None,
) -> tuple[list[str], dict[str, str], dict[str, dict[str, Any]]]:
    """One Ray task per job; the driver writes everything. Returns (finished names, failed name ->
    message, name -> where it ran: node id, update it resumed from, device). ``task_options(job)`` adds Ray
    options per job (a scheduling strategy, custom resources)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray = connect(address)
    parcels = {
        dataset: ray.put(dataset_parcel(dataset, download)) for dataset in {p.job.dataset for p in jobs}
    }
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    store = (
        ray.remote(CheckpointStore)
        .options(num_cpus=0, scheduling_strategy=here)
        .remote(saved_checkpoints(out, jobs))
    )
    task = ray.remote(run_task)
    pending = {}
    for planned in jobs:
        options = resources.task_options() | (task_options(planned) if task_options else {})
        ref = task.options(**options).remote(planned, parcels[planned.job.dataset], resources.gpus, store)
        pending[ref] = planned
    finished, failed, placements = [], {}, {}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
            mirror_checkpoints(out, ray.get(store.take_unseen.remote()))
            for ref in done:
                planned = pending.pop(ref)
                name = planned.identity.name
                try:
                    outcome = ray.get(ref)
                except Exception as error:  # a task lost more often than Ray retries it
                    failed[name] = record_or_stop(out, planned, JobFailed(f"{type(error).__name__}: {error}"))
                    continue
                for line in outcome["log"]:
                    log(line)
                placements[name] = {k: outcome.get(k) for k in ("node", "resumed_from", "device")}
                if "error" in outcome:
                    failed[name] = record_or_stop(
                        out, planned, JobFailed(outcome["error"], outcome["traceback"])
                    )
                else:
                    write_outcome(out, planned, outcome)
                    finished.append(name)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.kill(store)
    return finished, failed, placements


def mirror_checkpoints(out: Path, checkpoints: dict[str, tuple[int, bytes]]) -> None:
    for name, (_, data) in checkpoints.items():
        unpack_directory(data, out / "checkpoints" / name)


def write_outcome(out: Path, planned: PlannedJob, outcome: dict[str, Any]) -> None:
    """A finished task's policy and rows under ``out`` (``runs`` last), then its checkpoint is dropped."""
    from offbench.bench import checkpoint
    from offbench.bench.sweep import retrying

    name = planned.identity.name
    retrying(name, out, lambda: unpack_directory(outcome["policy"], out / "policies" / name))
    retrying(name, out, lambda: results.write_job(out, name, outcome["frames"]))
    checkpoint.remove(out / "checkpoints" / name)
    with contextlib.suppress(OSError):
        (out / "checkpoints").rmdir()
    (out / "failures" / f"{name}.json").unlink(missing_ok=True)
