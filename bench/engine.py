"""The training engine: jitted ``lax.scan`` chunks of updates, vmapped over seeds, and evaluation.

The dataset lives on the device once and is shared by every seed (it is a closed-over argument, not a
vmapped one). Each seed owns its parameters, optimiser states and PRNG key; the update counter
``state.step`` is shared and kept unbatched, so algorithms can branch on it (TD3's delayed actor)
with a real ``lax.cond`` instead of computing both branches. Seed ``i`` of a vmapped run therefore
follows exactly the computation of a single run with seed ``i``.

Everything here is a pure function of pytrees; the job runner (``train.py``) adds resumption,
provenance and the results tables.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from offbench.algorithms import Algorithm, sampling
from offbench.datasets.dataset import Dataset, DatasetSpec
from offbench.datasets.evaluate import Episodes, Evaluator


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


def training_data(algorithm: Algorithm, dataset: Dataset, cfg: Any) -> sampling.TrainingData:
    """The dataset prepared as ``algorithm`` trains on it: transitions, or the H-step windows it declares."""
    horizon = None if algorithm.batch_horizon is None else algorithm.batch_horizon(cfg)
    return sampling.prepare(dataset, cfg, horizon)


def shared_arrays(algorithm: Algorithm, data: sampling.TrainingData, cfg: Any) -> Any:
    """The algorithm's dataset-derived arrays shared by all seeds, or None."""
    return None if algorithm.shared_arrays is None else algorithm.shared_arrays(data, cfg)


def make_policy(
    algorithm: Algorithm, cfg: Any, observation_mean: np.ndarray, observation_std: np.ndarray
) -> Callable:
    """A jitted ``(states, observations[S, E, obs], keys[S]) -> actions`` for evaluation.

    Observation standardisation uses the training dataset's statistics, carried with the policy. The
    keys reach only algorithms whose evaluation samples (declared ``act_needs_key``, e.g. best-of-N).
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


def abstract_states(algorithm: Algorithm, cfg: Any, spec: DatasetSpec, num_seeds: int) -> Any:
    """The shapes and dtypes of :func:`init_states`' result, without computing it or loading the dataset:
    ``init`` reads only the dataset's spec."""
    dataset = types.SimpleNamespace(spec=spec)
    keys = jax.random.split(jax.random.key(0), num_seeds)
    shapes = jax.eval_shape(jax.vmap(lambda key: algorithm.init(key, dataset, cfg)), keys)
    return shapes.replace(step=jax.ShapeDtypeStruct((), shapes.step.dtype))
