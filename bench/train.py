"""The job runner: one job (algorithm x dataset x setting, all its seeds) trained through the engine
(``engine.py``), evaluated, checkpointed after every chunk, and turned into its results tables.

A job's identity (:func:`identify`) is a digest of everything that determines its rows; its results,
checkpoints and saved policies are named by it, so a changed job never reuses what an older one wrote.
The code that computes the rows is versioned beside it (:func:`job_code_version`): offbench's own code,
and for a plug-in algorithm the digest of the plug-in's source too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pandas as pd

from offbench.algorithms import Algorithm
from offbench.algorithms.config import resolve_config
from offbench.algorithms.registry import REGISTRY, AlgorithmSource, UnknownAlgorithmError, load
from offbench.bench import checkpoint, provenance, results
from offbench.bench.engine import (
    abstract_states,
    evaluate_states,
    init_states,
    log_blocks,
    make_policy,
    make_train_chunk,
    seed_keys,
    shared_arrays,
    training_data,
)
from offbench.datasets.dataset import Dataset, DatasetSpec
from offbench.datasets.evaluate import Episodes, Evaluator
from offbench.datasets.fingerprint import fingerprint
from offbench.datasets.sources import load_dataset

DEFAULT_LOG_EVERY = 100


@dataclasses.dataclass(frozen=True)
class Job:
    """One algorithm x dataset x hyper-parameter setting; its seeds train together, vmapped."""

    algorithm: str
    dataset: str
    seeds: tuple[int, ...]
    steps: int
    eval_every: int
    eval_episodes: int = 10
    hparams: tuple[tuple[str, Any], ...] = ()
    final_k: int = 3
    suite: str = "adhoc"
    env_id: str | None = None
    download: bool = False
    label: str | None = None  # the method's name in the results; None: the algorithm's name
    log_every: int = DEFAULT_LOG_EVERY  # updates per row of the metrics table
    # Where a plug-in algorithm's code comes from (``algorithm`` is its declared name); None: a built-in.
    plugin: AlgorithmSource | None = None

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("a job needs at least one seed.")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}.")
        for name in ("steps", "eval_every", "eval_episodes", "final_k", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.eval_every > self.steps:
            raise ValueError(
                f"eval_every={self.eval_every} is larger than steps={self.steps}: the only evaluation would "
                f"come at the end anyway. Set eval_every to at most {self.steps}."
            )
        if self.final_k > self.evaluations:
            raise ValueError(
                f"final_k={self.final_k} is more than the {self.evaluations} evaluation(s) of "
                f"{self.steps} updates every {self.eval_every}. Set final_k to at most {self.evaluations}."
            )

    @property
    def evaluations(self) -> int:
        return math.ceil(self.steps / self.eval_every)

    @property
    def method(self) -> str:
        return self.label or self.algorithm


@dataclasses.dataclass(frozen=True)
class JobIdentity:
    """What names a job's files: ``job_id`` digests everything that determines its rows."""

    job_id: str
    name: str
    dataset_fingerprint: str
    fields: dict[str, Any] = dataclasses.field(compare=False, hash=False)


def algorithm_of(job: Job) -> Algorithm:
    """The job's algorithm: the built-in of its name, or its plug-in loaded from the carried source."""
    if job.plugin is not None:
        return load(job.plugin)
    if job.algorithm not in REGISTRY:
        raise UnknownAlgorithmError(
            f"unknown built-in algorithm {job.algorithm!r}; a plug-in job carries its source (Job.plugin)."
        )
    return load(AlgorithmSource(kind="builtin", name=job.algorithm, module=REGISTRY[job.algorithm]))


def job_code_version(job: Job) -> str:
    """The version of the code that computes the job's rows: offbench's code version, and for a plug-in
    ``+<name>.<digest[:12]>`` of its source. A sweep compares it with finished rows (``--on-code-change``)
    and a checkpoint must match it to resume, so editing a plug-in is a change of code like any other."""
    version = provenance.code_version()["code_version"]
    return version if job.plugin is None else f"{version}+{job.plugin.name}.{job.plugin.digest[:12]}"


def algorithm_provenance(job: Job) -> dict[str, Any]:
    """The rows' code columns for this job: its code version, the algorithm's origin and source digest."""
    return {
        "code_version": job_code_version(job),
        "algorithm_origin": "builtin" if job.plugin is None else job.plugin.origin,
        "algorithm_digest": None if job.plugin is None else job.plugin.digest,
    }


def resolve(job: Job) -> Any:
    """The job's config: paper defaults, then per-dataset overrides matched on the id, then the job's."""
    algorithm = algorithm_of(job)
    overrides = {"total_steps": job.steps, **dict(job.hparams)}
    return resolve_config(algorithm.Config, job.dataset, algorithm.dataset_overrides, overrides)


def identify(job: Job, dataset_fingerprint: str | None = None, dataset: Dataset | None = None) -> JobIdentity:
    """The job's identity: a digest of the algorithm, label, sampler and resolved hyper-parameters, the
    seeds, the budget (updates, evaluation schedule and episodes, final rule, metrics interval), the
    evaluation environment and the dataset's content fingerprint (which covers the environment and the
    reference scores its metadata names), and the suite and results schema the rows are written for.

    The code version is not part of it: a sweep compares it separately (:func:`job_code_version`, which
    covers a plug-in's source), so that a new commit or an edited plug-in does not silently rerun (or
    silently keep) every job. ``dataset_fingerprint`` defaults to the cached one.
    """
    cfg = resolve(job)
    if dataset_fingerprint is None:
        dataset_fingerprint = fingerprint(job.dataset, env_id=job.env_id, dataset=dataset)
    fields = {
        "schema_version": results.SCHEMA_VERSION,
        "suite": job.suite,
        "algorithm": job.algorithm,
        "label": job.method,
        "hparams": dataclasses.asdict(cfg),  # the sampler is one of them
        "seeds": list(job.seeds),
        "steps": job.steps,
        "eval_every": job.eval_every,
        "eval_episodes": job.eval_episodes,
        "final_k": job.final_k,
        "log_every": job.log_every,
        "dataset": job.dataset,
        "env_override": job.env_id,
        "dataset_fingerprint": dataset_fingerprint,
    }
    job_id = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]
    name = results.job_name(job.method, cfg.sampler, job.dataset, job_id)
    return JobIdentity(job_id, name, dataset_fingerprint, fields)


def state_bytes(job: Job, spec: DatasetSpec) -> int:
    """Bytes of the training state of all the job's seeds: what a checkpoint or a saved policy holds."""
    shapes = abstract_states(algorithm_of(job), resolve(job), spec, len(job.seeds))
    return int(sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(shapes)))


@dataclasses.dataclass
class ChunkReport:
    step: int
    updates_per_second: float  # per seed; every seed advances this many updates per second
    normalized_score: float | None
    return_mean: float
    success_rate: float  # NaN when the environment reports no success


@dataclasses.dataclass
class JobOutput:
    """A finished job: its tables, and what a saved policy needs."""

    identity: JobIdentity
    cfg: Any
    spec: DatasetSpec
    frames: dict[str, pd.DataFrame]  # evals, runs, metrics
    states: Any  # every seed's final state, stacked on axis 0 (``step`` shared)
    observation_mean: np.ndarray
    observation_std: np.ndarray
    diverged_step: np.ndarray

    @property
    def evals(self) -> pd.DataFrame:
        return self.frames["evals"]

    @property
    def runs(self) -> pd.DataFrame:
        return self.frames["runs"]

    @property
    def metrics(self) -> pd.DataFrame:
        return self.frames["metrics"]


def dataset_provenance(dataset: Dataset, dataset_fingerprint: str) -> dict[str, Any]:
    """The dataset's columns of a results row: size, fingerprint, reference scores, stored quality and,
    for a dataset offbench generated, what generated it."""
    from offbench.datasets.generate.storage import read_generation_record
    from offbench.datasets.quality import read_quality

    quality = read_quality(dataset.spec.id) or {}
    if quality.get("transitions") != dataset.size:  # metrics of another version of the dataset
        quality = {}
    generation = read_generation_record(dataset.spec.id)
    return {
        "dataset_fingerprint": dataset_fingerprint,
        "dataset_generation": None if generation is None else json.dumps(generation, sort_keys=True),
        "dataset_transitions": dataset.size,
        "dataset_episodes": dataset.num_episodes,
        "dataset_tq": quality.get("tq"),
        "dataset_saco": quality.get("saco"),
        "ref_min_score": dataset.spec.ref_min_score,
        "ref_max_score": dataset.spec.ref_max_score,
        "ref_source": dataset.spec.ref_source,
    }


@dataclasses.dataclass
class Progress:
    """A job's progress between chunks: what a checkpoint saves beside the states and keys."""

    step: int
    wall_offset: float  # seconds of earlier sessions of this job
    diverged_step: np.ndarray  # per seed: the step after which its parameters were non-finite, or -1
    eval_rows: list[dict[str, Any]]
    metric_steps: list[np.ndarray]
    metric_values: dict[str, list[np.ndarray]]
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    compile_seconds: float = 0.0

    @classmethod
    def fresh(cls, num_seeds: int) -> Progress:
        return cls(0, 0.0, np.full(num_seeds, -1, np.int64), [], [], {})

    def record_chunk(self, length: int, log_every: int, metrics: dict[str, Any], finite: np.ndarray) -> None:
        self.metric_steps.append(self.step + np.asarray(log_blocks(length, min(log_every, length))))
        for name, value in metrics.items():
            self.metric_values.setdefault(name, []).append(np.asarray(value, np.float64))
        self.step += length
        self.diverged_step[(~finite) & (self.diverged_step < 0)] = self.step

    def record_evaluation(self, job: Job, spec: DatasetSpec, episodes: Episodes, wall: float) -> None:
        for i, seed in enumerate(job.seeds):
            ok = self.diverged_step[i] < 0
            return_mean = float(np.mean(episodes.returns[i])) if ok else math.nan
            score = spec.normalized_score(return_mean) if ok else None
            self.eval_rows.append(
                {
                    "seed": int(seed),
                    "step": self.step,
                    "return_mean": return_mean,
                    "return_std": float(np.std(episodes.returns[i])) if ok else math.nan,
                    "episodes": job.eval_episodes,
                    "normalized_score": None if score is None else float(score),
                    # NaN for a diverged seed (never stepped) and where the environment reports no success
                    "success_rate": float(np.mean(episodes.successes[i])),
                    "wall_time_s": wall,
                    "status": "ok" if ok else "diverged",
                }
            )

    def metric_series(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return np.concatenate(self.metric_steps), {
            name: np.concatenate(values) for name, values in self.metric_values.items()
        }


def chunk_report(progress: Progress, spec: DatasetSpec, episodes: Episodes) -> ChunkReport:
    ok = progress.diverged_step < 0
    mean_return = float(np.mean(episodes.returns[ok])) if ok.any() else math.nan
    score = spec.normalized_score(mean_return)
    return ChunkReport(
        progress.step,
        progress.step / max(progress.train_seconds, 1e-9),
        None if score is None or not ok.any() else float(score),
        mean_return,
        float(np.mean(episodes.successes[ok])) if ok.any() else math.nan,
    )


def save_checkpoint(
    checkpoint_dir: Path,
    checkpoint_key: str,
    job: Job,
    identity: JobIdentity,
    cfg: Any,
    states: Any,
    keys: jax.Array,
    progress: Progress,
    wall: float,
) -> None:
    record = {
        "job": identity.name,
        "keys": {"suite": job.suite, "label": job.method, "sampler": cfg.sampler, "dataset": job.dataset},
        "step": progress.step,
        "wall_time_s": wall,
        "diverged_step": progress.diverged_step.tolist(),
        "eval_rows": progress.eval_rows,
        "train_seconds": progress.train_seconds,
        "eval_seconds": progress.eval_seconds,
    }
    metric_steps, metric_values = progress.metric_series()
    arrays = {"metric_steps": metric_steps} | {
        f"metric/{name}": value for name, value in metric_values.items()
    }
    tree = {"states": states, "keys": jax.random.key_data(keys)}
    checkpoint.save(checkpoint_dir, progress.step, tree, record, checkpoint_key, arrays)


def restore_checkpoint(
    checkpoint_dir: Path, checkpoint_key: str, states: Any, keys: jax.Array, log: Callable[[str], None]
) -> tuple[Any, jax.Array, Progress] | None:
    restored = checkpoint.load(
        checkpoint_dir, {"states": states, "keys": jax.random.key_data(keys)}, checkpoint_key, log
    )
    if restored is None:
        return None
    tree, record, arrays = restored
    progress = Progress(
        step=record["step"],
        wall_offset=record["wall_time_s"],
        diverged_step=np.asarray(record["diverged_step"], np.int64),
        eval_rows=record["eval_rows"],
        metric_steps=[],
        metric_values={},
        train_seconds=record["train_seconds"],
        eval_seconds=record["eval_seconds"],
    )
    if "metric_steps" in arrays:
        progress.metric_steps = [arrays.pop("metric_steps")]
        progress.metric_values = {name.removeprefix("metric/"): [value] for name, value in arrays.items()}
    return tree["states"], jax.random.wrap_key_data(tree["keys"]), progress


def job_output(
    job: Job, identity: JobIdentity, cfg: Any, dataset: Dataset, states: Any, progress: Progress
) -> JobOutput:
    keys_row = {
        "suite": job.suite,
        "job": identity.name,
        "job_id": identity.job_id,
        "dataset": dataset.spec.id,
        "env": dataset.spec.env_id or "",
        "algorithm": job.algorithm,
        "label": job.method,
        "sampler": cfg.sampler,
        "hparams": results.hparams_json(cfg),
        "hparams_hash": results.hparams_hash(cfg),
    }
    row_provenance = {
        **provenance.provenance(),
        **algorithm_provenance(job),
        **dataset_provenance(dataset, identity.dataset_fingerprint),
    }
    evals = results.evals_frame(keys_row, progress.eval_rows, row_provenance)
    runs = results.runs_frame(
        keys_row,
        evals,
        spec=dataset.spec,
        provenance=row_provenance,
        steps=job.steps,
        eval_every=job.eval_every,
        eval_episodes=job.eval_episodes,
        final_k=job.final_k,
        train_seconds=progress.train_seconds,
        compile_seconds=progress.compile_seconds,
        eval_seconds=progress.eval_seconds,
        diverged_step=progress.diverged_step,
    )
    metric_steps, metric_values = progress.metric_series()
    metrics_table = results.metrics_frame(keys_row, job.seeds, metric_steps, metric_values, row_provenance)
    return JobOutput(
        identity=identity,
        cfg=cfg,
        spec=dataset.spec,
        frames={"evals": evals, "runs": runs, "metrics": metrics_table},
        states=states,
        observation_mean=np.asarray(dataset.observation_mean),
        observation_std=np.asarray(dataset.observation_std),
        diverged_step=progress.diverged_step,
    )


def run_job(
    job: Job,
    dataset: Dataset | None = None,
    on_chunk: Callable[[ChunkReport], None] | None = None,
    checkpoint_dir: Path | None = None,
    identity: JobIdentity | None = None,
    log: Callable[[str], None] = print,
    on_checkpoint: Callable[[Path, int], None] | None = None,
) -> JobOutput:
    """Train and evaluate every seed of ``job``; return its tables and final states.

    With ``checkpoint_dir`` the job saves its state after every chunk and, when started again, resumes
    from the last saved chunk, but only a checkpoint of the same identity and code version: the rows are
    then identical to an uninterrupted run's. Any other checkpoint is discarded with a line to ``log``.
    ``on_checkpoint(checkpoint_dir, step)`` is called after each checkpoint is complete (the Ray executor
    sends it to the driver).
    """
    algorithm = algorithm_of(job)
    if dataset is None:
        dataset = load_dataset(job.dataset, env_id=job.env_id, download=job.download)
    identity = identity or identify(job, dataset=dataset)
    cfg = resolve(job)
    data = training_data(algorithm, dataset, cfg)
    evaluator = Evaluator(dataset.spec, job.seeds, job.eval_episodes)
    init_keys, keys = seed_keys(job.seeds)
    states = init_states(algorithm, data, cfg, init_keys)
    policy = make_policy(algorithm, cfg, dataset.observation_mean, dataset.observation_std)
    shared = shared_arrays(algorithm, data, cfg)
    progress = Progress.fresh(len(job.seeds))
    # The checkpoint belongs to this identity and this code: anything else could resume other data or
    # other computations into these rows.
    checkpoint_key = f"{identity.job_id}@{job_code_version(job)}"
    if checkpoint_dir is not None:
        restored = restore_checkpoint(checkpoint_dir, checkpoint_key, states, keys, log)
        if restored is not None:
            states, keys, progress = restored
            log(f"{identity.name}: resuming from its checkpoint at update {progress.step:,}")
    started = time.perf_counter() - progress.wall_offset
    chunk_fns: dict[int, Callable] = {}

    while progress.step < job.steps:
        length = min(job.eval_every, job.steps - progress.step)
        if length not in chunk_fns:
            tic = time.perf_counter()
            chunk_fns[length] = (
                make_train_chunk(algorithm, cfg, length, job.log_every)
                .lower(states, keys, data, shared)
                .compile()
            )
            progress.compile_seconds += time.perf_counter() - tic
        tic = time.perf_counter()
        states, keys, metrics, finite = chunk_fns[length](states, keys, data, shared)
        finite = np.asarray(finite)
        progress.train_seconds += time.perf_counter() - tic
        progress.record_chunk(length, job.log_every, metrics, finite)

        tic = time.perf_counter()
        episodes = evaluate_states(
            evaluator, policy, states, job.seeds, progress.step, active=progress.diverged_step < 0
        )
        progress.eval_seconds += time.perf_counter() - tic
        wall = time.perf_counter() - started
        progress.record_evaluation(job, dataset.spec, episodes, wall)
        if on_chunk is not None:
            on_chunk(chunk_report(progress, dataset.spec, episodes))
        if checkpoint_dir is not None and progress.step < job.steps:
            save_checkpoint(checkpoint_dir, checkpoint_key, job, identity, cfg, states, keys, progress, wall)
            if on_checkpoint is not None:
                on_checkpoint(checkpoint_dir, progress.step)
    evaluator.close()
    return job_output(job, identity, cfg, dataset, states, progress)
