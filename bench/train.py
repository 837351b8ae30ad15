"""The training engine: jitted ``lax.scan`` chunks of updates, vmapped over seeds, and the job runner.

The dataset lives on the device once and is shared by every seed (it is a closed-over argument, not a
vmapped one). Each seed owns its parameters, optimiser states and PRNG key; the update counter
``state.step`` is shared and kept unbatched, so algorithms can branch on it (TD3's delayed actor)
with a real ``lax.cond`` instead of computing both branches. Seed ``i`` of a vmapped run therefore
follows exactly the computation of a single run with seed ``i``.

A job's identity (:func:`identify`) is a digest of everything that determines its rows; its results,
checkpoints and saved policies are named by it, so a changed job never reuses what an older one wrote.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from offbench.algorithms import Algorithm, get_algorithm, sampling
from offbench.algorithms.config import resolve_config
from offbench.bench import checkpoint, provenance, results
from offbench.bench.evaluate import Episodes, Evaluator
from offbench.datasets.dataset import Dataset, DatasetSpec
from offbench.datasets.fingerprint import fingerprint
from offbench.datasets.sources import load_dataset

DEFAULT_LOG_EVERY = 100


def seed_keys(seeds: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """(init keys, training keys), one per seed, each derived from the seed value alone."""
    keys = jnp.stack([jax.random.split(jax.random.key(int(seed))) for seed in seeds])
    return keys[:, 0], keys[:, 1]


def state_axes(states: Any) -> Any:
    """vmap axes for a batch of states: every leaf on axis 0 except the shared ``step``."""
    return jax.tree.map(lambda _: 0, states).replace(step=None)


def init_states(algorithm: Algorithm, data: sampling.TrainingData, cfg: Any, init_keys: jax.Array) -> Any:
    # One seed after another (lax.map), not vmapped: a vmapped orthogonal initialisation (IQL's) batches
    # its LAPACK QR calls, and jax 0.10's CPU runtime deadlocks on such a call with a batch of 3 seeds in
    # most runs (tests/test_engine.py). Each seed's state is the same either way: the single-seed init.
    states = jax.jit(lambda keys: jax.lax.map(lambda key: algorithm.init(key, data.dataset, cfg), keys))(
        init_keys
    )
    return states.replace(step=states.step[0])


def all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def log_blocks(num_updates: int, log_every: int) -> list[int]:
    """Updates done at the end of each logged block of a chunk: every ``log_every``, and the chunk's end."""
    return [min(end, num_updates) for end in range(log_every, num_updates + log_every, log_every)]


def make_train_chunk(
    algorithm: Algorithm, cfg: Any, num_updates: int, log_every: int | None = None
) -> Callable:
    """A jitted function running ``num_updates`` updates of every seed in one ``lax.scan``.

    Returns ``(states, keys, metrics, finite)``: ``metrics[name]`` is [blocks, seeds], the NaN-aware mean
    over each block of ``log_every`` updates (default: the whole chunk, one block; see
    :func:`log_blocks`), NaN-aware because delayed updates report NaN on the steps they skip.
    ``finite[s]`` says whether seed ``s``'s parameters are still finite. Nothing leaves the device
    inside the chunk.
    """
    block = num_updates if log_every is None else min(log_every, num_updates)
    blocks = len(log_blocks(num_updates, block))

    def chunk(states: Any, keys: jax.Array, data: sampling.TrainingData, shared: Any):
        axes = state_axes(states)
        extra = {} if shared is None else {"shared": shared}

        def one_update(state: Any, key: jax.Array):
            key, sample_key, update_key = jax.random.split(key, 3)
            batch = sampling.draw(data, sample_key, cfg)  # transitions, or H-step chunks (DQC)
            state, metrics = algorithm.update(state, batch, update_key, cfg, **extra)
            return state, key, metrics

        vmapped_update = jax.vmap(one_update, in_axes=(axes, 0), out_axes=(axes, 0, 0))

        def body(carry, _):
            states, keys = carry
            states, keys, metrics = vmapped_update(*carry)
            return (states, keys), metrics

        (states, keys), metrics = jax.lax.scan(body, (states, keys), None, length=num_updates)

        def block_means(series: jax.Array) -> jax.Array:  # [updates, seeds] -> [blocks, seeds]
            padded = jnp.pad(series, ((0, blocks * block - num_updates), (0, 0)), constant_values=jnp.nan)
            return jnp.nanmean(padded.reshape(blocks, block, -1), axis=1)

        metrics = jax.tree.map(block_means, metrics)
        finite = jax.vmap(all_finite, in_axes=(axes,))(states)
        return states, keys, metrics, finite

    return jax.jit(chunk, donate_argnums=(0, 1))


def shared_arrays(algorithm: Algorithm, data: sampling.TrainingData, cfg: Any) -> Any:
    """The algorithm's dataset-derived arrays shared by all seeds, or None."""
    return None if algorithm.shared_arrays is None else algorithm.shared_arrays(data, cfg)


def make_policy(
    algorithm: Algorithm, cfg: Any, observation_mean: np.ndarray, observation_std: np.ndarray
) -> Callable:
    """A jitted ``(states, observations[S, E, obs], keys[S]) -> actions`` for evaluation.

    Observation standardisation uses the training dataset's statistics, carried with the policy. The
    keys reach only algorithms whose evaluation samples (``ACT_NEEDS_KEY``, e.g. best-of-N).
    """
    mean, std = jnp.asarray(observation_mean), jnp.asarray(observation_std)

    def act(state: Any, observations: jax.Array, key: jax.Array) -> jax.Array:
        if algorithm.act_needs_key:
            return algorithm.act(state, observations, cfg, key)
        return algorithm.act(state, observations, cfg)

    def policy(states: Any, observations: jax.Array, keys: jax.Array) -> jax.Array:
        if cfg.normalize_observations:
            observations = (observations - mean) / std
        return jax.vmap(act, in_axes=(state_axes(states), 0, 0))(states, observations, keys)

    return jax.jit(policy)


def evaluation_keys(seeds: Sequence[int]) -> jax.Array:
    """Per-seed keys for sampling policies at evaluation, independent of the training keys."""
    return jnp.stack([jax.random.fold_in(jax.random.key(int(seed)), 0xE7A1) for seed in seeds])


def evaluate_states(
    evaluator: Evaluator,
    policy: Callable,
    states: Any,
    seeds: Sequence[int],
    step: int,
    active: np.ndarray | None = None,
) -> Episodes:
    """The evaluation of ``states`` after ``step`` updates: what the job records, and what
    ``offbench evaluate`` reproduces from a saved policy (same seeds, step and episodes: same returns)."""
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    round_keys = fold(evaluation_keys(seeds), step)
    return evaluator.run(
        lambda observations, call: policy(states, observations, fold(round_keys, call)), active
    )


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


def resolve(job: Job) -> Any:
    """The job's config: paper defaults, then per-dataset overrides matched on the id, then the job's."""
    algorithm = get_algorithm(job.algorithm)
    overrides = {"total_steps": job.steps, **dict(job.hparams)}
    return resolve_config(algorithm.Config, job.dataset, algorithm.dataset_overrides, overrides)


def identify(job: Job, dataset_fingerprint: str | None = None, dataset: Dataset | None = None) -> JobIdentity:
    """The job's identity: a digest of the algorithm, label, sampler and resolved hyper-parameters, the
    seeds, the budget (updates, evaluation schedule and episodes, final rule, metrics interval), the
    evaluation environment and the dataset's content fingerprint (which covers the environment and the
    reference scores its metadata names), and the suite and results schema the rows are written for.

    The code version is not part of it: a sweep compares it separately, so that a new commit does not
    silently rerun (or silently keep) every job. ``dataset_fingerprint`` defaults to the cached one.
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


def abstract_states(algorithm: Algorithm, cfg: Any, spec: DatasetSpec, num_seeds: int) -> Any:
    """The shapes and dtypes of :func:`init_states`' result, without computing it or loading the dataset:
    ``init`` reads only the dataset's spec."""
    dataset = types.SimpleNamespace(spec=spec)
    keys = jax.random.split(jax.random.key(0), num_seeds)
    shapes = jax.eval_shape(jax.vmap(lambda key: algorithm.init(key, dataset, cfg)), keys)
    return shapes.replace(step=jax.ShapeDtypeStruct((), shapes.step.dtype))


def state_bytes(job: Job, spec: DatasetSpec) -> int:
    """Bytes of the training state of all the job's seeds: what a checkpoint or a saved policy holds."""
    shapes = abstract_states(get_algorithm(job.algorithm), resolve(job), spec, len(job.seeds))
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
    """The dataset's columns of a results row: size, fingerprint, reference scores and stored quality."""
    from offbench.datasets.generate.catalog import read_quality

    quality = read_quality(dataset.spec.id) or {}
    if quality.get("transitions") != dataset.size:  # metrics of another version of the dataset
        quality = {}
    return {
        "dataset_fingerprint": dataset_fingerprint,
        "dataset_transitions": dataset.size,
        "dataset_episodes": dataset.num_episodes,
        "dataset_tq": quality.get("tq"),
        "dataset_saco": quality.get("saco"),
        "ref_min_score": dataset.spec.ref_min_score,
        "ref_max_score": dataset.spec.ref_max_score,
        "ref_source": dataset.spec.ref_source,
    }


def run_job(
    job: Job,
    dataset: Dataset | None = None,
    on_chunk: Callable[[ChunkReport], None] | None = None,
    checkpoint_dir: Path | None = None,
    identity: JobIdentity | None = None,
    log: Callable[[str], None] = print,
) -> JobOutput:
    """Train and evaluate every seed of ``job``; return its tables and final states.

    With ``checkpoint_dir`` the job saves its state after every chunk and, when started again, resumes
    from the last saved chunk, but only a checkpoint of the same identity and code version: the rows are
    then identical to an uninterrupted run's. Any other checkpoint is discarded with a line to ``log``.
    """
    algorithm = get_algorithm(job.algorithm)
    dataset = (
        dataset
        if dataset is not None
        else load_dataset(job.dataset, env_id=job.env_id, download=job.download)
    )
    identity = identity or identify(job, dataset=dataset)
    cfg = resolve(job)
    data = sampling.prepare(dataset, cfg)
    evaluator = Evaluator(dataset.spec, job.seeds, job.eval_episodes)
    init_keys, keys = seed_keys(job.seeds)
    states = init_states(algorithm, data, cfg, init_keys)
    policy = make_policy(algorithm, cfg, dataset.observation_mean, dataset.observation_std)
    shared = shared_arrays(algorithm, data, cfg)
    chunk_fns: dict[int, Callable] = {}
    num_seeds = len(job.seeds)
    diverged_step = np.full(num_seeds, -1, np.int64)
    eval_rows: list[dict[str, Any]] = []
    metric_steps: list[np.ndarray] = []
    metric_values: dict[str, list[np.ndarray]] = {}
    train_seconds = eval_seconds = compile_seconds = 0.0
    step, wall_offset = 0, 0.0
    code_version = provenance.code_version()["code_version"]
    # The checkpoint belongs to this identity and this code: anything else could resume other data or
    # other computations into these rows.
    checkpoint_key = f"{identity.job_id}@{code_version}"
    if checkpoint_dir is not None:
        restored = checkpoint.load(
            checkpoint_dir, {"states": states, "keys": jax.random.key_data(keys)}, checkpoint_key, log
        )
        if restored is not None:
            tree, progress, arrays = restored
            states, keys = tree["states"], jax.random.wrap_key_data(tree["keys"])
            step, wall_offset = progress["step"], progress["wall_time_s"]
            diverged_step = np.asarray(progress["diverged_step"], np.int64)
            eval_rows = progress["eval_rows"]
            train_seconds, eval_seconds = progress["train_seconds"], progress["eval_seconds"]
            if "metric_steps" in arrays:
                metric_steps = [arrays.pop("metric_steps")]
                metric_values = {name.removeprefix("metric/"): [value] for name, value in arrays.items()}
    started = time.perf_counter() - wall_offset

    while step < job.steps:
        length = min(job.eval_every, job.steps - step)
        if length not in chunk_fns:
            tic = time.perf_counter()
            chunk_fns[length] = (
                make_train_chunk(algorithm, cfg, length, job.log_every)
                .lower(states, keys, data, shared)
                .compile()
            )
            compile_seconds += time.perf_counter() - tic
        tic = time.perf_counter()
        states, keys, metrics, finite = chunk_fns[length](states, keys, data, shared)
        finite = np.asarray(finite)
        train_seconds += time.perf_counter() - tic
        metric_steps.append(step + np.asarray(log_blocks(length, min(job.log_every, length))))
        for name, value in metrics.items():
            metric_values.setdefault(name, []).append(np.asarray(value, np.float64))
        step += length
        newly_diverged = (~finite) & (diverged_step < 0)
        diverged_step[newly_diverged] = step

        tic = time.perf_counter()
        episodes = evaluate_states(evaluator, policy, states, job.seeds, step, active=diverged_step < 0)
        eval_seconds += time.perf_counter() - tic
        wall = time.perf_counter() - started
        for i, seed in enumerate(job.seeds):
            status = "diverged" if diverged_step[i] >= 0 else "ok"
            seed_returns = episodes.returns[i]
            return_mean = float(np.mean(seed_returns)) if status == "ok" else math.nan
            score = dataset.spec.normalized_score(return_mean) if status == "ok" else None
            eval_rows.append(
                {
                    "seed": int(seed),
                    "step": step,
                    "return_mean": return_mean,
                    "return_std": float(np.std(seed_returns)) if status == "ok" else math.nan,
                    "episodes": job.eval_episodes,
                    "normalized_score": None if score is None else float(score),
                    # NaN for a diverged seed (never stepped) and where the environment reports no success
                    "success_rate": float(np.mean(episodes.successes[i])),
                    "wall_time_s": wall,
                    "status": status,
                }
            )
        if on_chunk is not None:
            ok = diverged_step < 0
            mean_return = float(np.mean(episodes.returns[ok])) if ok.any() else math.nan
            score = dataset.spec.normalized_score(mean_return)
            on_chunk(
                ChunkReport(
                    step,
                    step / max(train_seconds, 1e-9),
                    None if score is None or not ok.any() else float(score),
                    mean_return,
                    float(np.mean(episodes.successes[ok])) if ok.any() else math.nan,
                )
            )
        if checkpoint_dir is not None and step < job.steps:
            progress = {
                "job": identity.name,
                "keys": {
                    "suite": job.suite,
                    "label": job.method,
                    "sampler": cfg.sampler,
                    "dataset": job.dataset,
                },
                "step": step,
                "wall_time_s": wall,
                "diverged_step": diverged_step.tolist(),
                "eval_rows": eval_rows,
                "train_seconds": train_seconds,
                "eval_seconds": eval_seconds,
            }
            arrays = {"metric_steps": np.concatenate(metric_steps)} | {
                f"metric/{name}": np.concatenate(values) for name, values in metric_values.items()
            }
            tree = {"states": states, "keys": jax.random.key_data(keys)}
            checkpoint.save(checkpoint_dir, step, tree, progress, checkpoint_key, arrays)
    evaluator.close()

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
    row_provenance = {**provenance.provenance(), **dataset_provenance(dataset, identity.dataset_fingerprint)}
    evals = results.evals_frame(keys_row, eval_rows, row_provenance)
    runs = results.runs_frame(
        keys_row,
        evals,
        spec=dataset.spec,
        provenance=row_provenance,
        steps=job.steps,
        eval_every=job.eval_every,
        eval_episodes=job.eval_episodes,
        final_k=job.final_k,
        train_seconds=train_seconds,
        compile_seconds=compile_seconds,
        eval_seconds=eval_seconds,
        diverged_step=diverged_step,
    )
    metrics_table = results.metrics_frame(
        keys_row,
        job.seeds,
        np.concatenate(metric_steps),
        {name: np.concatenate(values) for name, values in metric_values.items()},
        row_provenance,
    )
    return JobOutput(
        identity=identity,
        cfg=cfg,
        spec=dataset.spec,
        frames={"evals": evals, "runs": runs, "metrics": metrics_table},
        states=states,
        observation_mean=np.asarray(dataset.observation_mean),
        observation_std=np.asarray(dataset.observation_std),
        diverged_step=diverged_step,
    )
