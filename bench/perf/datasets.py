"""The ``datasets`` table of ``offbench perf``: seconds to load a stored Minari dataset and to generate a
small one."""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any
from unittest import mock

import pandas as pd

from offbench.datasets.dataset import DatasetError

LOAD_DATASET = "offbench/hopper/medium-v0"
GENERATE_ENV = "hopper"


def dataset_timings(load_id: str = LOAD_DATASET, generate_size: int = 10_000) -> pd.DataFrame:
    """Seconds to load ``load_id`` from the local Minari store into a Dataset, and to generate an
    ``offbench/hopper/medium-v0`` of ``generate_size`` transitions (reference episodes included) into a
    temporary Minari root, which leaves the user's datasets alone."""
    from offbench.datasets.generate import catalog
    from offbench.datasets.sources import load_dataset

    rows = []
    tic = time.perf_counter()
    try:
        transitions = load_dataset(load_id).size
        rows.append(dataset_row("load", load_id, transitions, time.perf_counter() - tic))
    except DatasetError as error:
        rows.append(dataset_row("load", load_id, status=f"not measured: {error}"))

    generated = catalog.dataset_id(GENERATE_ENV, "medium")
    with tempfile.TemporaryDirectory() as root, mock.patch.dict(os.environ, {"MINARI_DATASETS_PATH": root}):
        tic = time.perf_counter()
        catalog.generate_env(GENERATE_ENV, size=generate_size, kinds=("medium",), workers=1)
        seconds = time.perf_counter() - tic
        rows.append(dataset_row("generate", generated, load_dataset(generated).size, seconds))
    return pd.DataFrame(rows)


def dataset_row(
    operation: str, dataset: str, transitions: int = 0, seconds: float = math.nan, status: str = "ok"
) -> dict[str, Any]:
    return {
        "operation": operation,
        "dataset": dataset,
        "transitions": transitions,
        "seconds": seconds,
        "transitions_per_second": transitions / seconds,
        "status": status,
    }
