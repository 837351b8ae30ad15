"""What an algorithm sees of a dataset: preprocessing and minibatch sampling, on the device.

``prepare`` runs once per job on the host: it applies the config's observation and reward
preprocessing and builds the sampler's tables. ``sample`` runs inside the jitted training scan and
draws one minibatch with a JAX key, so no host round trip happens per update.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from offbench.algorithms.config import BaseConfig
from offbench.datasets.dataset import Dataset

SAMPLERS = ("uniform",)


@flax.struct.dataclass
class Batch:
    observations: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_observations: jax.Array
    # 1 - terminal: bootstrap everywhere except at true ends (timeouts still bootstrap).
    masks: jax.Array


@flax.struct.dataclass
class TrainingData:
    """The preprocessed dataset (device arrays) plus the sampler's precomputed tables."""

    dataset: Dataset
    sampler: str = flax.struct.field(pytree_node=False, default="uniform")


def reward_transform(dataset: Dataset, cfg: BaseConfig) -> tuple[float, float]:
    """(scale, shift) such that training rewards are ``scale * r + shift``."""
    scale = cfg.reward_scale
    if cfg.reward_normalization == "return_range":
        returns = np.asarray(dataset.episodes.returns)
        spread = float(returns.max() - returns.min())
        if spread <= 0.0:
            raise ValueError(
                f"dataset {dataset.spec.id!r}: every episode has the same return, so rewards cannot be "
                "normalised by the return range; set reward_normalization='none'."
            )
        scale = scale / spread
    return scale, cfg.reward_shift


def prepare(dataset: Dataset, cfg: BaseConfig) -> TrainingData:
    if cfg.sampler not in SAMPLERS:
        from offbench.datasets.dataset import suggest

        raise ValueError(
            f"unknown sampler {cfg.sampler!r}.{suggest(cfg.sampler, SAMPLERS)} Available: {', '.join(SAMPLERS)}."
        )
    if cfg.normalize_observations:
        dataset = dataset.normalized_observations()
    scale, shift = reward_transform(dataset, cfg)
    if (scale, shift) != (1.0, 0.0):
        dataset = dataset.replace(rewards=(scale * np.asarray(dataset.rewards) + shift).astype(np.float32))
    return TrainingData(dataset=dataset.to_device(), sampler=cfg.sampler)


def sample_indices(data: TrainingData, key: jax.Array, batch_size: int) -> jax.Array:
    return jax.random.randint(key, (batch_size,), 0, data.dataset.rewards.shape[0])


def gather(dataset: Dataset, indices: jax.Array) -> Batch:
    return Batch(
        observations=dataset.observations[indices],
        actions=dataset.actions[indices],
        rewards=dataset.rewards[indices],
        next_observations=dataset.next_observations[indices],
        masks=1.0 - dataset.terminals[indices].astype(jnp.float32),
    )


def sample(data: TrainingData, key: jax.Array, batch_size: int) -> Batch:
    return gather(data.dataset, sample_indices(data, key, batch_size))
