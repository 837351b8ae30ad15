"""The training engine: jitted ``lax.scan`` chunks of updates, vmapped over seeds.

The dataset lives on the device once and is shared by every seed (it is a closed-over argument, not a
vmapped one). Each seed owns its parameters, optimiser states and PRNG key; the update counter
``state.step`` is shared and kept unbatched, so algorithms can branch on it (TD3's delayed actor)
with a real ``lax.cond`` instead of computing both branches. Seed ``i`` of a vmapped run therefore
follows exactly the computation of a single run with seed ``i``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from offbench.algorithms import Algorithm, get_algorithm, sampling
from offbench.algorithms.config import resolve_config
from offbench.bench import checkpoint, results
from offbench.bench.evaluate import Evaluator
from offbench.datasets.dataset import Dataset
from offbench.datasets.sources import load_dataset


def seed_keys(seeds: Sequence[int]) -> tuple[jax.Array, jax.Array]:
    """(init keys, training keys), one per seed, each derived from the seed value alone."""
    keys = jnp.stack([jax.random.split(jax.random.key(int(seed))) for seed in seeds])
    return keys[:, 0], keys[:, 1]


def state_axes(states: Any) -> Any:
    """vmap axes for a batch of states: every leaf on axis 0 except the shared ``step``."""
    return jax.tree.map(lambda _: 0, states).replace(step=None)


def init_states(algorithm: Algorithm, data: sampling.TrainingData, cfg: Any, init_keys: jax.Array) -> Any:
    states = jax.jit(jax.vmap(lambda key: algorithm.init(key, data.dataset, cfg)))(init_keys)
    return states.replace(step=states.step[0])


def all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]))


def make_train_chunk(algorithm: Algorithm, cfg: Any, num_updates: int) -> Callable:
    """A jitted function running ``num_updates`` updates of every seed in one ``lax.scan``.

    Returns ``(states, keys, metrics, finite)``: metrics are per-seed means over the chunk (NaN-aware,
    because delayed updates report NaN on the steps they skip) and ``finite[s]`` says whether seed
    ``s``'s parameters are still finite. Nothing leaves the device inside the chunk.
    """

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
        metrics = jax.tree.map(lambda m: jnp.nanmean(m, axis=0), metrics)
        finite = jax.vmap(all_finite, in_axes=(axes,))(states)
        return states, keys, metrics, finite

    return jax.jit(chunk, donate_argnums=(0, 1))


def shared_arrays(algorithm: Algorithm, data: sampling.TrainingData, cfg: Any) -> Any:
    """The algorithm's dataset-derived arrays shared by all seeds, or None."""
    return None if algorithm.shared_arrays is None else algorithm.shared_arrays(data, cfg)


def make_policy(algorithm: Algorithm, cfg: Any, data: sampling.TrainingData) -> Callable:
    """A jitted ``(states, observations[S, E, obs], keys[S]) -> actions`` for evaluation.

    Observation standardisation uses the training dataset's statistics, carried with the policy. The
    keys reach only algorithms whose evaluation samples (``ACT_NEEDS_KEY``, e.g. best-of-N).
    """
    mean = jnp.asarray(data.dataset.observation_mean)
    std = jnp.asarray(data.dataset.observation_std)

    def act(state: Any, observations: jax.Array, key: jax.Array) -> jax.Array:
        if algorithm.act_needs_key:
            return algorithm.act(state, observations, cfg, key)
        return algorithm.act(state, observations, cfg)

    def policy(states: Any, observations: jax.Array, keys: jax.Array) -> jax.Array:
        if cfg.normalize_observations:
            observations = (observations - mean) / std
        return jax.vmap(act, in_axes=(state_axes(states), 0, 0))(states, observations, keys)

    return jax.jit(policy)


def bind_policy(policy: Callable, states: Any, keys: jax.Array) -> Callable[[np.ndarray, int], jax.Array]:
    """The evaluator's view of a trained policy: (observations, call index) -> actions."""
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    return lambda observations, call: policy(states, observations, fold(keys, call))


def evaluation_keys(seeds: Sequence[int]) -> jax.Array:
    """Per-seed keys for sampling policies at evaluation, independent of the training keys."""
    return jnp.stack([jax.random.fold_in(jax.random.key(int(seed)), 0xE7A1) for seed in seeds])


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

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("a job needs at least one seed.")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}.")
        for name in ("steps", "eval_every", "eval_episodes", "final_k"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")


@dataclasses.dataclass
class ChunkReport:
    step: int
    updates_per_second: float  # per seed; every seed advances this many updates per second
    normalized_score: float | None
    return_mean: float
    success_rate: float  # NaN when the environment reports no success


def resolve(job: Job) -> Any:
    """The job's config: paper defaults, then per-dataset overrides matched on the id, then the job's."""
    algorithm = get_algorithm(job.algorithm)
    overrides = {"total_steps": job.steps, **dict(job.hparams)}
    return resolve_config(algorithm.Config, job.dataset, algorithm.dataset_overrides, overrides)


def job_name(job: Job) -> str:
    cfg = resolve(job)
    return results.job_name(job.algorithm, cfg.sampler, job.dataset, results.hparams_hash(cfg))


def run_job(
    job: Job,
    dataset: Dataset | None = None,
    on_chunk: Callable[[ChunkReport], None] | None = None,
    checkpoint_dir: Path | None = None,
) -> tuple[Any, Any]:
    """Train and evaluate every seed of ``job``; return (evals table, runs table) as DataFrames.

    With ``checkpoint_dir`` the job saves its state after every chunk and, when started again,
    resumes from the last saved chunk: the rows are identical to an uninterrupted run's.
    """
    algorithm = get_algorithm(job.algorithm)
    dataset = (
        dataset
        if dataset is not None
        else load_dataset(job.dataset, env_id=job.env_id, download=job.download)
    )
    cfg = resolve(job)
    data = sampling.prepare(dataset, cfg)
    evaluator = Evaluator(dataset.spec, job.seeds, job.eval_episodes)
    init_keys, keys = seed_keys(job.seeds)
    states = init_states(algorithm, data, cfg, init_keys)
    policy = make_policy(algorithm, cfg, data)
    eval_keys = evaluation_keys(job.seeds)
    shared = shared_arrays(algorithm, data, cfg)
    chunk_fns: dict[int, Callable] = {}
    num_seeds = len(job.seeds)
    diverged_step = np.full(num_seeds, -1, np.int64)
    eval_rows: list[dict[str, Any]] = []
    train_seconds = eval_seconds = compile_seconds = 0.0
    step, wall_offset = 0, 0.0
    # The schema version too: rows saved by an older schema would lack columns of this one.
    fingerprint = (
        f"v{results.SCHEMA_VERSION}:{results.hparams_hash(cfg)}:{job.seeds}:{job.steps}:{job.eval_every}:"
        f"{job.eval_episodes}"
    )
    if checkpoint_dir is not None:
        restored = checkpoint.load(
            checkpoint_dir, {"states": states, "keys": jax.random.key_data(keys)}, fingerprint
        )
        if restored is not None:
            tree, progress = restored
            states, keys = tree["states"], jax.random.wrap_key_data(tree["keys"])
            step, wall_offset = progress["step"], progress["wall_time_s"]
            diverged_step = np.asarray(progress["diverged_step"], np.int64)
            eval_rows = progress["eval_rows"]
            train_seconds, eval_seconds = progress["train_seconds"], progress["eval_seconds"]
    started = time.perf_counter() - wall_offset

    while step < job.steps:
        length = min(job.eval_every, job.steps - step)
        if length not in chunk_fns:
            tic = time.perf_counter()
            chunk_fns[length] = (
                make_train_chunk(algorithm, cfg, length).lower(states, keys, data, shared).compile()
            )
            compile_seconds += time.perf_counter() - tic
        tic = time.perf_counter()
        states, keys, metrics, finite = chunk_fns[length](states, keys, data, shared)
        finite = np.asarray(finite)
        train_seconds += time.perf_counter() - tic
        step += length
        newly_diverged = (~finite) & (diverged_step < 0)
        diverged_step[newly_diverged] = step

        tic = time.perf_counter()
        round_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(eval_keys, step)
        episodes = evaluator.run(bind_policy(policy, states, round_keys), active=diverged_step < 0)
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
                    **{f"metric_{k}": float(np.asarray(v)[i]) for k, v in metrics.items()},
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
                "fingerprint": fingerprint,
                "step": step,
                "wall_time_s": wall,
                "diverged_step": diverged_step.tolist(),
                "eval_rows": eval_rows,
                "train_seconds": train_seconds,
                "eval_seconds": eval_seconds,
            }
            tree = {"states": states, "keys": jax.random.key_data(keys)}
            checkpoint.save(checkpoint_dir, step, tree, progress)
    evaluator.close()

    keys_row = {
        "suite": job.suite,
        "dataset": dataset.spec.id,
        "env": dataset.spec.env_id or "",
        "algorithm": job.algorithm,
        "label": job.label or job.algorithm,
        "sampler": cfg.sampler,
        "hparams": results.hparams_json(cfg),
        "hparams_hash": results.hparams_hash(cfg),
    }
    evals = results.evals_frame(keys_row, eval_rows)
    runs = results.runs_frame(
        keys_row,
        evals,
        spec=dataset.spec,
        final_k=job.final_k,
        train_seconds=train_seconds,
        compile_seconds=compile_seconds,
        eval_seconds=eval_seconds,
        updates_per_second=job.steps / max(train_seconds, 1e-9),
        steps=job.steps,
        diverged_step=diverged_step,
    )
    return evals, runs
