"""offbench: JAX offline-RL benchmarks with vmapped seeds, real evaluation and tidy parquet results.

The subpackages are ``offbench.algorithms``, ``offbench.datasets`` and ``offbench.bench``. Importing
``offbench`` itself is cheap: :func:`load_policy` imports JAX only when called.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_policy"]


def load_policy(path: Any, seed: int | None = None) -> Any:
    """A saved policy (``<results>/policies/<job>``) as a callable from a raw environment observation
    to an action, for a plain Gymnasium loop; see :mod:`offbench.bench.policy`."""
    from offbench.bench.policy import load_policy as load

    return load(path, seed)
