"""Offline-RL algorithms, and the public contract every algorithm is written against.

An algorithm is one module that reads top to bottom: Config, networks, init, update, act, and ends with
its declaration, ``ALGORITHM = Algorithm(...)``: everything the training engine needs to know of it,
stated explicitly. The built-in algorithms (``bc``, ``td3bc``, ``iql``, ...) and plug-ins (a file, an
importable module, or an installed package's ``offbench.algorithms`` entry point) follow the same
contract, and the engine does not tell them apart. ``offbench algorithms check`` tests a module against it.

What a module may import from offbench is listed in ``__all__`` below and documented in
docs/algorithms.md; everything else in the package is internal and may change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from offbench.algorithms.config import BaseConfig, DatasetOverrides, bounded
from offbench.algorithms.nets import (
    MLP,
    CriticEnsemble,
    Dense,
    DeterministicActor,
    GaussianPolicy,
    TanhGaussianActor,
    ValueNetwork,
    first_critic,
    gaussian_log_prob,
    linear,
    polyak,
    sample_tanh_gaussian,
)
from offbench.algorithms.optim import adam
from offbench.algorithms.optim import step as optimizer_step
from offbench.algorithms.sampling import Batch, ChunkBatch, TrainingData
from offbench.datasets.dataset import Dataset, DatasetSpec

__all__ = [
    # the declaration and the configuration
    "Algorithm",
    "BaseConfig",
    "bounded",
    "DatasetOverrides",
    # what init, update and shared_arrays receive
    "Batch",
    "ChunkBatch",
    "Dataset",
    "DatasetSpec",
    "TrainingData",
    # the shared networks and helpers
    "Dense",
    "MLP",
    "DeterministicActor",
    "CriticEnsemble",
    "ValueNetwork",
    "GaussianPolicy",
    "TanhGaussianActor",
    "first_critic",
    "linear",
    "polyak",
    "gaussian_log_prob",
    "sample_tanh_gaussian",
    # the optimiser and one step of it
    "adam",
    "optimizer_step",
]


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """An algorithm as the engine sees it.

    ``init(key, dataset, cfg) -> state``; ``update(state, batch, key, cfg) -> (state, metrics)``, with
    ``shared=`` added when ``shared_arrays`` is declared; ``act(state, observations, cfg) -> actions``
    ([B, act], or [B, H, act] chunks executed open-loop), with a key added when ``act_needs_key``.
    ``Config`` is a frozen dataclass subclassing ``BaseConfig`` and the state a pytree with a scalar
    ``step`` field, shared by the seeds of a job.
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
