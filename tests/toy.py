"""The toy data the algorithm tests compute by hand: a fixed two-transition batch, small random datasets."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from offbench.algorithms.sampling import Batch
from offbench.datasets.dataset import Dataset, DatasetSpec, build_dataset

TOY_SPEC = DatasetSpec(
    id="toy",
    source="test",
    env_id=None,
    observation_dim=3,
    action_dim=2,
    action_low=(-1.0, -1.0),
    action_high=(1.0, 1.0),
)

BATCH = Batch(
    observations=jnp.array([[0.1, -0.2, 0.3], [1.0, 0.5, -0.5]]),
    actions=jnp.array([[0.5, -0.5], [0.0, 0.25]]),
    rewards=jnp.array([1.0, 2.0]),
    next_observations=jnp.array([[0.0, 0.0, 1.0], [0.2, 0.2, 0.2]]),
    masks=jnp.array([1.0, 0.0]),  # the second transition is terminal
    next_actions=jnp.array([[0.25, 0.0], [0.0, 0.25]]),  # a terminal's next action repeats its own
)


def make_toy_dataset(
    n: int = 20, terminals_at: Sequence[int] | None = None, timeouts_at: Sequence[int] | None = None
) -> Dataset:
    """Random transitions of ``TOY_SPEC``; by default one terminal in the middle and a timeout at the end."""
    rng = np.random.default_rng(0)
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    terminals[[n // 2] if terminals_at is None else list(terminals_at)] = True
    timeouts[[n - 1] if timeouts_at is None else list(timeouts_at)] = True
    return build_dataset(
        TOY_SPEC,
        observations=rng.normal(size=(n, 3)),
        actions=rng.uniform(-1, 1, (n, 2)),
        rewards=rng.normal(size=n),
        next_observations=rng.normal(size=(n, 3)),
        terminals=terminals,
        timeouts=timeouts,
    )


SMALL = {"hidden_dims": (32, 32), "batch_size": 16}
# Every built-in algorithm at a size that compiles quickly.
SMALL_CONFIGS = {
    "bc": SMALL,
    "td3bc": SMALL,
    "iql": SMALL,
    "cql": {"hidden_dims": (16, 16), "batch_size": 16, "cql_n_actions": 4},
    "a2pr": {
        "actor_hidden_dims": (8,),
        "critic_hidden_dims": (8,),
        "value_hidden_dims": (4,),
        "vae_hidden_dims": (4, 4),
        "batch_size": 16,
    },
    "prdc": {"hidden_dims": (16,), "batch_size": 16, "search_leaf_size": 2},
    "dqc": {
        "hidden_dims": (16,),
        "batch_size": 8,
        "num_samples": 4,
        "flow_steps": 3,
        "critic_horizon": 4,
        "action_horizon": 2,
    },
}
