"""The leaderboard's text: display tables, header lines, explanations and the markdown page.

From the numbers :func:`offbench.bench.report.compute_tables` computes; :mod:`offbench.bench.render_html`
lays the same tables out as HTML and :mod:`offbench.bench.leaderboard` writes the files:

- ``LEADERBOARD.md`` and ``leaderboard.html``, each starting with a header read from the rows (suite and
  its description, budget, runs, commits, dates, devices, and a note when the budget is under a tenth of
  the papers' 1M updates), then the per-dataset table (dataset size, TQ and SACo beside each method's
  ``mean ± h``, ``h`` the half-width of the 95% bootstrap interval of the mean over seeds; the best mean
  per row in bold), the success-rate table (OGBench), the aggregate table, the probability-of-improvement
  matrix, the hyper-parameters of every method, the runs table and the plots. The HTML inlines its CSS,
  a small sorting script and the plots (base64 PNG), and links the parquet tables and the suite;
- ``aggregate_intervals.png``, ``probability_of_improvement.png``, ``performance_profiles.png``,
  ``learning_curves.png`` and ``score_vs_quality.png`` (:mod:`offbench.bench.plots`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from offbench.bench import plots, report
from offbench.bench.report import METRIC_TITLES, Tables
from offbench.bench.report_facts import NOT_RECORDED, PAPER_UPDATES, QUALITY_SOURCES, Header

MISSING = "—"
NO_VALUE = "diverged"  # every seed of the cell diverged (or failed) on a raw-return dataset
RAW_MARK = plots.RAW_MARK
PLOTS = {
    "aggregate_intervals.png": "Aggregate metrics with 95% stratified-bootstrap intervals",
    "probability_of_improvement.png": "Probability of improvement P(X > Y) with 95% intervals",
    "performance_profiles.png": "Performance profiles (fraction of runs above a score) with 95% bands",
    "learning_curves.png": "Learning curves: mean over seeds at every evaluation, 95% bootstrap bands",
    "score_vs_quality.png": "Final score against dataset quality (TQ, SACo), a point per dataset and method",
}
SOURCE_MARKS = {"published": " (published)", "suite": " (suite)", "default": ""}


# ---------------------------------------------------------------------------------------------- header


def _range(values: tuple[int, ...], unit: str = "") -> str:
    if not values:
        return NOT_RECORDED
    return " / ".join(f"{v:,}{unit}" for v in values)


def _seeds(seeds: tuple[int, ...]) -> str:
    if seeds and seeds == tuple(range(seeds[0], seeds[-1] + 1)) and len(seeds) > 2:
        return f"{len(seeds)} ({seeds[0]}–{seeds[-1]})"
    return f"{len(seeds)} ({', '.join(map(str, seeds))})"


def header_lines(header: Header) -> list[tuple[str, str]]:
    """(field, value) lines of the report's header, every value read from the rows."""
    suites = "; ".join(f"{name}: {text}" if text else name for name, text in header.suites) or NOT_RECORDED
    failed = f", plus {header.failed_seeds} failed seeds without rows" if header.failed_seeds else ""
    return [
        ("Suite", suites),
        ("Updates per seed", _range(header.steps)),
        ("Evaluation", f"every {_range(header.eval_every)} updates, {_range(header.eval_episodes)} episodes"),
        ("Final score", f"mean of the last {_range(header.final_k)} evaluations"),
        ("Seeds", _seeds(header.seeds)),
        ("Runs", f"{header.runs} (one per seed and job){failed}"),
        ("Code", ", ".join(header.commits)),
        ("Written", " to ".join(dict.fromkeys(header.dates)) or NOT_RECORDED),
        ("Devices", ", ".join(header.devices)),
    ]


def early_learning_note(header: Header) -> str:
    if not header.early_learning:
        return ""
    return (
        f"Early learning only: {max(header.steps):,} updates per seed is "
        f"{100 * max(header.steps) / PAPER_UPDATES:.2g}% of the papers' {PAPER_UPDATES:,}, so this "
        "ranking reflects how fast each method learns at this budget, not its final performance."
    )


# ---------------------------------------------------------------------------------------------- tables


def _format_cell(cell: pd.Series) -> str:
    if cell["seeds"] == 0:
        return NO_VALUE
    if np.isnan(cell["half_width"]):
        return f"{cell['mean']:.1f}"
    return f"{cell['mean']:.1f} ± {cell['half_width']:.1f}"


def _grid(cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Formatted cells pivoted to one row per dataset, one column per method (sorted), and which cell of
    each row has the best (highest) mean."""
    grid = cells.assign(text=cells.apply(_format_cell, axis=1)).pivot(
        index="dataset", columns="method", values="text"
    )
    means = cells.pivot(index="dataset", columns="method", values="mean")
    columns = sorted(grid.columns)
    grid, means = grid.reindex(columns=columns).fillna(MISSING), means.reindex(columns=columns)
    best = (
        means.eq(means.max(axis=1), axis=0)
        & means.notna()
        & (means.notna().sum(axis=1) > 1).to_numpy()[:, None]
    )
    return grid, best


def _number(value: float, digits: int = 2) -> str:
    return MISSING if pd.isna(value) else f"{value:.{digits}f}"


def _count(value: float) -> str:
    return MISSING if pd.isna(value) else f"{int(value):,}"


def per_dataset_display(tables: Tables) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-dataset table as strings (Dataset, Transitions, Episodes, TQ, SACo, one column per method)
    and a same-shaped frame of which cells are the row's best."""
    grid, best = _grid(tables.cells)
    scored = tables.scored
    quality = tables.quality.set_index("dataset").reindex(grid.index)
    display = pd.DataFrame({"Dataset": [d if d in scored else d + RAW_MARK for d in grid.index]})
    display["Transitions"] = [_count(v) for v in quality["transitions"]]
    display["Episodes"] = [_count(v) for v in quality["episodes"]]
    display["TQ"] = [_number(v) for v in quality["tq"]]
    display["SACo"] = [_number(v) for v in quality["saco"]]
    marks = pd.DataFrame(False, index=display.index, columns=display.columns)
    for method in grid.columns:
        display[method] = grid[method].to_numpy()
        marks[method] = best[method].to_numpy()
    return display, marks


def success_display(tables: Tables) -> tuple[pd.DataFrame, pd.DataFrame]:
    grid, best = _grid(tables.success)
    display = pd.DataFrame({"Dataset": grid.index, **{m: grid[m].to_numpy() for m in grid}})
    marks = pd.DataFrame({"Dataset": False, **{m: best[m].to_numpy() for m in grid}}, index=display.index)
    return display, marks


def aggregate_display(tables: Tables) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Method, then ``point [lower, upper]`` per metric; the best point per metric marked."""
    points = tables.aggregate.pivot(index="method", columns="metric", values="point")
    display = pd.DataFrame({"Method": points.index})
    marks = pd.DataFrame({"Method": [False] * len(points)})
    indexed = tables.aggregate.set_index(["method", "metric"])
    for metric, title in METRIC_TITLES.items():
        if metric not in points:
            continue
        rows = [indexed.loc[(m, metric)] for m in points.index]
        display[title] = [f"{r['point']:.1f} [{r['lower']:.1f}, {r['upper']:.1f}]" for r in rows]
        best = points[metric].min() if metric == "optimality_gap" else points[metric].max()
        marks[title] = (points[metric] == best).to_numpy() & (len(points) > 1)
    return display, marks


def improvement_display(tables: Tables) -> pd.DataFrame:
    """P(row > column) ``point [lower, upper]``; the diagonal is empty."""
    methods = sorted(tables.matrices)
    indexed = tables.improvement.set_index(["x", "y"])
    rows = []
    for x in methods:
        row = {"X \\ Y": x}
        for y in methods:
            cell = indexed.loc[(x, y)] if x != y else None
            row[y] = (
                MISSING if cell is None else f"{cell['point']:.2f} [{cell['lower']:.2f}, {cell['upper']:.2f}]"
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=["X \\ Y", *methods])


def hparams_display(tables: Tables) -> pd.DataFrame:
    """Per method: the values shared by every dataset, and per dataset those that differ or are published."""
    rows = []
    for method, frame in tables.hparams.groupby("method", sort=True):
        datasets = frame["dataset"].nunique()
        shared, per_dataset = [], {}
        for name, values in frame.groupby("name", sort=True):
            same = (
                values["value"].nunique() == 1 and values["source"].nunique() == 1 and len(values) == datasets
            )
            if same and values["source"].iloc[0] != "published":
                shared.append(f"{name}={values['value'].iloc[0]}{SOURCE_MARKS[values['source'].iloc[0]]}")
                continue
            for dataset, value, source in values[["dataset", "value", "source"]].itertuples(index=False):
                per_dataset.setdefault(dataset, []).append(f"{name}={value}{SOURCE_MARKS[source]}")
        specific = "; ".join(f"{d}: {', '.join(v)}" for d, v in sorted(per_dataset.items()))
        rows.append(
            {"Method": method, "Every dataset": ", ".join(shared), "Per dataset": specific or MISSING}
        )
    return pd.DataFrame(rows, columns=["Method", "Every dataset", "Per dataset"])


def counts_display(tables: Tables) -> pd.DataFrame:
    names = {"method": "Method", "datasets": "Datasets", "seeds": "Seeds per dataset"}
    return tables.counts.rename(columns={**names, "diverged": "Diverged", "failed": "Failed"}).astype(str)


def explanations(tables: Tables, reps: int, profile_reps: int, seed: int) -> dict[str, str]:
    scored = sorted(tables.scored)
    sources = sorted(set(tables.quality["source"]) - {""})
    return {
        "intro": (
            f"Methods: {tables.cells['method'].nunique()}, datasets: {tables.cells['dataset'].nunique()}. "
            "A method is the algorithm (or the suite's label for it), or algorithm+sampler when the "
            "sampler is not uniform."
        ),
        "per_dataset": (
            "Final normalised score (D4RL x100, 0 = random, 100 = expert): mean over seeds ± half-width of "
            f"the 95% percentile-bootstrap interval of the mean ({reps:,} resamples, seed {seed}); the "
            "best mean of each row in bold. A diverged seed scores 0. "
            f"{RAW_MARK.strip()} no reference scores: raw final return, diverged seeds left out "
            f"('{NO_VALUE}': all of them). {MISSING} not run or not known. Dataset size, TQ (trajectory "
            "quality: mean episode return, normalised to the references) and SACo (state-action coverage "
            "relative to the medium-replay dataset), from "
            f"{', '.join(QUALITY_SOURCES[s] for s in sources) or 'nowhere (not recorded)'}."
        ),
        "aggregate": (
            f"Over the {len(scored)} datasets with reference scores: point estimate "
            f"[95% stratified-bootstrap interval] ({reps:,} resamples of the seeds within each dataset, "
            f"seed {seed}); the best of each column in bold. IQM: 25% trimmed mean of all runs pooled. "
            f"Optimality gap: {report.SCALE:g} − mean of min(score, {report.SCALE:g}) (the expert score on "
            "the x100 scale), lower is better."
        ),
        "improvement": (
            "P(X > Y): the probability that a run of X (row) scores above a run of Y (column) on the same "
            "dataset, averaged over the datasets of the aggregate (rliable's probability of improvement), "
            f"with its 95% stratified-bootstrap interval ({reps:,} resamples, seed {seed}). An interval "
            "that excludes 0.50 says the two differ beyond the seed-to-seed noise."
        ),
        "hparams": (
            "Resolved hyper-parameters as the rows record them. (published): the algorithm's published "
            "per-dataset setting (its DATASET_OVERRIDES) for that dataset; (suite): set by the suite or "
            "command line, not the algorithm's default."
        ),
        "success": (
            "Final success rate in percent (mean over the last evaluations of the fraction of episodes "
            "that ended in success), on the datasets whose environment reports success: mean over seeds ± "
            f"half-width of the 95% percentile-bootstrap interval ({reps:,} resamples, seed {seed}). A "
            f"diverged seed counts 0. {MISSING} not run."
        ),
        "plots": (
            f"Performance-profile and learning-curve bands: {profile_reps:,} bootstrap resamples. The "
            "profiles span the range the scores occupy."
        ),
    }


# ---------------------------------------------------------------------------------------------- markdown


def markdown_table(frame: pd.DataFrame, marks: pd.DataFrame | None = None, text_columns: int = 1) -> str:
    """A GitHub pipe table (no tabulate dependency): the first ``text_columns`` left-aligned, the rest
    (numbers) right, the cells flagged in ``marks`` in bold."""

    def row(values: list[str], bold: list[bool]) -> str:
        cells = [str(v).replace("|", "\\|") for v in values]
        return "| " + " | ".join(f"**{c}**" if b else c for c, b in zip(cells, bold, strict=True)) + " |"

    plain = [False] * len(frame.columns)
    flags = marks.to_numpy(bool) if marks is not None else np.zeros(frame.shape, bool)
    left = min(text_columns, len(frame.columns))
    rule = "|" + "|".join([":---"] * left + ["---:"] * (len(frame.columns) - left)) + "|"
    body = [row(list(r), list(f)) for r, f in zip(frame.itertuples(index=False), flags, strict=True)]
    return "\n".join([row(list(frame.columns), plain), rule, *body])


def render_markdown(tables: Tables, text: dict[str, str], plot_names: list[str]) -> str:
    parts = ["# offbench leaderboard", ""]
    parts += [f"- **{field}**: {value}" for field, value in header_lines(tables.header)]
    note = early_learning_note(tables.header)
    parts += ["", f"> **{note}**" if note else "", "", text["intro"], ""]
    per_dataset = per_dataset_display(tables)
    parts += ["## Per-dataset final scores", "", text["per_dataset"], "", markdown_table(*per_dataset), ""]
    if len(tables.success):
        parts += ["## Per-dataset success rates", "", text["success"], ""]
        parts += [markdown_table(*success_display(tables)), ""]
    parts += ["## Aggregate", ""]
    if len(tables.aggregate):
        parts += [text["aggregate"], "", markdown_table(*aggregate_display(tables)), ""]
        parts += ["## Probability of improvement", "", text["improvement"], ""]
        parts += [markdown_table(improvement_display(tables)), ""]
    else:
        parts += ["No aggregate.", ""]
    parts += [f"- {note}" for note in tables.notes] + ([""] if tables.notes else [])
    parts += [
        "## Hyper-parameters",
        "",
        text["hparams"],
        "",
        markdown_table(hparams_display(tables), text_columns=3),
        "",
    ]
    parts += ["## Runs", "", markdown_table(counts_display(tables)), ""]
    parts += ["## Plots", "", text["plots"], ""]
    parts += [f"![{PLOTS[name]}]({name})\n" for name in plot_names]
    return "\n".join(parts)
