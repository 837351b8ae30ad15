"""Leaderboard report: markdown and self-contained HTML tables plus plots, from a results directory.

``offbench report DIR`` reads ``DIR/runs`` and ``DIR/evals`` (the parquet tables of
:mod:`offbench.bench.results`) and writes, into ``DIR`` or ``--out``:

- ``LEADERBOARD.md`` and ``leaderboard.html`` (inline CSS, plots embedded as base64 PNG), with
  - a per-dataset table: one row per dataset, one column per method, each cell ``mean ± h`` of the
    final normalised score over seeds, where ``h`` is the half-width of the 95% percentile-bootstrap
    interval of that mean (:func:`offbench.bench.stats.stratified_bootstrap_ci` on the seeds of the
    cell). Datasets without reference scores show the raw final return instead and are marked ``†``.
    A cell with a single seed has no interval and shows the mean alone; ``—`` marks a method that was
    not run on a dataset;
  - an aggregate table: IQM, median, mean and optimality gap (γ = 100) with stratified-bootstrap 95%
    intervals (:func:`offbench.bench.stats.aggregate_intervals`), over the datasets that have
    reference scores, for the methods that ran on all of them;
  - a per-dataset success-rate table, only when some dataset's environment reports success (OGBench):
    the final success rate in percent (``final_success_rate``, the mean over the last ``final_k``
    evaluations of the fraction of successful episodes), ``mean ± h`` over seeds as above, a diverged seed
    counting 0; datasets without a success signal are left out of it;
  - a runs table: datasets, seeds per dataset, diverged and failed seed counts per method;
- ``aggregate_intervals.png``, ``performance_profiles.png`` and ``learning_curves.png``.

Conventions, chosen to match rliable and CORL:

- A *method* is the row's ``label`` (the algorithm name, unless the suite entry names it, e.g.
  ``dqc-os``) for rows whose sampler is ``uniform`` and ``label+sampler`` otherwise (``iql`` and
  ``iql+rw`` side by side). When one method has several hyper-parameter configurations on a dataset
  (a grid), every row of that method is labelled ``method@hash`` with the first 6 characters of
  ``hparams_hash``.
- A diverged seed scores 0, the random-policy score, on datasets with reference scores; a raw return
  has no such reference, so there a diverged seed is left out of the cell (and counted). A *failed* seed
  is a runs row whose status is neither ``ok`` nor ``diverged``, or a seed of a job that the sweep
  recorded in ``DIR/failures/<job>.json`` (it raised, so it has no runs rows); it is counted, not scored.
- The aggregate needs a rectangular (seeds, datasets) matrix per method: a method missing a scored
  dataset is left out of the aggregate (the report says which), and one with unequal seed counts keeps
  its lowest-numbered seeds up to the smallest count.
- Dataset quality: when ``DIR/datasets.parquet`` exists (columns ``dataset`` plus any of ``tq`` and
  ``saco``; other columns are ignored) the per-dataset table gains ``TQ`` and ``SACo`` columns; without
  the file those columns are omitted.

Every interval is seeded (``seed``), so the same results give byte-identical files. ``reps`` sets the
bootstrap replications of the per-dataset and aggregate intervals (rliable's 50,000 by default),
``profile_reps`` those of the performance-profile and learning-curve bands (rliable's 2,000).
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from matplotlib.figure import Figure

from offbench.bench import results, stats

CONFIDENCE = 0.95
DEFAULT_REPS = 50_000
DEFAULT_PROFILE_REPS = 2_000
RAW_MARK = " †"
MISSING = "—"
NO_VALUE = "diverged"  # every seed of the cell diverged (or failed) on a raw-return dataset
PLOTS = {
    "aggregate_intervals.png": "Aggregate metrics with 95% stratified-bootstrap intervals",
    "performance_profiles.png": "Performance profiles (fraction of runs above a score) with 95% bands",
    "learning_curves.png": "Learning curves: mean over seeds with 95% bootstrap bands",
}
METRIC_TITLES = {"iqm": "IQM", "median": "Median", "mean": "Mean", "optimality_gap": "Optimality gap"}
# Run statuses with a final value; any other status is a failure.
FINISHED = ("ok", "diverged")
KEYS = ["algorithm", "label", "sampler", "dataset", "hparams_hash", "seed"]
RUNS_COLUMNS = [
    *KEYS,
    "final_score",
    "final_return",
    "final_success_rate",
    "status",
    "ref_min_score",
    "ref_max_score",
]
EVALS_COLUMNS = [*KEYS, "step", "return_mean", "normalized_score", "status"]


class ReportError(ValueError):
    """The results cannot be reported; the message says why and what to do."""


@dataclass(frozen=True)
class Tables:
    """Everything the report shows, as tidy frames (also handy in a notebook)."""

    cells: pd.DataFrame  # dataset, method, scored, seeds, mean, lower, upper, half_width
    aggregate: pd.DataFrame  # method, metric, point, lower, upper
    matrices: dict[str, np.ndarray]  # method -> (seeds, scored datasets), as aggregated
    counts: pd.DataFrame  # method, datasets, seeds, diverged, failed
    notes: list[str]
    success: pd.DataFrame  # as cells, in percent, for the datasets with a success signal; may be empty


def _read(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, KeyError) as error:
        raise ReportError(f"cannot read the {what} table at {path}: {error}") from error


def _read_results(path: Path, what: str, schema: pa.Schema, columns: list[str]) -> pd.DataFrame:
    """A runs or evals directory, files of older schema versions included (``results.read_table``)."""
    try:
        return results.read_table(path, schema, columns)
    except (OSError, ValueError, KeyError) as error:
        raise ReportError(f"cannot read the {what} table at {path}: {error}") from error


@dataclass(frozen=True)
class Results:
    """What the report reads from a results directory."""

    runs: pd.DataFrame
    evals: pd.DataFrame  # may be empty
    quality: pd.DataFrame | None  # DIR/datasets.parquet, when present
    failures: pd.DataFrame  # algorithm, label, sampler, seeds: one row per job in DIR/failures/*.json


def _failures(failures_dir: Path) -> pd.DataFrame:
    """The jobs a sweep recorded as failed (``failures/<job>.json``), from the job each record holds."""
    rows = []
    for path in sorted(failures_dir.glob("*.json")):
        try:
            job = json.loads(path.read_text())["job"]
            keys, seeds = results.failure_keys(job), len(job["seeds"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ReportError(f"cannot read the failure record {path}: {error}") from error
        rows.append(
            {
                "algorithm": keys["algorithm"],
                "label": keys["label"],
                "sampler": keys["sampler"],
                "seeds": seeds,
            }
        )
    return pd.DataFrame(rows, columns=["algorithm", "label", "sampler", "seeds"])


def load_results(results_dir: Path) -> Results:
    """Read a results directory; a missing evals/, datasets.parquet or failures/ is allowed."""
    runs_dir, evals_dir = results_dir / "runs", results_dir / "evals"
    if not any(runs_dir.glob("*.parquet")):
        raise ReportError(
            f"no runs parquet files in {runs_dir}: point the report at the --out directory of "
            "`offbench run` (it holds runs/ and evals/)."
        )
    runs = _read_results(runs_dir, "runs", results.RUNS_SCHEMA, RUNS_COLUMNS)
    if runs.empty:
        raise ReportError(f"the runs table in {runs_dir} has no rows: there is nothing to report.")
    has_evals = any(evals_dir.glob("*.parquet"))
    evals = (
        _read_results(evals_dir, "evals", results.EVALS_SCHEMA, EVALS_COLUMNS)
        if has_evals
        else runs.iloc[:0][KEYS].assign(
            step=pd.Series(dtype="int64"), return_mean=np.nan, normalized_score=np.nan, status=""
        )
    )
    quality_path = results_dir / "datasets.parquet"
    quality = None
    if quality_path.exists():
        quality = _read(quality_path, "dataset-quality")
        if "dataset" not in quality.columns:
            raise ReportError(
                f"{quality_path} needs a 'dataset' column (plus 'tq' and/or 'saco'), "
                f"found {list(quality.columns)}."
            )
    return Results(runs, evals, quality, _failures(results_dir / "failures"))


def _base_labels(frame: pd.DataFrame) -> pd.Series:
    """``label`` for the uniform sampler, ``label+sampler`` for any other."""
    return frame["label"].where(frame["sampler"] == "uniform", frame["label"] + "+" + frame["sampler"])


def method_labels(keys: pd.DataFrame) -> pd.Series:
    """The method name of each row of a frame with label, sampler, dataset and hparams_hash columns."""
    labels = _base_labels(keys)
    configs = keys.assign(label=labels).groupby(["label", "dataset"])["hparams_hash"].nunique()
    grid = set(configs[configs > 1].index.get_level_values("label"))
    suffixed = labels + "@" + keys["hparams_hash"].str[:6]
    return labels.where(~labels.isin(grid), suffixed)


def _label(runs: pd.DataFrame, evals: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Add a ``method`` column to both tables, labelled from the union of their keys (one naming)."""
    key_columns = ["label", "sampler", "dataset", "hparams_hash"]
    keys = pd.concat([runs[key_columns], evals[key_columns]]).drop_duplicates(ignore_index=True)
    keys["method"] = method_labels(keys)
    return runs.merge(keys, on=key_columns, how="left"), evals.merge(keys, on=key_columns, how="left")


def _scored_datasets(runs: pd.DataFrame) -> set[str]:
    has_refs = runs["ref_min_score"].notna() & runs["ref_max_score"].notna()
    by_dataset = has_refs.groupby(runs["dataset"]).all()
    return set(by_dataset[by_dataset].index)


def _values(frame: pd.DataFrame, scored: set[str], score: str, raw: str) -> pd.Series:
    """Per-row value: the normalised score (diverged = 0) on scored datasets, else the raw return."""
    is_scored = frame["dataset"].isin(scored)
    diverged = frame["status"] == "diverged"
    value = frame[score].where(is_scored, frame[raw]).astype(float)
    value = value.mask(is_scored & diverged, 0.0)
    return value.mask(~frame["status"].isin(FINISHED))


def _success_values(runs: pd.DataFrame) -> pd.Series:
    """Per row: the final success rate in percent (diverged = 0) where the dataset has a success signal."""
    has_signal = runs["final_success_rate"].notna().groupby(runs["dataset"]).transform("any")
    value = (100.0 * runs["final_success_rate"]).mask(has_signal & (runs["status"] == "diverged"), 0.0)
    return value.where(has_signal & runs["status"].isin(FINISHED))


def _cells(runs: pd.DataFrame, reps: int, seed: int) -> pd.DataFrame:
    """Per (dataset, method) of ``runs`` with a ``value`` column: seeds, mean and its 95% interval."""
    rows = []
    for (dataset, method), cell in runs.groupby(["dataset", "method"], sort=True):
        values = cell["value"].dropna().to_numpy(float)
        lower, upper = _mean_interval(values, reps, seed)
        rows.append(
            {
                "dataset": dataset,
                "method": method,
                "seeds": len(values),
                "mean": values.mean() if len(values) else np.nan,
                "lower": lower,
                "upper": upper,
                "half_width": (upper - lower) / 2.0,
            }
        )
    return pd.DataFrame(rows, columns=["dataset", "method", "seeds", "mean", "lower", "upper", "half_width"])


def _mean_interval(values: np.ndarray, reps: int, seed: int) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of one cell's seeds (NaN bounds for a single seed)."""
    if len(values) < 2:
        return np.nan, np.nan
    interval = stats.stratified_bootstrap_ci(values[:, None], stats.aggregate_mean, reps, CONFIDENCE, seed)
    return interval.lower, interval.upper


def compute_tables(data: Results, reps: int = DEFAULT_REPS, seed: int = 0) -> tuple[Tables, pd.DataFrame]:
    """The report's tables, and the labelled evals (for the learning curves)."""
    runs, evals = _label(data.runs, data.evals)
    scored = _scored_datasets(runs)
    runs = runs.assign(value=_values(runs, scored, "final_score", "final_return"))
    notes: list[str] = []

    cells = _cells(runs, reps, seed)
    cells.insert(2, "scored", cells["dataset"].isin(scored))
    with_success = runs.assign(value=_success_values(runs))
    success = _cells(with_success[with_success["value"].notna()], reps, seed)

    counts = _counts(runs, data.failures, cells)
    matrices = _aggregate_matrices(runs, scored, notes)
    aggregate = (
        stats.aggregate_intervals(matrices, tuple(METRIC_TITLES), reps, CONFIDENCE, seed)
        if matrices
        else pd.DataFrame(columns=["method", "metric", "point", "lower", "upper"])
    )
    return Tables(cells, aggregate, matrices, counts, notes, success), evals


def _counts(runs: pd.DataFrame, failures: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """Per method: datasets, seeds per dataset (a range when they differ), diverged and failed seeds."""
    method = runs["method"]
    failed_jobs = failures["seeds"].groupby(_base_labels(failures)).sum()
    seeds = cells.groupby("method")["seeds"].agg(["min", "max"])
    counts = pd.DataFrame(
        {
            "datasets": runs.groupby("method")["dataset"].nunique(),
            "seeds": pd.Series(
                [
                    str(lo) if lo == hi else f"{lo}–{hi}"
                    for lo, hi in zip(seeds["min"], seeds["max"], strict=True)
                ],
                index=seeds.index,
                dtype=object,
            ),
            "diverged": (runs["status"] == "diverged").groupby(method).sum(),
            "failed": (~runs["status"].isin(FINISHED)).groupby(method).sum().add(failed_jobs, fill_value=0),
        }
    )
    counts = counts.fillna({"datasets": 0, "seeds": "0", "diverged": 0, "failed": 0})
    counts = counts.astype({"datasets": int, "diverged": int, "failed": int})
    return counts.rename_axis("method").reset_index()


def _aggregate_matrices(runs: pd.DataFrame, scored: set[str], notes: list[str]) -> dict[str, np.ndarray]:
    """(seeds, scored datasets) matrices of the methods that ran on every scored dataset."""
    if not scored:
        notes.append("No dataset has reference scores, so there is no aggregate over datasets.")
        return {}
    usable = runs[runs["dataset"].isin(scored) & runs["value"].notna()]
    complete, incomplete = [], []
    for method, frame in usable.groupby("method", sort=True):
        (complete if set(frame["dataset"]) == scored else incomplete).append(method)
    if incomplete:
        notes.append(
            f"Left out of the aggregate (not run on every dataset with reference scores): "
            f"{', '.join(incomplete)}."
        )
    kept = []
    for method in complete:
        frame = usable[usable["method"] == method]
        smallest = int(frame.groupby("dataset").size().min())
        if frame.groupby("dataset").size().nunique() > 1:
            notes.append(
                f"{method}: unequal seed counts across datasets; the aggregate keeps its first {smallest}."
            )
        kept.append(frame.sort_values("seed").groupby("dataset").head(smallest))
    if not kept:
        return {}
    return stats.score_matrices(pd.concat(kept), score_column="value")


def _format_cell(cell: pd.Series) -> str:
    if cell["seeds"] == 0:
        return NO_VALUE
    if np.isnan(cell["half_width"]):
        return f"{cell['mean']:.1f}"
    return f"{cell['mean']:.1f} ± {cell['half_width']:.1f}"


def _grid(cells: pd.DataFrame) -> pd.DataFrame:
    """Formatted cells pivoted to one row per dataset, one column per method (sorted)."""
    grid = cells.assign(text=cells.apply(_format_cell, axis=1)).pivot(
        index="dataset", columns="method", values="text"
    )
    return grid.reindex(columns=sorted(grid.columns)).fillna(MISSING)


def per_dataset_display(tables: Tables, quality: pd.DataFrame | None) -> pd.DataFrame:
    """The per-dataset table as strings: Dataset, [TQ, SACo], one column per method."""
    cells = tables.cells
    grid = _grid(cells)
    scored = cells.groupby("dataset")["scored"].first()
    display = pd.DataFrame({"Dataset": [d if scored[d] else d + RAW_MARK for d in grid.index]})
    if quality is not None:
        indexed = quality.drop_duplicates("dataset").set_index("dataset")
        for column, title in (("tq", "TQ"), ("saco", "SACo")):
            if column in indexed.columns:
                values = indexed[column].reindex(grid.index)
                display[title] = [MISSING if pd.isna(v) else f"{v:.2f}" for v in values]
    for method in grid.columns:
        display[method] = grid[method].to_numpy()
    return display


def success_display(tables: Tables) -> pd.DataFrame:
    """The success-rate table as strings: Dataset, one column per method that ran on one of its datasets."""
    grid = _grid(tables.success)
    return pd.DataFrame({"Dataset": grid.index, **{method: grid[method].to_numpy() for method in grid}})


def aggregate_display(tables: Tables) -> pd.DataFrame:
    """The aggregate table as strings: Method, then ``point [lower, upper]`` per metric."""
    rows = []
    for method, frame in tables.aggregate.groupby("method", sort=True):
        by_metric = frame.set_index("metric")
        row = {"Method": method}
        for metric, title in METRIC_TITLES.items():
            m = by_metric.loc[metric]
            row[title] = f"{m['point']:.1f} [{m['lower']:.1f}, {m['upper']:.1f}]"
        rows.append(row)
    return pd.DataFrame(rows, columns=["Method", *METRIC_TITLES.values()])


def counts_display(tables: Tables) -> pd.DataFrame:
    return tables.counts.rename(
        columns={
            "method": "Method",
            "datasets": "Datasets",
            "seeds": "Seeds per dataset",
            "diverged": "Diverged",
            "failed": "Failed",
        }
    ).astype(str)


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub pipe table (no tabulate dependency); the first column left-aligned, the rest right."""

    def row(values: list[str]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    rule = "|" + "|".join([":---"] + ["---:"] * (len(frame.columns) - 1)) + "|"
    return "\n".join([row(list(frame.columns)), rule, *(row(list(r)) for r in frame.itertuples(index=False))])


def html_table(frame: pd.DataFrame, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
        for r in frame.itertuples(index=False)
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


# ---------------------------------------------------------------------------------------------- plots


def _save(figure: Figure, path: Path) -> bytes:
    buffer = io.BytesIO()
    # No "Software" metadata: the PNG bytes then depend only on the data, not the matplotlib version.
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    data = buffer.getvalue()
    path.write_bytes(data)
    return data


def _empty(figure: Figure, message: str) -> None:
    axes = figure.add_subplot()
    axes.text(0.5, 0.5, message, ha="center", va="center", wrap=True)
    axes.set_axis_off()


def plot_aggregates(aggregate: pd.DataFrame, path: Path) -> bytes:
    methods = sorted(aggregate["method"].unique())
    figure = Figure(figsize=(3.2 * len(METRIC_TITLES), 0.5 * len(methods) + 1.4))
    if not methods:
        _empty(figure, "no method ran on every dataset with reference scores")
        return _save(figure, path)
    colors = _colors(methods)
    axes = figure.subplots(1, len(METRIC_TITLES), sharey=True)
    for ax, (metric, title) in zip(axes, METRIC_TITLES.items(), strict=True):
        frame = aggregate[aggregate["metric"] == metric].set_index("method")
        for y, method in enumerate(methods):
            row = frame.loc[method]
            ax.barh(
                y,
                row["upper"] - row["lower"],
                left=row["lower"],
                height=0.6,
                color=colors[method],
                alpha=0.75,
            )
            ax.vlines(row["point"], y - 0.3, y + 0.3, color="black", linewidth=1.5)
        ax.set_title(title + (" (lower is better)" if metric == "optimality_gap" else ""), fontsize=10)
        ax.set_xlabel("normalised score")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(methods)), methods)
    axes[0].invert_yaxis()
    return _save(figure, path)


def plot_profiles(matrices: dict[str, np.ndarray], path: Path, reps: int, seed: int) -> bytes:
    figure = Figure(figsize=(6.5, 4.2))
    if not matrices:
        _empty(figure, "no method ran on every dataset with reference scores")
        return _save(figure, path)
    pooled = np.concatenate([m.ravel() for m in matrices.values()])
    taus = np.linspace(min(0.0, pooled.min()), max(100.0, pooled.max()), 101)
    profiles = stats.performance_profile(matrices, taus, reps, CONFIDENCE, seed)
    colors = _colors(list(matrices))
    ax = figure.add_subplot()
    for method, frame in profiles.groupby("method", sort=True):
        ax.plot(frame["tau"], frame["fraction"], color=colors[method], label=method)
        ax.fill_between(frame["tau"], frame["lower"], frame["upper"], color=colors[method], alpha=0.2)
    ax.set_xlabel("normalised score τ")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(figure, path)


def learning_curves(evals: pd.DataFrame, scored: set[str], reps: int, seed: int) -> pd.DataFrame:
    """Mean over seeds and its percentile-bootstrap interval at each evaluation step.

    The same value conventions as the tables: normalised score with diverged seeds at 0 on scored
    datasets, raw return without diverged seeds elsewhere.
    """
    values = evals.assign(value=_values(evals, scored, "normalized_score", "return_mean")).dropna(
        subset=["value"]
    )
    rows = []
    for (dataset, method, step), frame in values.groupby(["dataset", "method", "step"], sort=True):
        points = frame["value"].to_numpy(float)
        lower, upper = _mean_interval(points, reps, seed)
        rows.append(
            {
                "dataset": dataset,
                "method": method,
                "step": step,
                "mean": points.mean(),
                "lower": lower,
                "upper": upper,
            }
        )
    return pd.DataFrame(rows, columns=["dataset", "method", "step", "mean", "lower", "upper"])


def plot_learning_curves(curves: pd.DataFrame, scored: set[str], path: Path) -> bytes:
    datasets = sorted(curves["dataset"].unique())
    columns = min(3, max(1, len(datasets)))
    rows = -(-len(datasets) // columns) if datasets else 1
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows))
    if not datasets:
        _empty(figure, "no evaluations found (evals/ is empty)")
        return _save(figure, path)
    colors = _colors(sorted(curves["method"].unique()))
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for ax, dataset in zip(axes, datasets, strict=False):
        for method, frame in curves[curves["dataset"] == dataset].groupby("method", sort=True):
            ax.plot(frame["step"], frame["mean"], color=colors[method], label=method)
            ax.fill_between(frame["step"], frame["lower"], frame["upper"], color=colors[method], alpha=0.2)
        ax.set_title(dataset if dataset in scored else dataset + RAW_MARK, fontsize=9)
        ax.set_xlabel("gradient step")
        ax.set_ylabel("normalised score" if dataset in scored else "raw return")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(datasets) :]:
        ax.set_axis_off()
    figure.tight_layout()
    return _save(figure, path)


def _colors(methods: list[str]) -> dict[str, tuple[float, ...]]:
    """A fixed colour per method name (sorted order), so every plot agrees."""
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {method: palette(i % palette.N) for i, method in enumerate(sorted(methods))}


# ---------------------------------------------------------------------------------------------- output


HTML_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto; max-width: 72rem;
       color: #1d1d1f; padding: 0 1rem; }
h1, h2 { font-weight: 600; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3rem 0.7rem; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #444; }
tbody tr:nth-child(even) { background: #f6f6f8; }
p.note { color: #555; font-size: 0.85rem; max-width: 60rem; }
img { max-width: 100%; display: block; margin: 0.5rem 0 1.5rem; }
"""


def _explanations(tables: Tables, reps: int, profile_reps: int, seed: int) -> dict[str, str]:
    runs_total = int(tables.cells["seeds"].sum())
    scored = sorted(tables.cells.loc[tables.cells["scored"], "dataset"].unique())
    return {
        "intro": (
            f"Methods: {tables.cells['method'].nunique()}, datasets: {tables.cells['dataset'].nunique()}, "
            f"runs in the tables: {runs_total}. A method is the algorithm (or the suite's label for it), "
            "or algorithm+sampler when the sampler is not uniform."
        ),
        "per_dataset": (
            "Final normalised score (D4RL ×100): mean over seeds ± half-width of the 95% percentile-"
            f"bootstrap interval of the mean ({reps:,} resamples, seed {seed}). A diverged seed scores 0. "
            f"{RAW_MARK.strip()} no reference scores: raw final return, diverged seeds left out "
            f"('{NO_VALUE}': all of them). "
            f"{MISSING} not run."
        ),
        "aggregate": (
            f"Over the {len(scored)} datasets with reference scores: point estimate "
            f"[95% stratified-bootstrap interval] ({reps:,} resamples of the seeds within each dataset, "
            f"seed {seed}). "
            "IQM: 25% trimmed mean of all runs pooled. Optimality gap: 100 − mean of min(score, 100), "
            "lower is better."
        ),
        "success": (
            "Final success rate in percent (mean over the last evaluations of the fraction of episodes "
            "that ended in success), on the datasets whose environment reports success: mean over seeds ± "
            f"half-width of the 95% percentile-bootstrap interval ({reps:,} resamples, seed {seed}). A "
            f"diverged seed counts 0. {MISSING} not run."
        ),
        "plots": f"Performance-profile and learning-curve bands: {profile_reps:,} bootstrap resamples.",
    }


def render_markdown(
    tables: Tables, quality: pd.DataFrame | None, text: dict[str, str], plot_names: list[str]
) -> str:
    parts = ["# offbench leaderboard", "", text["intro"], ""]
    parts += [
        "## Per-dataset final scores",
        "",
        text["per_dataset"],
        "",
        markdown_table(per_dataset_display(tables, quality)),
        "",
    ]
    if len(tables.success):
        parts += ["## Per-dataset success rates", "", text["success"], ""]
        parts += [markdown_table(success_display(tables)), ""]
    aggregate = aggregate_display(tables)
    parts += ["## Aggregate", ""]
    parts += [text["aggregate"], "", markdown_table(aggregate)] if len(aggregate) else ["No aggregate."]
    parts += [""]
    parts += [f"- {note}" for note in tables.notes] + ([""] if tables.notes else [])
    parts += ["## Runs", "", markdown_table(counts_display(tables)), ""]
    parts += ["## Plots", "", text["plots"], ""]
    parts += [f"![{PLOTS[name]}]({name})\n" for name in plot_names]
    return "\n".join(parts)


def render_html(
    tables: Tables, quality: pd.DataFrame | None, text: dict[str, str], images: dict[str, bytes]
) -> str:
    aggregate = aggregate_display(tables)
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in tables.notes)
    aggregate_html = (
        f'<p class="note">{html.escape(text["aggregate"])}</p>{html_table(aggregate, "aggregate")}'
        if len(aggregate)
        else "<p>No aggregate.</p>"
    )
    success_html = (
        f'<h2>Per-dataset success rates</h2><p class="note">{html.escape(text["success"])}</p>'
        f"{html_table(success_display(tables), 'success')}"
        if len(tables.success)
        else ""
    )
    figures = "".join(
        f'<h3>{html.escape(PLOTS[name])}</h3><img alt="{html.escape(PLOTS[name])}" '
        f'src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'
        for name, data in images.items()
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>offbench leaderboard</title><style>{HTML_STYLE}</style></head><body>"
        f"<h1>offbench leaderboard</h1><p>{html.escape(text['intro'])}</p>"
        f'<h2>Per-dataset final scores</h2><p class="note">{html.escape(text["per_dataset"])}</p>'
        f"{html_table(per_dataset_display(tables, quality), 'per-dataset')}{success_html}"
        f"<h2>Aggregate</h2>{aggregate_html}{notes}"
        f"<h2>Runs</h2>{html_table(counts_display(tables), 'runs')}"
        f'<h2>Plots</h2><p class="note">{html.escape(text["plots"])}</p>{figures}'
        "</body></html>\n"
    )


def write_report(
    results_dir: str | Path,
    out: str | Path | None = None,
    reps: int = DEFAULT_REPS,
    profile_reps: int = DEFAULT_PROFILE_REPS,
    seed: int = 0,
) -> list[Path]:
    """Write the leaderboard (markdown, HTML, PNGs) for ``results_dir`` into ``out``; return the paths."""
    results_dir = Path(results_dir)
    out_dir = Path(out) if out is not None else results_dir
    if reps < 1 or profile_reps < 1:
        raise ReportError(f"reps and profile_reps must be positive, got {reps} and {profile_reps}.")
    data = load_results(results_dir)
    tables, labelled_evals = compute_tables(data, reps, seed)
    scored = set(tables.cells.loc[tables.cells["scored"], "dataset"])
    out_dir.mkdir(parents=True, exist_ok=True)

    curves = learning_curves(labelled_evals, scored, profile_reps, seed)
    images = {
        "aggregate_intervals.png": plot_aggregates(tables.aggregate, out_dir / "aggregate_intervals.png"),
        "performance_profiles.png": plot_profiles(
            tables.matrices, out_dir / "performance_profiles.png", profile_reps, seed
        ),
        "learning_curves.png": plot_learning_curves(curves, scored, out_dir / "learning_curves.png"),
    }
    text = _explanations(tables, reps, profile_reps, seed)
    markdown_path, html_path = out_dir / "LEADERBOARD.md", out_dir / "leaderboard.html"
    markdown_path.write_text(render_markdown(tables, data.quality, text, list(images)), encoding="utf-8")
    html_path.write_text(render_html(tables, data.quality, text, images), encoding="utf-8")
    return [markdown_path, html_path, *(out_dir / name for name in images)]
