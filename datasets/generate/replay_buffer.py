"""The SAC trainer's replay buffer: preallocated device arrays filled in place, one block per call."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

BUFFER_FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


class ReplayBuffer(NamedTuple):
    """Preallocated device arrays; rows [0, size) are valid and the next row goes to ``ptr``.

    ``terminals`` marks true terminations (used for bootstrapping); ``timeouts`` marks episodes cut by a
    time limit or a checkpoint reset, kept so datasets built from the buffer can record them like D4RL.
    """

    data: dict[str, jax.Array]
    size: jax.Array
    ptr: jax.Array


def empty_buffer(capacity: int, obs_dim: int, act_dim: int) -> ReplayBuffer:
    widths = {"observations": obs_dim, "actions": act_dim, "next_observations": obs_dim}
    data = {
        f: jnp.zeros((capacity, widths[f]) if f in widths else (capacity,), jnp.float32)
        for f in BUFFER_FIELDS
    }
    return ReplayBuffer(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def add(buffer: ReplayBuffer, transitions: dict[str, jax.Array]) -> ReplayBuffer:
    # Capacity is a multiple of the rows added per call, so a block never straddles the end.
    n = transitions["rewards"].shape[0]
    capacity = buffer.data["rewards"].shape[0]
    data = {
        f: jax.lax.dynamic_update_slice_in_dim(
            buffer.data[f], transitions[f].astype(jnp.float32), buffer.ptr, 0
        )
        for f in BUFFER_FIELDS
    }
    return ReplayBuffer(data, jnp.minimum(buffer.size + n, capacity), (buffer.ptr + n) % capacity)


# Donating the buffer lets XLA update it in place instead of copying ~100 MB every call.
insert = jax.jit(add, donate_argnums=0)
