"""The tables ``offbench perf`` prints."""

from __future__ import annotations

import math

import pandas as pd
from rich.table import Table

from offbench.bench.perf.benchmark import PerfTables
from offbench.bench.perf.evaluation import EVALUATOR_BACKEND
from offbench.bench.perf.output import new_table
from offbench.bench.perf.targets import (
    COMPILE_TARGET,
    OVERHEAD_TARGET,
    PRDC_TARGET,
    ROOFLINE_ALGORITHMS,
    ROOFLINE_TARGET,
    TARGETS,
    Target,
)
from offbench.bench.perf.updates import PRDC_DATASET


def render(tables: PerfTables) -> list[Table]:
    """The tables ``offbench perf`` prints, a target's verdict beside each value it applies to, and a
    summary of the targets."""
    updates = new_table(
        f"updates on {tables.device}",
        (
            "algorithm", "dataset", "transitions", "seeds", "updates/s/seed", "× td3bc cost", "compile s",
            "GFLOP/update", "GFLOP/s", "roofline GFLOP/s", "roofline shape", "% roofline",
        ),
        left=("algorithm",),
    )  # fmt: skip
    for r in tables.updates.itertuples():
        cost = "" if math.isnan(r.cost_vs_td3bc) else f"{r.cost_vs_td3bc:.2f}"
        if r.algorithm == "prdc" and r.dataset == PRDC_DATASET:
            cost += beside(PRDC_TARGET, r.cost_vs_td3bc)
        fraction = f"{100 * r.roofline_fraction:.0f}"
        if r.algorithm in ROOFLINE_ALGORITHMS:
            fraction += beside(ROOFLINE_TARGET, r.roofline_fraction)
        updates.add_row(
            r.algorithm,
            r.dataset + (f", trained {r.warmup_updates:,} updates" if r.warmup_updates else ""),
            f"{r.dataset_size:,}",
            str(r.seeds),
            f"{r.updates_per_second_per_seed:,.1f}",
            cost,
            f"{r.compile_seconds:.1f}{beside(COMPILE_TARGET, r.compile_seconds)}",
            # A count with loops inside is a lower bound (see update_flops).
            f"{'≥' if not r.flops_complete else ''}{r.flops_per_update / 1e9:.3f}",
            f"{r.achieved_flops_per_second / 1e9:,.1f}",
            f"{r.roofline_flops_per_second / 1e9:,.1f}",
            r.roofline_shape,
            fraction,
        )
    rendered = [updates]
    if tables.evaluation is not None:
        evaluation = new_table(
            f"evaluation: Hopper-v5, expert policy, on {tables.device}",
            ("backend", "envs", "env steps/s", "stepping only", "% outside stepping", "status"),
            left=("backend", "status"),
        )
        for r in tables.evaluation.itertuples():
            measured = r.status == "ok"
            overhead = f"{100 * r.overhead_fraction:.0f}" if measured else ""
            if measured and r.backend == EVALUATOR_BACKEND:
                overhead += beside(OVERHEAD_TARGET, r.overhead_fraction)
            evaluation.add_row(
                r.backend,
                str(r.environments),
                f"{r.env_steps_per_second:,.0f}" if measured else "",
                f"{r.stepping_only_env_steps_per_second:,.0f}" if measured else "",
                overhead,
                r.status,
            )
        rendered.append(evaluation)
    if tables.datasets is not None:
        datasets = new_table(
            "datasets",
            ("operation", "dataset", "transitions", "seconds", "transitions/s", "status"),
            left=("operation", "dataset", "status"),
        )
        for r in tables.datasets.itertuples():
            measured = r.status == "ok"
            datasets.add_row(
                r.operation,
                r.dataset,
                f"{r.transitions:,}" if measured else "",
                f"{r.seconds:.1f}" if measured else "",
                f"{r.transitions_per_second:,.0f}" if measured else "",
                r.status,
            )
        rendered.append(datasets)
    rendered.append(targets_summary(tables.targets))
    return rendered


def beside(target: Target, value: float) -> str:
    passed = target.passed(value)
    return "" if passed is None else (" ✓" if passed else " ✗")


def targets_summary(targets: pd.DataFrame) -> Table:
    """Per target: how many checked cells pass, and the worst one."""
    columns = ("target", "threshold", "passed", "worst", "worst cell")
    summary = new_table("targets", columns, left=columns)
    for target in TARGETS:
        checked = targets[(targets.target == target.name) & targets.passed.notna()]
        if checked.empty:
            summary.add_row(target.name, target.describe(), "not measured", "", "")
            continue
        worst = checked.loc[checked.value.idxmin() if target.at_least else checked.value.idxmax()]
        where = [
            worst.algorithm if pd.notna(worst.algorithm) else None,
            f"{worst.seeds} seeds" if pd.notna(worst.seeds) else None,
            f"{worst.dataset_size:,} transitions" if pd.notna(worst.dataset_size) else None,
        ]
        passed = int(checked.passed.astype(bool).sum())
        summary.add_row(
            target.name,
            target.describe(),
            f"{passed} of {len(checked)}{' ✓' if passed == len(checked) else ' ✗'}",
            f"{worst.value:.3g}",
            ", ".join(text for text in where if text is not None),
        )
    return summary
