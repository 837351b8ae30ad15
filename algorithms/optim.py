"""The optimiser the networks train with, and one step of it.

Every official code this package follows trains with PyTorch's Adam at its defaults (betas 0.9 and
0.999, eps 1e-8), which ``optax.adam`` matches. An optimiser holds no state of its own (its state lives
in the algorithm's ``State``), so ``init`` and ``update`` each build it from the config with ``adam``.
"""

from __future__ import annotations

from typing import Any

import optax


def adam(learning_rate: float | optax.Schedule) -> optax.GradientTransformation:
    return optax.adam(learning_rate)


def step(
    optimizer: optax.GradientTransformation, params: Any, grads: Any, opt_state: optax.OptState
) -> tuple[Any, optax.OptState]:
    """(new parameters, new optimiser state) after one step on ``grads``."""
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
