"""Offline-RL algorithms. Each module reads top to bottom: Config, networks, init, update, act, and ends
with its declaration, ``ALGORITHM = Algorithm(...)``: everything the training engine needs to know of
it, stated explicitly. Register a new algorithm by adding its module to ``REGISTRY``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
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

DatasetOverrides = tuple[tuple[str, dict[str, Any]], ...]


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """An algorithm as the engine sees it.

    ``init(key, dataset, cfg) -> state``; ``update(state, batch, key, cfg) -> (state, metrics)``, with
    ``shared=`` added when ``shared_arrays`` is declared; ``act(state, observations, cfg) -> actions``,
    with a key added when ``act_needs_key``. ``Config`` is a frozen dataclass subclassing ``BaseConfig``
    and the state a pytree with a ``step`` field.
    """

    name: str
    Config: type  # noqa: N815 - the class, named as in its module
    init: Callable
    update: Callable
    act: Callable
    # Per-dataset settings published by the authors: (dataset-id glob, {field: value}), first match wins.
    dataset_overrides: DatasetOverrides = ()
    # Arrays derived from the whole dataset that the update needs (PRDC's search table): the engine
    # computes them once per job as ``shared_arrays(training_data, cfg)`` and shares them across seeds.
    shared_arrays: Callable | None = None
    # Evaluation samples (e.g. best-of-N candidates): ``act`` takes a key as its last argument.
    act_needs_key: bool = False
    # Training batches of H-step windows instead of transitions (action chunks): H from the config.
    batch_horizon: Callable[[Any], int] | None = None


class UnknownAlgorithmError(ValueError):
    pass


def get_algorithm(name: str) -> Algorithm:
    if name not in REGISTRY:
        raise UnknownAlgorithmError(
            f"unknown algorithm {name!r}.{suggest(name, list(REGISTRY))} "
            f"Available: {', '.join(sorted(REGISTRY))}."
        )
    return importlib.import_module(REGISTRY[name]).ALGORITHM


def available_algorithms() -> list[str]:
    return sorted(REGISTRY)
