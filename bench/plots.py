"""The report's figures, drawn from :class:`offbench.bench.report.Tables` (matplotlib, no pyplot state).

Every figure returns its PNG bytes (also written to ``path``), saved without a "Software" metadata
entry, so the bytes depend only on the data. Colours are fixed per method name, so the figures agree.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from offbench.bench import stats
from offbench.bench.report import CONFIDENCE, METRIC_TITLES
from offbench.files import write_bytes_atomic

RAW_MARK = " †"
NO_AGGREGATE = "no method ran on every dataset with reference scores"


def _save(figure: Figure, path: Path) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    data = buffer.getvalue()
    write_bytes_atomic(path, data)
    return data


def _empty(figure: Figure, message: str) -> None:
    axes = figure.add_subplot()
    axes.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    axes.set_axis_off()


def colors(methods: list[str]) -> dict[str, tuple[float, ...]]:
    """A fixed colour per method name (sorted order), so every plot agrees."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {method: palette(i % palette.N) for i, method in enumerate(sorted(methods))}


def _legend_outside(figure: Figure, axes, methods: list[str], palette: dict) -> None:
    """One legend for the figure, to the right of the axes, so it never covers data."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=palette[m], marker="o", label=m) for m in methods]
    figure.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)


def plot_aggregates(aggregate: pd.DataFrame, path: Path) -> bytes:
    methods = sorted(aggregate["method"].unique())
    figure = Figure(figsize=(3.2 * len(METRIC_TITLES), 0.5 * len(methods) + 1.4))
    if not methods:
        _empty(figure, NO_AGGREGATE)
        return _save(figure, path)
    palette = colors(methods)
    axes = figure.subplots(1, len(METRIC_TITLES), sharey=True)
    for ax, (metric, title) in zip(axes, METRIC_TITLES.items(), strict=True):
        frame = aggregate[aggregate["metric"] == metric].set_index("method")
        for y, method in enumerate(methods):
            row = frame.loc[method]
            width = row["upper"] - row["lower"]
            ax.barh(y, width, left=row["lower"], height=0.6, color=palette[method], alpha=0.75)
            ax.vlines(row["point"], y - 0.3, y + 0.3, color="black", linewidth=1.5)
        ax.set_title(title + (" (lower is better)" if metric == "optimality_gap" else ""), fontsize=10)
        ax.set_xlabel("normalised score (x100)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(methods)), methods)
    axes[0].invert_yaxis()
    return _save(figure, path)


def profile_taus(matrices: dict[str, np.ndarray], count: int = 101) -> np.ndarray:
    """Thresholds spanning the range the scores occupy (with a 5% margin), not a fixed 0-100."""
    pooled = np.concatenate([m.ravel() for m in matrices.values()])
    low, high = float(pooled.min()), float(pooled.max())
    margin = 0.05 * (high - low) or 1.0
    return np.linspace(low - margin, high + margin, count)


def plot_profiles(matrices: dict[str, np.ndarray], path: Path, reps: int, seed: int) -> bytes:
    figure = Figure(figsize=(6.5, 4.2))
    if not matrices:
        _empty(figure, NO_AGGREGATE)
        return _save(figure, path)
    profiles = stats.performance_profile(matrices, profile_taus(matrices), reps, CONFIDENCE, seed)
    palette = colors(list(matrices))
    ax = figure.add_subplot()
    for method, frame in profiles.groupby("method", sort=True):
        ax.plot(frame["tau"], frame["fraction"], color=palette[method], label=method)
        ax.fill_between(frame["tau"], frame["lower"], frame["upper"], color=palette[method], alpha=0.2)
    ax.set_xlabel("normalised score τ (x100)")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    _legend_outside(figure, ax, sorted(matrices), palette)
    return _save(figure, path)


def plot_learning_curves(curves: pd.DataFrame, scored: set[str], path: Path) -> bytes:
    """One panel per dataset: mean over seeds at every evaluation (a marker each) with its 95% band."""
    datasets = sorted(curves["dataset"].unique())
    columns = min(3, max(1, len(datasets)))
    rows = -(-len(datasets) // columns) if datasets else 1
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows))
    if not datasets:
        _empty(figure, "no evaluations found (evals/ is empty)")
        return _save(figure, path)
    methods = sorted(curves["method"].unique())
    palette = colors(methods)
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for ax, dataset in zip(axes, datasets, strict=False):
        for method, frame in curves[curves["dataset"] == dataset].groupby("method", sort=True):
            ax.plot(frame["step"], frame["mean"], color=palette[method], marker="o", markersize=3)
            ax.fill_between(frame["step"], frame["lower"], frame["upper"], color=palette[method], alpha=0.2)
        ax.set_title(dataset if dataset in scored else dataset + RAW_MARK, fontsize=9)
        ax.set_xlabel("gradient step")
        ax.set_ylabel("normalised score (x100)" if dataset in scored else "raw return")
        ax.grid(alpha=0.3)
    for ax in axes[len(datasets) :]:
        ax.set_axis_off()
    figure.tight_layout()
    _legend_outside(figure, axes, methods, palette)
    return _save(figure, path)


def plot_improvement(improvement: pd.DataFrame, path: Path) -> bytes:
    """Heat map of P(row > column) with the interval under each value."""
    methods = sorted(set(improvement["x"]))
    figure = Figure(figsize=(1.0 * len(methods) + 2.5, 0.8 * len(methods) + 1.5))
    if not methods:
        _empty(figure, NO_AGGREGATE)
        return _save(figure, path)
    grid = improvement.pivot(index="x", columns="y", values="point").reindex(index=methods, columns=methods)
    indexed = improvement.set_index(["x", "y"])
    ax = figure.add_subplot()
    image = ax.imshow(grid.to_numpy(float), cmap="RdBu", vmin=0.0, vmax=1.0)
    for i, x in enumerate(methods):
        for j, y in enumerate(methods):
            if x != y:
                row = indexed.loc[(x, y)]
                text = f"{row['point']:.2f}\n[{row['lower']:.2f}, {row['upper']:.2f}]"
                shade = "white" if abs(row["point"] - 0.5) > 0.35 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=shade)
    ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
    ax.set_yticks(range(len(methods)), methods)
    ax.set_xlabel("Y")
    ax.set_ylabel("X")
    ax.set_title("P(X > Y) with 95% intervals", fontsize=10)
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return _save(figure, path)


def plot_score_vs_quality(points: pd.DataFrame, path: Path) -> bytes:
    """Final score against the dataset's TQ and SACo: one point (with its interval) per dataset x method."""
    figure = Figure(figsize=(10.0, 4.0))
    usable = points.dropna(subset=["tq", "saco"], how="all")
    if usable.empty:
        _empty(figure, "no dataset with reference scores has TQ or SACo")
        return _save(figure, path)
    methods = sorted(usable["method"].unique())
    palette = colors(methods)
    axes = figure.subplots(1, 2, sharey=True)
    quality_columns = (("tq", "TQ (trajectory quality)"), ("saco", "SACo (state-action coverage)"))
    for ax, (column, title) in zip(axes, quality_columns, strict=True):
        known = usable.dropna(subset=[column])
        # Methods side by side around each dataset's value (a small dodge), joined per method by a line.
        spread = float(np.ptp(known[column])) if len(known) else 0.0
        step = 0.012 * (spread or 1.0)
        for index, (method, frame) in enumerate(known.groupby("method", sort=True)):
            frame = frame.sort_values(column)
            x = frame[column] + (index - (len(methods) - 1) / 2) * step
            error = np.vstack([frame["mean"] - frame["lower"], frame["upper"] - frame["mean"]])
            ax.errorbar(
                x,
                frame["mean"],
                yerr=np.nan_to_num(error),
                fmt="o-",
                color=palette[method],
                capsize=2,
                markersize=4,
                linewidth=0.8,
                alpha=0.9,
            )
        for dataset, value in known.groupby("dataset")[column].first().items():
            ax.annotate(
                dataset.rsplit("/", 1)[-1],
                (value, 1.01),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                ha="center",
                va="bottom",
                color="dimgrey",
            )
        ax.set_xlabel(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("final normalised score (x100)")
    _legend_outside(figure, axes, methods, palette)
    return _save(figure, path)
