"""Leaderboard numbers from a results directory: what ``offbench report`` shows, as tidy frames.

This module computes; :mod:`offbench.bench.render` writes ``LEADERBOARD.md``, ``leaderboard.html`` and
the plots (:mod:`offbench.bench.plots`) from what it computes. A notebook gets the page's numbers with::

    data = report.load_results(Path("results/default"))
    tables = report.compute_tables(data)  # the same reps and seed as `offbench report`

:func:`compute_tables` reads ``DIR/runs`` and ``DIR/evals`` (the parquet tables of
:mod:`offbench.bench.results`) and returns :class:`Tables`:

- ``cells``: per (dataset, method) the final normalised score, mean over seeds and the 95% percentile-
  bootstrap interval of that mean (:func:`offbench.bench.stats.stratified_bootstrap_ci` on the seeds of
  the cell). Datasets without reference scores hold the raw final return instead (``scored`` False);
- ``aggregate``: IQM, median, mean and optimality gap (threshold 100, the D4RL x100 scale) with
  stratified-bootstrap 95% intervals (:func:`offbench.bench.stats.aggregate_intervals`) over the
  datasets with reference scores, for the methods that ran on all of them;
- ``improvement``: P(X > Y), rliable's average probability of improvement, with its 95% interval for
  every ordered pair of those methods (:func:`offbench.bench.stats.probability_of_improvement_interval`);
- ``success``: the final success rate in percent, where a dataset's environment reports success (OGBench);
- ``counts``: datasets, seeds, diverged and failed seeds per method;
- ``quality``: each dataset's size, TQ and SACo (see :mod:`offbench.bench.report_facts`);
- ``hparams``: each method's resolved hyper-parameters per dataset, published overrides marked;
- ``header``: the budget and provenance the rows carry (:class:`offbench.bench.report_facts.Header`).

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
  dataset is left out of the aggregate (the notes say which), and one with unequal seed counts keeps
  its lowest-numbered seeds up to the smallest count.

Every interval is seeded (``seed``), so the same results give the same numbers. ``reps`` sets the
bootstrap replications of the per-dataset, aggregate and probability-of-improvement intervals
(rliable's 50,000 by default); the performance-profile and learning-curve bands use their own
(``profile_reps``, rliable's 2,000).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from offbench.bench import report_facts, results, stats

CONFIDENCE = 0.95
DEFAULT_REPS = 50_000
DEFAULT_PROFILE_REPS = 2_000
SCALE = 100.0  # normalised scores are on the D4RL x100 scale (stats.SCALES)
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
    *report_facts.RUNS_COLUMNS,
]
EVALS_COLUMNS = [*KEYS, "step", "return_mean", "normalized_score", "status", "episodes"]
ReportError = report_facts.ReportError


@dataclass(frozen=True)
class Results:
    """What the report reads from a results directory."""

    runs: pd.DataFrame
    evals: pd.DataFrame  # may be empty
    quality: pd.DataFrame | None  # DIR/datasets.parquet, when present
    failures: pd.DataFrame  # algorithm, label, sampler, seeds: one row per job in DIR/failures/*.json


@dataclass(frozen=True)
class Tables:
    """Everything the report shows, as tidy frames."""

    cells: pd.DataFrame  # dataset, method, scored, seeds, mean, lower, upper, half_width
    aggregate: pd.DataFrame  # method, metric, point, lower, upper
    matrices: dict[str, np.ndarray]  # method -> (seeds, scored datasets), as aggregated
    improvement: pd.DataFrame  # x, y, point, lower, upper: P(X > Y) over the aggregated datasets
    counts: pd.DataFrame  # method, datasets, seeds, diverged, failed
    notes: list[str]
    success: pd.DataFrame  # as cells, in percent, for the datasets with a success signal; may be empty
    quality: pd.DataFrame  # dataset, transitions, episodes, tq, saco, source
    hparams: pd.DataFrame  # method, dataset, name, value, source
    header: report_facts.Header
    evals: pd.DataFrame  # the evals rows with a method column (for learning curves)

    @property
    def scored(self) -> set[str]:
        """The datasets with reference scores."""
        return set(self.cells.loc[self.cells["scored"], "dataset"])


def _read_results(path: Path, what: str, schema: pa.Schema, columns: list[str]) -> pd.DataFrame:
    """A runs or evals directory, files of older schema versions included (``results.read_table``)."""
    try:
        return results.read_table(path, schema, columns)
    except (OSError, ValueError, KeyError) as error:
        raise ReportError(f"cannot read the {what} table at {path}: {error}") from error


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
            step=pd.Series(dtype="int64"), return_mean=np.nan, normalized_score=np.nan, status="", episodes=0
        )
    )
    quality_path = results_dir / "datasets.parquet"
    quality = None
    if quality_path.exists():
        try:
            quality = pd.read_parquet(quality_path)
        except (OSError, ValueError, KeyError) as error:
            raise ReportError(f"cannot read the dataset-quality table at {quality_path}: {error}") from error
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


def _mean_interval(values: np.ndarray, reps: int, seed: int) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of one cell's seeds (NaN bounds for a single seed)."""
    if len(values) < 2:
        return np.nan, np.nan
    interval = stats.stratified_bootstrap_ci(values[:, None], stats.aggregate_mean, reps, CONFIDENCE, seed)
    return interval.lower, interval.upper


def _cells(runs: pd.DataFrame, reps: int, seed: int) -> pd.DataFrame:
    """Per (dataset, method) of ``runs`` with a ``value`` column: seeds, mean and its 95% interval."""
    rows = []
    for (dataset, method), cell in runs.groupby(["dataset", "method"], sort=True):
        values = cell["value"].dropna().to_numpy(float)
        lower, upper = _mean_interval(values, reps, seed)
        mean = values.mean() if len(values) else np.nan
        rows.append((dataset, method, len(values), mean, lower, upper, (upper - lower) / 2.0))
    return pd.DataFrame(rows, columns=["dataset", "method", "seeds", "mean", "lower", "upper", "half_width"])


def compute_tables(data: Results, reps: int = DEFAULT_REPS, seed: int = 0) -> Tables:
    """The report's tables; the same ``data``, ``reps`` and ``seed`` give the same numbers."""
    if reps < 1:
        raise ReportError(f"reps must be a positive number of bootstrap resamples, got {reps}.")
    runs, evals = _label(data.runs, data.evals)
    scored = _scored_datasets(runs)
    runs = runs.assign(value=_values(runs, scored, "final_score", "final_return"))
    notes: list[str] = []

    cells = _cells(runs, reps, seed)
    cells.insert(2, "scored", cells["dataset"].isin(scored))
    with_success = runs.assign(value=_success_values(runs))
    success = _cells(with_success[with_success["value"].notna()], reps, seed)

    matrices = _aggregate_matrices(runs, scored, notes)
    aggregate = (
        stats.aggregate_intervals(matrices, tuple(METRIC_TITLES), reps, CONFIDENCE, seed, scale=SCALE)
        if matrices
        else pd.DataFrame(columns=["method", "metric", "point", "lower", "upper"])
    )
    return Tables(
        cells=cells,
        aggregate=aggregate,
        matrices=matrices,
        improvement=improvement_matrix(matrices, reps, seed),
        counts=_counts(runs, data.failures, cells),
        notes=notes,
        success=success,
        quality=report_facts.dataset_quality(runs, data.quality),
        hparams=report_facts.hyperparameters(runs),
        header=report_facts.header(runs, data.evals, data.failures),
        evals=evals,
    )


def improvement_matrix(matrices: dict[str, np.ndarray], reps: int, seed: int) -> pd.DataFrame:
    """P(X > Y) with its 95% stratified-bootstrap interval for every ordered pair of methods."""
    rows = []
    for x in matrices:
        for y in matrices:
            if x != y:
                interval = stats.probability_of_improvement_interval(
                    matrices[x], matrices[y], reps, CONFIDENCE, seed
                )
                rows.append((x, y, interval.point, interval.lower, interval.upper))
    return pd.DataFrame(rows, columns=["x", "y", "point", "lower", "upper"])


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


def learning_curves(tables: Tables, reps: int = DEFAULT_PROFILE_REPS, seed: int = 0) -> pd.DataFrame:
    """Mean over seeds and its percentile-bootstrap interval at every evaluation step.

    The same value conventions as the tables: normalised score with diverged seeds at 0 on scored
    datasets, raw return without diverged seeds elsewhere.
    """
    evals = tables.evals
    values = evals.assign(value=_values(evals, tables.scored, "normalized_score", "return_mean"))
    rows = []
    for (dataset, method, step), frame in values.dropna(subset=["value"]).groupby(
        ["dataset", "method", "step"], sort=True
    ):
        points = frame["value"].to_numpy(float)
        lower, upper = _mean_interval(points, reps, seed)
        rows.append((dataset, method, step, points.mean(), lower, upper))
    return pd.DataFrame(rows, columns=["dataset", "method", "step", "mean", "lower", "upper"])


def score_vs_quality(tables: Tables) -> pd.DataFrame:
    """Per (scored dataset, method): the final score (mean and interval over seeds) beside TQ and SACo."""
    cells = tables.cells[tables.cells["scored"] & (tables.cells["seeds"] > 0)]
    quality = tables.quality[["dataset", "tq", "saco"]]
    return cells[["dataset", "method", "mean", "lower", "upper"]].merge(quality, on="dataset", how="left")
