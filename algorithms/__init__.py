"""Offline-RL algorithms. Each module reads top to bottom: Config, networks, init, update, act.

Register a new algorithm by adding its module to ``REGISTRY``; the module must define
``Config`` (a frozen dataclass subclassing ``BaseConfig``), ``State`` (a pytree with a ``step``
field), ``init(key, dataset, cfg)``, ``update(state, batch, key, cfg)``, ``act(state, observations,
cfg)`` and may define ``DATASET_OVERRIDES`` (per-dataset settings published by the authors).

An algorithm that needs arrays derived from the whole dataset inside its update (PRDC's search
table) defines ``shared_arrays(data, cfg)``: the engine computes it once per job, shares it across
seeds (not vmapped) and passes it as ``update(state, batch, key, cfg, shared=...)``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

from offbench.hints import suggest

REGISTRY: dict[str, str] = {
    "bc": "offbench.algorithms.bc",
    "td3bc": "offbench.algorithms.td3bc",
    "iql": "offbench.algorithms.iql",
    "a2pr": "offbench.algorithms.a2pr",
    "prdc": "offbench.algorithms.prdc",
    "cql": "offbench.algorithms.cql",
    "dqc": "offbench.algorithms.dqc",
}


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str
    module: ModuleType

    @property
    def Config(self) -> type:  # noqa: N802 - mirrors the module attribute
        return self.module.Config

    @property
    def init(self) -> Callable:
        return self.module.init

    @property
    def update(self) -> Callable:
        return self.module.update

    @property
    def act(self) -> Callable:
        return self.module.act

    @property
    def act_needs_key(self) -> bool:
        return bool(getattr(self.module, "ACT_NEEDS_KEY", False))

    @property
    def shared_arrays(self) -> Callable | None:
        return getattr(self.module, "shared_arrays", None)

    @property
    def dataset_overrides(self) -> tuple[tuple[str, dict[str, Any]], ...]:
        return tuple(getattr(self.module, "DATASET_OVERRIDES", ()))


class UnknownAlgorithmError(ValueError):
    pass


def get_algorithm(name: str) -> Algorithm:
    if name not in REGISTRY:
        raise UnknownAlgorithmError(
            f"unknown algorithm {name!r}.{suggest(name, list(REGISTRY))} "
            f"Available: {', '.join(sorted(REGISTRY))}."
        )
    return Algorithm(name, importlib.import_module(REGISTRY[name]))


def available_algorithms() -> list[str]:
    return sorted(REGISTRY)
