"""The ``targets`` table of ``offbench perf``: the performance targets, one row per checked cell of the
updates and evaluation tables, with pass/fail."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pandas as pd

from offbench.bench.perf.evaluation import EVALUATOR_BACKEND
from offbench.bench.perf.updates import PRDC_DATASET

ROOFLINE_ALGORITHMS = ("bc", "td3bc", "iql", "a2pr")
SCALING_SEEDS = 16


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    threshold: float
    at_least: bool  # pass when value >= threshold; else when value <= threshold

    def passed(self, value: float) -> bool | None:
        if math.isnan(value):
            return None
        return bool(value >= self.threshold if self.at_least else value <= self.threshold)

    def describe(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.threshold:g}"


ROOFLINE_TARGET = Target(f"roofline fraction ({', '.join(ROOFLINE_ALGORITHMS)})", 0.70, at_least=True)
PRDC_TARGET = Target(f"prdc cost / td3bc cost on {PRDC_DATASET}, trained", 2.0, at_least=False)
SCALING_TARGET = Target(f"td3bc per-seed rate, {SCALING_SEEDS} seeds / 1 seed", 0.9, at_least=True)
COMPILE_TARGET = Target("compile seconds of an update chunk", 20.0, at_least=False)
OVERHEAD_TARGET = Target("evaluator time outside env stepping", 0.25, at_least=False)
TARGETS = (ROOFLINE_TARGET, PRDC_TARGET, SCALING_TARGET, COMPILE_TARGET, OVERHEAD_TARGET)


def check_targets(updates: pd.DataFrame, evaluation: pd.DataFrame | None) -> pd.DataFrame:
    """One row per checked cell of each target. A target nothing was measured for gets
    one row with a NaN value and ``passed`` None (shown as "not measured")."""
    rows: list[dict[str, Any]] = []

    def check(target: Target, cells: list[tuple[float, dict[str, Any]]]) -> None:
        for value, where in cells or [(math.nan, {})]:
            rows.append(
                {
                    "target": target.name,
                    "algorithm": where.get("algorithm"),
                    "seeds": where.get("seeds"),
                    "dataset_size": where.get("dataset_size"),
                    "value": float(value),
                    "threshold": target.threshold,
                    "comparison": ">=" if target.at_least else "<=",
                    "passed": target.passed(float(value)),
                }
            )

    def cell(row: Any) -> dict[str, Any]:
        return {"algorithm": row.algorithm, "seeds": row.seeds, "dataset_size": row.dataset_size}

    measured = list(updates.itertuples())
    check(
        ROOFLINE_TARGET,
        [(r.roofline_fraction, cell(r)) for r in measured if r.algorithm in ROOFLINE_ALGORITHMS],
    )
    check(
        PRDC_TARGET,
        [
            (r.cost_vs_td3bc, cell(r))
            for r in measured
            if r.algorithm == "prdc" and r.dataset == PRDC_DATASET and not math.isnan(r.cost_vs_td3bc)
        ],
    )
    td3bc = {
        (r.dataset_size, r.seeds): r.updates_per_second_per_seed
        for r in measured
        if r.algorithm == "td3bc" and r.warmup_updates == 0
    }
    check(
        SCALING_TARGET,
        [
            (
                td3bc[size, SCALING_SEEDS] / td3bc[size, 1],
                {"algorithm": "td3bc", "seeds": SCALING_SEEDS, "dataset_size": size},
            )
            for size in sorted({size for size, _ in td3bc})
            if (size, 1) in td3bc and (size, SCALING_SEEDS) in td3bc
        ],
    )
    check(COMPILE_TARGET, [(r.compile_seconds, cell(r)) for r in measured])
    evaluator = [] if evaluation is None else evaluation[evaluation.backend == EVALUATOR_BACKEND].itertuples()
    check(OVERHEAD_TARGET, [(r.overhead_fraction, {}) for r in evaluator])
    return pd.DataFrame(rows).astype({"seeds": "Int64", "dataset_size": "Int64"})
