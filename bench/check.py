"""Regression check: compare the final scores of a results directory with a committed baseline.

A baseline is a runs table (the schema of :mod:`offbench.bench.results`, one row per seed), e.g.
``results/ci/baseline.parquet``, written from a results directory by :func:`write_baseline`
(``offbench check --results DIR --baseline FILE --write-baseline``).

The rule, applied to each (label, sampler, dataset) pair of the baseline (the label is the method's
name in a suite, the algorithm unless the suite entry gives one, so ablations of one algorithm are
separate pairs; tables written before labels existed get their algorithm as label):

1. Metric. ``final_score`` (normalised) when every ``ok`` seed of the pair has one in both the
   baseline and the results, otherwise ``final_return`` for both (datasets without reference scores).
2. Seeds. Only seeds with status ``ok`` enter the means: baseline values b_1..b_n, current values
   c_1..c_m. The pair FAILS (``DIVERGED``) when the fraction of non-``ok`` seeds (diverged or failed) in
   the results exceeds the baseline's, or when it has no ``ok`` seed while the baseline has some; it
   FAILS (``MISSING``) when the results have no row for the pair at all.
3. Noise. delta = mean(c) − mean(b). The noise scale is the baseline's seed standard deviation s_b
   (sample std, ddof = 1). The allowed drop is

       allowed = max( t_{1−alpha, n−1} · s_b · sqrt(1/n + 1/m),  abs_tol,  rel_tol · |mean(b)| )

   where t_{q, k} is Student's t quantile with k degrees of freedom; with a single baseline seed (n = 1)
   the noise is unknown and only the two tolerance floors apply.
4. Verdict. The pair FAILS (``REGRESSED``) when delta < −allowed, that is when the upper end of the
   one-sided (1 − alpha_i) t interval of mean(c) − mean(b) lies below 0 *and* the drop exceeds the
   tolerance floor. It is ``improved`` when delta > allowed and ``pass`` otherwise; neither fails.
5. The whole verdict. ``alpha`` is the false-alarm rate of the suite's verdict, not of each pair: the
   pairs tested with a t interval (n >= 2) are a family of m one-sided tests, and Holm's step-down
   procedure sets each pair's level alpha_i. Sorted by their p-values p_(1) <= ... <= p_(m), the k-th pair
   is tested at alpha / (m − k + 1), in order, and once one pair passes its level the later ones (larger
   p-values) pass too. The chance that a faithful reproduction fails any pair is then at most alpha
   (under the t model, whatever the dependence between pairs); testing each pair at alpha instead fails
   a suite of k pairs with probability up to 1 − (1 − alpha)^k, 56% for 16 pairs.

Defaults: alpha = 0.05 for the whole verdict, abs_tol = 1.0 (in the metric's unit: one normalised
point), rel_tol = 0.02 (2% of the baseline mean). Why these choices:

- The baseline std, not the current one, sets the noise scale: a change that destabilises training
  widens the current spread, and a Welch interval would then widen too and hide the regression it
  caused. The baseline is the reviewed, committed reference. The t quantile uses the baseline's n − 1
  degrees of freedom because s_b is the only estimated variance.
- The floors stop zero-variance baselines (every seed at exactly the same score, e.g. all 0 or a
  saturated task) from failing on any difference at all, including float noise across platforms.
- With the same code, seeds and platform the engine is deterministic, so the results equal the baseline
  and every pair passes. After a change that alters the random streams, the pairs that did not regress
  fail all together with probability at most alpha (Holm). The price is power: with 3 seeds a side
  (2 degrees of freedom) and 16 pairs, the most significant pair must drop by about 10 baseline seed
  standard deviations to fail, so a pair that regresses by less goes unflagged; more seeds shrink
  that quickly.

Pairs present in the results but not in the baseline are reported as ``new`` and do not fail.

Only runs of the same budget are compared: a pair whose updates, evaluation episodes, evaluation interval
or final rule (``final_k``) differ from the baseline's is refused (:class:`CheckError`), since a score
after 2,000 updates says nothing about one after 20,000. The code versions and dataset fingerprints of
both sides are reported (:func:`provenance_notes`): a baseline made by other code, or on other data, is
said to be so.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table
from scipy import special as scipy_special
from scipy import stats as scipy_stats

PAIR = ["label", "sampler", "dataset"]
COLUMNS = ["algorithm", "sampler", "dataset", "hparams_hash", "seed", "final_score", "final_return", "status"]
# The budget a score depends on; columns a baseline of an older schema lacks are not compared.
BUDGET = {
    "steps": "updates",
    "eval_every": "eval_every",
    "eval_episodes": "evaluation episodes",
    "final_k": "final_k",
}
ALPHA = 0.05
ABS_TOL = 1.0
REL_TOL = 0.02
FAILING = ("REGRESSED", "DIVERGED", "MISSING")


class CheckError(ValueError):
    """The check cannot run (missing or unreadable files, bad tables); the message says why."""


@dataclass(frozen=True)
class PairResult:
    """The comparison of one (label, sampler, dataset) pair."""

    label: str
    sampler: str
    dataset: str
    metric: str  # "score" or "return"
    baseline: np.ndarray  # ok seeds' values
    current: np.ndarray
    delta: float
    allowed: float
    verdict: str  # pass | improved | new | REGRESSED | DIVERGED | MISSING
    note: str = ""
    # One-sided p-value of "no drop" under the t model (NaN where no t interval applies), and the level
    # the pair was tested at (alpha per pair; Holm's alpha_i once ``compare`` has adjusted it).
    p_value: float = math.nan
    level: float = math.nan

    @property
    def failed(self) -> bool:
        return self.verdict in FAILING

    @property
    def name(self) -> str:
        return f"{self.label}/{self.sampler}/{self.dataset}"

    def explanation(self) -> str:
        """Why a failing pair failed, in one sentence."""
        if self.verdict == "MISSING":
            return f"{self.name} is in the baseline but has no runs in the results."
        if self.verdict == "DIVERGED":
            return f"{self.name} has more diverged or failed seeds than the baseline: {self.note}."
        return (
            f"{self.name} fell {-self.delta:.2f} below the baseline mean {self.metric}, more than the "
            f"{self.allowed:.2f} that its seed noise allows."
        )


def read_runs(path: Path, what: str) -> pd.DataFrame:
    """A runs table from a parquet file or a directory of them, with a clear error when it cannot be read."""
    if not path.exists():
        raise CheckError(f"{what} {path} does not exist.")
    if path.is_dir() and not any(path.glob("*.parquet")):
        raise CheckError(f"{what} {path} holds no parquet files.")
    from offbench.bench import results

    try:
        frame = results.read_table(path, results.RUNS_SCHEMA)
    except (OSError, ValueError) as error:
        raise CheckError(f"cannot read {what} {path}: {error}") from error
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise CheckError(f"{what} {path} is not a runs table: it lacks column(s) {missing}.")
    if frame.empty:
        raise CheckError(f"{what} {path} has no rows.")
    return with_labels(frame)


def with_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` whose rows without a label (tables from before labels) are labelled by their algorithm."""
    label = frame["label"] if "label" in frame.columns else pd.Series(None, index=frame.index, dtype=object)
    return frame.assign(label=label.fillna(frame["algorithm"]))


def read_results_runs(results_dir: Path) -> pd.DataFrame:
    if not results_dir.is_dir():
        raise CheckError(f"results directory {results_dir} does not exist.")
    return read_runs(results_dir / "runs", "results runs directory")


def budget(frame: pd.DataFrame) -> dict[str, Any]:
    """A pair's budget columns present in ``frame`` (an older baseline lacks some), one value each."""
    return {
        column: frame[column].dropna().unique().tolist()
        for column in BUDGET
        if column in frame.columns and frame[column].notna().any()
    }


def check_budgets(current: pd.DataFrame, baseline: pd.DataFrame) -> None:
    """Refuse pairs whose budget differs between the results and the baseline."""
    mismatches = []
    for pair, rows in current.groupby(PAIR):
        base = baseline[(baseline[PAIR] == pd.Series(pair, index=PAIR)).all(axis=1)]
        if base.empty:
            continue
        ours, theirs = budget(rows), budget(base)
        differing = [
            f"{BUDGET[column]} {ours[column]} vs {theirs[column]}"
            for column in ours.keys() & theirs.keys()
            if sorted(ours[column]) != sorted(theirs[column])
        ]
        if differing:
            mismatches.append(f"{'/'.join(pair)} ({', '.join(differing)})")
    if mismatches:
        more = f" and {len(mismatches) - 3} more" if len(mismatches) > 3 else ""
        raise CheckError(
            "the results and the baseline were run with different budgets: "
            f"{'; '.join(mismatches[:3])}{more}. A check compares runs of the same budget: "
            "use a baseline of the same suite."
        )


def provenance_notes(current: pd.DataFrame, baseline: pd.DataFrame) -> list[str]:
    """Lines saying which code wrote each side, and where the datasets' contents differ."""

    def versions(frame: pd.DataFrame) -> list[str]:
        if "code_version" not in frame.columns or frame["code_version"].isna().all():
            shas = frame["git_sha"].dropna().str[:12].unique().tolist() if "git_sha" in frame.columns else []
            return [f"{sha} (no dirty flag recorded)" for sha in shas] or ["unknown"]
        return sorted(frame["code_version"].dropna().unique())

    ours, theirs = versions(current), versions(baseline)
    notes = []
    if ours == theirs:
        notes.append(f"code: the results and the baseline were written by the same code ({', '.join(ours)}).")
    else:
        notes.append(
            f"code: the baseline was written by other code ({', '.join(theirs)}) than the results "
            f"({', '.join(ours)}); a difference beyond seed noise means the code changed what it computes."
        )
    compared, differ = compare_fingerprints(current, baseline)
    for dataset in differ:
        notes.append(
            f"data: the contents of {dataset} differ from the baseline's: "
            f"{generation_difference(dataset, current, baseline)}."
        )
    if compared and not differ:
        notes.append(f"data: every dataset has the baseline's contents ({compared} compared by fingerprint).")
    return notes


def compare_fingerprints(current: pd.DataFrame, baseline: pd.DataFrame) -> tuple[int, list[str]]:
    """(datasets compared by fingerprint, those whose fingerprints differ)."""
    if "dataset_fingerprint" not in current.columns or "dataset_fingerprint" not in baseline.columns:
        return 0, []
    both = (
        current.groupby("dataset")["dataset_fingerprint"]
        .first()
        .to_frame("ours")
        .join(baseline.groupby("dataset")["dataset_fingerprint"].first().to_frame("theirs"), how="inner")
    ).dropna()
    return len(both), both.index[both["ours"] != both["theirs"]].tolist()


# Facts of a generation record that differ between any two generations and explain nothing.
UNEXPLANATORY = ("generated_at",)


def generation_difference(dataset: str, current: pd.DataFrame, baseline: pd.DataFrame) -> str:
    """What the two sides recorded differently about a dataset: its size, and the facts of its
    generation record (``dataset_generation``: recipe, code, library versions, CPU), e.g.
    ``100,349 → 100,175 transitions; mujoco 4.0.0 → 4.0.1`` (baseline → results)."""
    import json

    def first(frame: pd.DataFrame, column: str) -> Any:
        if column not in frame.columns:
            return None
        values = frame.loc[frame["dataset"] == dataset, column].dropna()
        return values.iloc[0] if len(values) else None

    facts = []
    theirs, ours = first(baseline, "dataset_transitions"), first(current, "dataset_transitions")
    if theirs is not None and ours is not None and theirs != ours:
        facts.append(f"{int(theirs):,} → {int(ours):,} transitions")
    records = [first(frame, "dataset_generation") for frame in (baseline, current)]
    if records[0] is None or records[1] is None:
        side = "the baseline" if records[0] is None else "the results"
        facts.append(f"{side} record(s) no generation facts to compare")
        return "; ".join(facts)
    theirs, ours = (json.loads(record) for record in records)
    for key in sorted((theirs.keys() | ours.keys()) - set(UNEXPLANATORY)):
        if theirs.get(key) != ours.get(key):
            facts.append(f"{key} {theirs.get(key, 'unrecorded')} → {ours.get(key, 'unrecorded')}")
    return "; ".join(facts) if facts else "every recorded generation fact is the same"


def noise_scale(baseline: np.ndarray, current_seeds: int) -> float:
    """s_b · sqrt(1/n + 1/m): the standard error of mean(c) − mean(b) from the baseline's seeds."""
    return float(np.std(baseline, ddof=1)) * math.sqrt(1.0 / len(baseline) + 1.0 / current_seeds)


def allowed_drop(
    baseline: np.ndarray,
    current_seeds: int,
    alpha: float = ALPHA,
    abs_tol: float = ABS_TOL,
    rel_tol: float = REL_TOL,
) -> float:
    """How far the current mean may fall below the baseline mean before the pair fails (rule step 3)."""
    floor = max(abs_tol, rel_tol * abs(float(np.mean(baseline))))
    n = len(baseline)
    if n < 2:
        return floor
    return max(t_quantile(1.0 - alpha, n - 1) * noise_scale(baseline, current_seeds), floor)


@functools.cache
def t_quantile(q: float, degrees_of_freedom: int) -> float:
    # Cached: a check asks for the same few (level, n − 1) quantiles for every pair.
    return float(scipy_stats.t.ppf(q, degrees_of_freedom))


def drop_p_value(delta: float, baseline: np.ndarray, current_seeds: int) -> float:
    """P(T <= delta / se) for T ~ t(n − 1): small when the current mean lies far below the baseline's."""
    scale = noise_scale(baseline, current_seeds)
    if scale == 0.0:
        return 0.0 if delta < 0 else 1.0
    # stdtr is Student's t CDF without scipy.stats' per-call overhead (a hundredth of the time).
    return float(scipy_special.stdtr(len(baseline) - 1, delta / scale))


def _metric(baseline: pd.DataFrame, current: pd.DataFrame) -> str:
    ok = pd.concat([baseline[baseline["status"] == "ok"], current[current["status"] == "ok"]])
    return "final_score" if ok["final_score"].notna().all() else "final_return"


def _single_config(frame: pd.DataFrame, pair: tuple[str, str, str], what: str) -> None:
    if frame["seed"].duplicated().any():
        hashes = sorted(frame["hparams_hash"].unique())
        raise CheckError(
            f"{what} has several rows for the same seed of {'/'.join(pair)} (hparams_hash {hashes}); "
            "the check compares one configuration per pair: keep one."
        )


def compare_pair(
    pair: tuple[str, str, str],
    baseline: pd.DataFrame,
    current: pd.DataFrame,
    alpha: float = ALPHA,
    abs_tol: float = ABS_TOL,
    rel_tol: float = REL_TOL,
) -> PairResult:
    """Apply the rule of the module docstring to one pair's baseline and current runs rows."""
    _single_config(baseline, pair, "the baseline")
    _single_config(current, pair, "the results")
    column = _metric(baseline, current)
    metric = "score" if column == "final_score" else "return"
    b = baseline.loc[baseline["status"] == "ok", column].to_numpy(float)
    c = current.loc[current["status"] == "ok", column].to_numpy(float)

    def result(
        verdict: str, note: str = "", delta: float = math.nan, allowed: float = math.nan
    ) -> PairResult:
        return PairResult(*pair, metric, b, c, delta, allowed, verdict, note)

    if current.empty:
        return result("MISSING")
    if baseline.empty:
        return result("new", "not in the baseline")
    notes = []
    if set(baseline["hparams_hash"]) != set(current["hparams_hash"]):
        notes.append("hyper-parameters differ from the baseline's")
    # A smaller fraction of ok seeds than the baseline's (cross-multiplied to stay in integers).
    if len(c) * len(baseline) < len(b) * len(current):
        notes.insert(
            0,
            f"{len(current) - len(c)}/{len(current)} seeds diverged or failed "
            f"(baseline {len(baseline) - len(b)}/{len(baseline)})",
        )
        return result("DIVERGED", "; ".join(notes), float(c.mean() - b.mean()) if len(c) else math.nan)
    if len(b) == 0:
        return result("pass", "; ".join(["no ok baseline seed to compare", *notes]))
    if len(b) == 1:
        notes.append("one baseline seed: tolerance floor only")
    delta = float(c.mean() - b.mean())
    allowed = allowed_drop(b, len(c), alpha, abs_tol, rel_tol)
    verdict = "REGRESSED" if delta < -allowed else "improved" if delta > allowed else "pass"
    p_value = drop_p_value(delta, b, len(c)) if len(b) >= 2 else math.nan
    return dataclasses.replace(
        result(verdict, "; ".join(notes), delta, allowed), p_value=p_value, level=alpha
    )


def holm(
    pairs: list[PairResult], alpha: float = ALPHA, abs_tol: float = ABS_TOL, rel_tol: float = REL_TOL
) -> list[PairResult]:
    """The pairs with Holm's levels (rule step 5): the family is every pair with a p-value; the others
    (new, missing, diverged, a single baseline seed) keep their verdicts. Order is kept."""
    tested = sorted(
        (i for i, pair in enumerate(pairs) if not math.isnan(pair.p_value)), key=lambda i: pairs[i].p_value
    )
    adjusted = list(pairs)
    rejecting = True
    for rank, index in enumerate(tested):
        pair = pairs[index]
        level = alpha / (len(tested) - rank)
        rejecting = rejecting and pair.p_value <= level
        allowed = allowed_drop(pair.baseline, len(pair.current), level, abs_tol, rel_tol)
        if pair.delta < -allowed and rejecting:
            verdict = "REGRESSED"
        else:
            verdict = "improved" if pair.delta > allowed else "pass"
        adjusted[index] = dataclasses.replace(pair, allowed=allowed, verdict=verdict, level=level)
    return adjusted


def family_note(pairs: list[PairResult], alpha: float) -> str:
    """One line saying what the verdict's false-alarm rate is."""
    tested = sum(not math.isnan(pair.p_value) for pair in pairs)
    return (
        f"verdict: false-alarm rate of the whole check at most {alpha:.0%} over {tested} pair(s) tested "
        f"for seed noise (Holm's step-down: each pair at {alpha:g}/{tested} to {alpha:g}); testing each "
        f"at {alpha:g} would fail a faithful reproduction up to {1 - (1 - alpha) ** max(tested, 1):.0%} "
        "of the time."
    )


def compare(
    current: pd.DataFrame,
    baseline: pd.DataFrame,
    alpha: float = ALPHA,
    abs_tol: float = ABS_TOL,
    rel_tol: float = REL_TOL,
) -> list[PairResult]:
    """Every baseline pair (then every new pair of the results), compared by the module's rule, the
    false-alarm rate of the whole verdict held at ``alpha`` (Holm)."""
    if not 0.0 < alpha < 1.0:
        raise CheckError(f"alpha must be strictly between 0 and 1, got {alpha}.")
    if abs_tol < 0 or rel_tol < 0:
        raise CheckError(f"tolerances must be non-negative, got abs_tol={abs_tol}, rel_tol={rel_tol}.")
    current, baseline = with_labels(current), with_labels(baseline)
    check_budgets(current, baseline)
    baseline_pairs = sorted(baseline.groupby(PAIR).groups)
    new_pairs = sorted(set(current.groupby(PAIR).groups) - set(baseline_pairs))

    def rows(frame: pd.DataFrame, pair: tuple[str, str, str]) -> pd.DataFrame:
        mask = (frame["label"] == pair[0]) & (frame["sampler"] == pair[1]) & (frame["dataset"] == pair[2])
        return frame[mask]

    pairs = [
        compare_pair(pair, rows(baseline, pair), rows(current, pair), alpha, abs_tol, rel_tol)
        for pair in [*baseline_pairs, *new_pairs]
    ]
    return holm(pairs, alpha, abs_tol, rel_tol)


def write_baseline(results_dir: Path, path: Path) -> Path:
    """Write the runs rows of ``results_dir`` into one baseline parquet file (atomically), sorted."""
    from offbench.bench import results

    frame = read_results_runs(results_dir).sort_values([*PAIR, "hparams_hash", "seed"], ignore_index=True)
    return results.write_atomic(results.to_table(frame, results.RUNS_SCHEMA), path)


def _mean_std(values: np.ndarray) -> str:
    if len(values) == 0:
        return "—"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{values.mean():.2f} ± {std:.2f} (n={len(values)})"


def verdict_table(pairs: list[PairResult]) -> Table:
    """The check's output: one row per pair, failures in red."""
    table = Table(title="offbench check: final scores vs baseline (mean ± seed std)")
    for column in ("pair", "metric", "baseline", "current", "delta", "allowed drop", "verdict", "note"):
        table.add_column(column, justify="right" if column in ("delta", "allowed drop") else "left")
    styles = {"pass": "green", "improved": "green", "new": "cyan"}
    for pair in pairs:
        style = styles.get(pair.verdict, "bold red")
        table.add_row(
            pair.name,
            pair.metric,
            _mean_std(pair.baseline),
            _mean_std(pair.current),
            "—" if math.isnan(pair.delta) else f"{pair.delta:+.2f}",
            "—" if math.isnan(pair.allowed) else f"{pair.allowed:.2f}",
            f"[{style}]{pair.verdict}[/]",
            pair.note,
        )
    return table
