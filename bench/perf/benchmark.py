"""``offbench perf``: how fast the engine runs, and how close it gets to the machine's limit.

Four tables, written as parquet under ``results/perf/<device>/`` and printed on stdout (``render``):
``updates`` (``updates.py``: updates/s per seed, compile seconds, FLOPs, roofline, memory), ``evaluation``
(``evaluation.py``: env steps/s of the evaluator and of vector backends), ``datasets``
(``datasets.py``: load and generation seconds) and ``targets`` (``targets.py``: pass/fail).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from offbench.bench.perf.datasets import dataset_timings
from offbench.bench.perf.evaluation import evaluation_throughput
from offbench.bench.perf.measure import device_description
from offbench.bench.perf.output import write_frames
from offbench.bench.perf.targets import check_targets
from offbench.bench.perf.updates import PRDC_DATASET, measure_in_training, measure_updates


@dataclasses.dataclass
class PerfTables:
    device: str
    updates: pd.DataFrame
    evaluation: pd.DataFrame | None  # None: not measured
    datasets: pd.DataFrame | None
    targets: pd.DataFrame

    def frames(self) -> dict[str, pd.DataFrame]:
        named = {"updates": self.updates, "evaluation": self.evaluation, "datasets": self.datasets}
        return {
            name: frame for name, frame in {**named, "targets": self.targets}.items() if frame is not None
        }


def run(
    algorithms: Sequence[str],
    seed_counts: Sequence[int] = (1, 4, 16),
    dataset_sizes: Sequence[int] = (200_000, 1_000_000),
    chunk: int = 10,
    repeats: int = 3,
    min_seconds: float = 2.0,
    evaluation_seeds: int | None = 5,
    generate_size: int | None = 10_000,
    prdc_dataset: str | None = PRDC_DATASET,
    log: Callable[[str], Any] | None = None,
) -> PerfTables:
    """Measure everything; ``evaluation_seeds`` / ``generate_size`` / ``prdc_dataset`` None skips that
    part (the last only runs when PRDC is among ``algorithms``)."""
    device = device_description()
    updates = measure_updates(algorithms, seed_counts, dataset_sizes, chunk, repeats, min_seconds, log)
    if prdc_dataset is not None and "prdc" in algorithms:
        in_training = measure_in_training(
            prdc_dataset, chunk=chunk, repeats=repeats, min_seconds=min_seconds, log=log
        )
        updates = pd.concat([updates, in_training], ignore_index=True)
    evaluation = None if evaluation_seeds is None else evaluation_throughput(evaluation_seeds)
    datasets = None if generate_size is None else dataset_timings(generate_size=generate_size)
    return PerfTables(device, updates, evaluation, datasets, check_targets(updates, evaluation))


def write(tables: PerfTables, directory: Path) -> list[Path]:
    """One parquet file per table under ``directory``, each row stamped with the device and provenance."""
    return write_frames(tables.device, tables.frames(), directory)
