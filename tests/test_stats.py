"""Tests for offbench.bench.stats: rliable's metrics and stratified-bootstrap intervals in numpy.

Expected values are computed by hand (listed in the comments) or with independent numpy/scipy code,
never by calling the function under test twice.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from offbench.bench import stats

# Pooled and sorted: 0, 1, 2, 3, 10, 20, 30, 100 -> the middle half is 2, 3, 10, 20 -> IQM = 35 / 4.
IQM_MATRIX = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [100.0, 0.0]])


def random_scores(runs: int, tasks: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(50.0, 20.0, size=(runs, tasks))


# ----------------------------------------------------------------------------------------- aggregates


def test_iqm_of_hand_computed_matrix() -> None:
    assert stats.aggregate_iqm(IQM_MATRIX) == pytest.approx(8.75)


@pytest.mark.parametrize("shape", [(4, 2), (10, 9), (3, 7), (5, 1), (1, 1), (7, 3)])
def test_iqm_matches_scipy_trim_mean(shape: tuple[int, int]) -> None:
    scores = random_scores(*shape, seed=sum(shape))
    expected = scipy.stats.trim_mean(scores, proportiontocut=0.25, axis=None)
    assert stats.aggregate_iqm(scores) == pytest.approx(expected, rel=1e-12)


def test_mean_and_median_of_per_task_means() -> None:
    # Per-task means over runs: 1, 15, 75.
    scores = np.array([[0.0, 10.0, 100.0], [2.0, 20.0, 50.0]])
    assert stats.aggregate_mean(scores) == pytest.approx(91.0 / 3.0)
    assert stats.aggregate_median(scores) == pytest.approx(15.0)


def test_optimality_gap_clips_at_gamma() -> None:
    scores = np.array([[50.0, 120.0], [100.0, 80.0]])
    # gamma=100 (default, x100 scale): clipped 50, 100, 100, 80 -> mean 82.5 -> gap 17.5.
    assert stats.aggregate_optimality_gap(scores) == pytest.approx(17.5)
    # gamma=60: clipped 50, 60, 60, 60 -> mean 57.5 -> gap 2.5.
    assert stats.aggregate_optimality_gap(scores, gamma=60.0) == pytest.approx(2.5)


@pytest.mark.parametrize("name", sorted(stats.AGGREGATES))
def test_aggregate_returns_float_for_a_matrix(name: str) -> None:
    assert type(stats.AGGREGATES[name](random_scores(5, 3))) is float


@pytest.mark.parametrize("name", sorted(stats.AGGREGATES))
def test_batched_aggregate_equals_loop(name: str) -> None:
    aggregate = stats.AGGREGATES[name]
    batch = np.random.default_rng(1).normal(50.0, 30.0, size=(3, 4, 6, 5))
    looped = np.array([[aggregate(batch[i, j]) for j in range(4)] for i in range(3)])
    batched = aggregate(batch)
    assert batched.shape == (3, 4)
    np.testing.assert_allclose(batched, looped, rtol=1e-12)


def test_aggregate_rejects_a_vector() -> None:
    with pytest.raises(ValueError, match=r"\(runs, tasks\)"):
        stats.aggregate_mean(np.arange(5.0))


# --------------------------------------------------------------------------- probability of improvement


def test_probability_of_improvement_identical_is_half() -> None:
    scores = np.array([[1.0, 5.0], [1.0, 7.0], [3.0, 7.0]])
    assert stats.probability_of_improvement(scores, scores) == pytest.approx(0.5)


def test_probability_of_improvement_strict_domination() -> None:
    low = random_scores(5, 4)
    high = low.max() + 1.0 + random_scores(7, 4, seed=1) ** 2
    assert stats.probability_of_improvement(high, low) == 1.0
    assert stats.probability_of_improvement(low, high) == 0.0


def test_probability_of_improvement_with_ties_by_hand() -> None:
    x = np.array([[1.0], [2.0], [3.0]])
    y = np.array([[2.0], [2.0], [0.0]])
    # Pairs (x, y): x=1 beats only 0 -> 1; x=2 ties 2 twice, beats 0 -> 1 + 2 * 0.5 = 2; x=3 beats all -> 3.
    assert stats.probability_of_improvement(x, y) == pytest.approx(6.0 / 9.0)
    # A second task where x dominates (1.0) is averaged in: (2/3 + 1) / 2.
    x2 = np.hstack([x, x + 10.0])
    y2 = np.hstack([y, y])
    assert stats.probability_of_improvement(x2, y2) == pytest.approx(5.0 / 6.0)


def test_probability_of_improvement_matches_mann_whitney_u() -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(0, 5, size=(10, 4)).astype(float)  # small integers: many ties
    y = rng.integers(0, 5, size=(6, 4)).astype(float)
    per_task = [
        scipy.stats.mannwhitneyu(x[:, t], y[:, t], alternative="greater").statistic / (10 * 6)
        for t in range(4)
    ]
    assert stats.probability_of_improvement(x, y) == pytest.approx(np.mean(per_task))


def test_probability_of_improvement_needs_same_tasks() -> None:
    with pytest.raises(ValueError, match="same tasks"):
        stats.probability_of_improvement(np.zeros((3, 2)), np.zeros((3, 3)))


# ------------------------------------------------------------------------------- performance profiles


def test_score_distribution_by_hand() -> None:
    scores = np.array([[0.0, 50.0], [100.0, 25.0]])
    # Strictly greater than tau: >0: 50, 100, 25; >25: 50, 100; >60: 100; >100: none.
    np.testing.assert_allclose(stats.score_distribution(scores, [0, 25, 60, 100]), [0.75, 0.5, 0.25, 0.0])


def test_average_score_distribution_by_hand() -> None:
    scores = np.array([[0.0, 50.0], [100.0, 25.0]])
    # Per-task means 50 and 37.5.
    np.testing.assert_allclose(
        stats.average_score_distribution(scores, [0, 40, 50, 60]), [1.0, 0.5, 0.0, 0.0]
    )


def test_score_distribution_batched_shape() -> None:
    batch = np.random.default_rng(3).normal(size=(7, 5, 4))
    taus = np.linspace(-1, 1, 11)
    assert stats.score_distribution(batch, taus).shape == (7, 11)
    assert stats.average_score_distribution(batch, taus).shape == (7, 11)
    np.testing.assert_allclose(
        stats.score_distribution(batch, taus)[2], stats.score_distribution(batch[2], taus)
    )


@pytest.mark.parametrize("use_score_distribution", [True, False])
def test_performance_profile_is_monotone_and_bracketed(use_score_distribution: bool) -> None:
    taus = np.linspace(0.0, 100.0, 21)
    scores = {"a": random_scores(10, 9), "b": random_scores(5, 9, seed=1) + 20.0}
    profile = stats.performance_profile(scores, taus, reps=500, use_score_distribution=use_score_distribution)
    assert list(profile.columns) == ["method", "tau", "fraction", "lower", "upper"]
    assert len(profile) == 2 * len(taus)
    for method, matrix in scores.items():
        rows = profile[profile["method"] == method]
        np.testing.assert_allclose(rows["tau"], taus)
        reference = stats.score_distribution if use_score_distribution else stats.average_score_distribution
        np.testing.assert_allclose(rows["fraction"], reference(matrix, taus))
        for column in ("fraction", "lower", "upper"):
            assert (np.diff(rows[column].to_numpy()) <= 0).all(), column
        assert (rows["lower"] <= rows["fraction"]).all()
        assert (rows["fraction"] <= rows["upper"]).all()


# -------------------------------------------------------------------------------- bootstrap intervals


def test_ci_of_constant_matrix_is_a_point() -> None:
    interval = stats.stratified_bootstrap_ci(np.full((6, 4), 42.0), stats.aggregate_iqm, reps=1_000)
    assert interval == stats.Interval(point=42.0, lower=42.0, upper=42.0)


@pytest.mark.parametrize("name", sorted(stats.AGGREGATES))
def test_ci_contains_point_estimate(name: str) -> None:
    scores = random_scores(10, 9)
    interval = stats.stratified_bootstrap_ci(scores, stats.AGGREGATES[name], reps=2_000)
    assert interval.point == pytest.approx(stats.AGGREGATES[name](scores))
    assert interval.lower < interval.point < interval.upper


def test_percentile_interval_on_a_two_run_task() -> None:
    # One task, runs 0 and 1: a resample's mean is 0, 0.5 or 1 with probability 1/4, 1/2, 1/4. The 2.5%
    # and 97.5% percentiles are therefore 0 and 1, the 30% and 70% ones both 0.5.
    scores = np.array([[0.0], [1.0]])
    wide = stats.stratified_bootstrap_ci(scores, stats.aggregate_mean, reps=4_000, confidence=0.95)
    narrow = stats.stratified_bootstrap_ci(scores, stats.aggregate_mean, reps=4_000, confidence=0.4)
    assert (wide.lower, wide.point, wide.upper) == (0.0, 0.5, 1.0)
    assert (narrow.lower, narrow.upper) == (0.5, 0.5)


def test_same_seed_reproduces_and_other_seed_differs() -> None:
    scores = random_scores(10, 9)
    first = stats.stratified_bootstrap_ci(scores, stats.aggregate_iqm, reps=2_000, seed=7)
    again = stats.stratified_bootstrap_ci(scores, stats.aggregate_iqm, reps=2_000, seed=7)
    other = stats.stratified_bootstrap_ci(scores, stats.aggregate_iqm, reps=2_000, seed=8)
    assert first == again
    assert (first.lower, first.upper) != (other.lower, other.upper)
    assert first.point == other.point


def test_ci_width_shrinks_with_more_runs() -> None:
    few = stats.stratified_bootstrap_ci(random_scores(5, 9), stats.aggregate_mean, reps=2_000)
    many = stats.stratified_bootstrap_ci(random_scores(80, 9), stats.aggregate_mean, reps=2_000)
    assert many.upper - many.lower < 0.5 * (few.upper - few.lower)


def test_ci_rejects_unbatched_statistic() -> None:
    with pytest.raises(ValueError, match="batch"):
        stats.stratified_bootstrap_ci(random_scores(4, 3), lambda s: float(np.mean(s)), reps=10)


def test_ci_rejects_nan_scores() -> None:
    scores = random_scores(4, 3)
    scores[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"run 2, task 1"):
        stats.stratified_bootstrap_ci(scores, stats.aggregate_mean, reps=10)


def test_stratified_resampling_keeps_runs_within_their_task(monkeypatch: pytest.MonkeyPatch) -> None:
    # Task t holds the values 1000 t + run index, so each resampled value reveals its task and run.
    runs, tasks, reps = 6, 4, 3_000
    scores = 1000.0 * np.arange(tasks) + np.arange(runs)[:, None]
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 24 * 700)  # forces several chunks of 700 replications
    batches: list[np.ndarray] = []

    def recording_mean(batch: np.ndarray) -> np.ndarray:
        batches.append(batch.copy())
        return stats.aggregate_mean(batch)

    stats.stratified_bootstrap_ci(scores, recording_mean, reps=reps)
    resampled = np.concatenate([batch for batch in batches if batch.shape[0] > 1])
    assert [batch.shape[1:] for batch in batches] == [(runs, tasks)] * len(batches)
    assert len(batches) > 2
    assert resampled.shape == (reps, runs, tasks)
    run_index = resampled - 1000.0 * np.arange(tasks)
    # Stratified: every value of task t comes from task t's own runs, so per-task means stay in range.
    assert np.isin(run_index, np.arange(runs)).all()
    task_means = resampled.mean(axis=1)
    assert ((task_means >= scores.min(axis=0)) & (task_means <= scores.max(axis=0))).all()
    # With replacement: most resamples repeat some run.
    assert np.mean([len(np.unique(r)) < runs for r in run_index[:, :, 0]]) > 0.9
    # Independently per task (not whole rows): tasks 0 and 1 almost never draw the same runs.
    assert np.mean((run_index[:, :, 0] == run_index[:, :, 1]).all(axis=1)) < 0.01


def test_bootstrap_mean_of_iqm_is_close_to_point() -> None:
    scores = random_scores(10, 9, seed=4)
    replicates: list[np.ndarray] = []

    def recording_iqm(batch: np.ndarray) -> np.ndarray:
        values = stats.aggregate_iqm(batch)
        if batch.shape[0] > 1:
            replicates.append(values)
        return values

    interval = stats.stratified_bootstrap_ci(scores, recording_iqm, reps=20_000)
    values = np.concatenate(replicates)
    assert values.shape == (20_000,)
    assert abs(values.mean() - interval.point) < 0.1 * values.std()
    assert np.percentile(values, 2.5) == pytest.approx(interval.lower)


def test_aggregate_intervals_table_matches_single_metric_intervals() -> None:
    score_dict = {"b": random_scores(10, 9, seed=1), "a": random_scores(8, 9, seed=2)}
    table = stats.aggregate_intervals(score_dict, reps=2_000, seed=3)
    assert list(table.columns) == ["method", "metric", "point", "lower", "upper"]
    assert list(table["method"]) == ["b"] * 4 + ["a"] * 4
    assert list(table["metric"]) == ["median", "iqm", "mean", "optimality_gap"] * 2
    for row in table.itertuples():
        single = stats.stratified_bootstrap_ci(
            score_dict[row.method], stats.AGGREGATES[row.metric], 2_000, seed=3
        )
        assert (row.point, row.lower, row.upper) == (single.point, single.lower, single.upper)
    # A method's intervals do not depend on the other methods or their order.
    alone = stats.aggregate_intervals({"a": score_dict["a"]}, metrics=("iqm",), reps=2_000, seed=3)
    in_table = table[(table["method"] == "a") & (table["metric"] == "iqm")]
    assert alone.iloc[0].to_dict() == in_table.iloc[0].to_dict()


def test_aggregate_intervals_rejects_unknown_metric() -> None:
    with pytest.raises(ValueError, match="iqm"):
        stats.aggregate_intervals({"a": random_scores(3, 2)}, metrics=("IQM",), reps=10)


def test_probability_of_improvement_interval() -> None:
    x = random_scores(10, 5)
    identical = stats.probability_of_improvement_interval(x, x, reps=1_000)
    assert identical.point == 0.5
    assert identical.lower < 0.5 < identical.upper
    dominating = stats.probability_of_improvement_interval(x + 1_000.0, random_scores(4, 5, seed=1), reps=500)
    assert dominating == stats.Interval(point=1.0, lower=1.0, upper=1.0)
    y = random_scores(6, 5, seed=2) + 10.0
    first = stats.probability_of_improvement_interval(y, x, reps=1_000, seed=5)
    assert first == stats.probability_of_improvement_interval(y, x, reps=1_000, seed=5)
    assert first.lower <= first.point <= first.upper
    assert first.point == pytest.approx(stats.probability_of_improvement(y, x))


# ----------------------------------------------------------------------------------------- score matrices


def runs_table(methods: tuple[str, ...] = ("iql", "td3bc")) -> pd.DataFrame:
    """One row per (method, task, seed); tasks and seeds unsorted on purpose; score = 100 i + 10 j + seed."""
    tasks, seeds = ("walker", "hopper", "cheetah"), (2, 0, 1)
    rows = [
        {"method": m, "dataset": t, "seed": s, "final_score": 100.0 * i + 10.0 * j + s}
        for i, m in enumerate(methods)
        for j, t in enumerate(tasks)
        for s in seeds
    ]
    return pd.DataFrame(rows)


def rows_of(runs: pd.DataFrame, method: str, task: str, seed: int | None = None) -> pd.Series:
    mask = (runs["method"] == method) & (runs["dataset"] == task)
    return mask if seed is None else mask & (runs["seed"] == seed)


def test_score_matrices_shape_and_order() -> None:
    matrices = stats.score_matrices(runs_table())
    assert list(matrices) == ["iql", "td3bc"]
    # Tasks sorted (cheetah, hopper, walker) = original indices 2, 1, 0; runs sorted by seed 0, 1, 2.
    expected_iql = np.array([[20.0, 10.0, 0.0], [21.0, 11.0, 1.0], [22.0, 12.0, 2.0]])
    np.testing.assert_array_equal(matrices["iql"], expected_iql)
    np.testing.assert_array_equal(matrices["td3bc"], expected_iql + 100.0)


def test_score_matrices_from_algorithm_and_sampler_columns() -> None:
    runs = runs_table(methods=("iql",)).drop(columns="method")
    runs = pd.concat([runs.assign(sampler="uniform"), runs.assign(sampler="per", final_score=0.0)])
    runs["algorithm"] = "iql"
    runs["method"] = runs["algorithm"] + "+" + runs["sampler"]
    matrices = stats.score_matrices(runs)
    assert sorted(matrices) == ["iql+per", "iql+uniform"]
    assert matrices["iql+per"].shape == (3, 3)
    assert (matrices["iql+per"] == 0.0).all()


def test_score_matrices_missing_task_names_method_and_task() -> None:
    runs = runs_table()
    runs = runs[~rows_of(runs, "td3bc", "hopper")]
    with pytest.raises(ValueError, match=r"'td3bc'.*hopper"):
        stats.score_matrices(runs)


def test_score_matrices_unequal_run_counts_lists_counts() -> None:
    runs = runs_table()
    runs = runs[~rows_of(runs, "iql", "walker", seed=2)]
    with pytest.raises(ValueError, match=r"'iql'.*'walker': 2.*rectangular"):
        stats.score_matrices(runs)


def test_score_matrices_nan_score_names_the_run() -> None:
    runs = runs_table()
    runs.loc[rows_of(runs, "td3bc", "cheetah", seed=1), "final_score"] = np.nan
    with pytest.raises(ValueError, match=r"(?s)td3bc\s+cheetah\s+1.*random-policy score 0"):
        stats.score_matrices(runs)


def test_score_matrices_duplicate_rows() -> None:
    runs = runs_table()
    runs = pd.concat([runs, runs[rows_of(runs, "iql", "hopper", seed=0)]], ignore_index=True)
    with pytest.raises(ValueError, match=r"(?s)duplicate.*iql\s+hopper\s+0"):
        stats.score_matrices(runs)


def test_score_matrices_missing_method_column_suggests_building_it() -> None:
    runs = runs_table().rename(columns={"method": "algorithm"})
    with pytest.raises(ValueError, match=r"\['method'\].*algorithm"):
        stats.score_matrices(runs)


def test_difference_interval_on_cases_computed_by_hand() -> None:
    # x's resampled mean is 0, 1 or 2 with probabilities 1/4, 1/2, 1/4 and y is constant: the 95%
    # percentile interval of the difference is [0 - 1, 2 - 1].
    interval = stats.difference_interval([[0.0], [2.0]], [[1.0], [1.0], [1.0]], reps=20_000)
    assert interval == stats.Interval(point=0.0, lower=-1.0, upper=1.0)
    constant = stats.difference_interval([[3.0], [3.0]], [[1.0]], reps=100)
    assert constant == stats.Interval(point=2.0, lower=2.0, upper=2.0)
    assert stats.difference_interval([[0.0], [2.0]], [[1.0]], reps=500, seed=3) == stats.difference_interval(
        [[0.0], [2.0]], [[1.0]], reps=500, seed=3
    )


def test_difference_interval_matches_the_gap_between_separated_methods() -> None:
    rng = np.random.default_rng(0)
    better, worse = 10.0 + rng.normal(size=(8, 1)), rng.normal(size=(8, 1))
    interval = stats.difference_interval(better, worse, reps=5_000)
    assert interval.point == pytest.approx(better.mean() - worse.mean())
    assert 0.0 < interval.lower < interval.point < interval.upper
    iqm = stats.difference_interval(better, worse, stats.aggregate_iqm, reps=2_000)
    assert iqm.point == pytest.approx(stats.aggregate_iqm(better) - stats.aggregate_iqm(worse))
    with pytest.raises(ValueError, match="same tasks"):
        stats.difference_interval(np.ones((3, 2)), np.ones((3, 1)))


def test_optimality_gap_threshold_follows_the_scale() -> None:
    unit = np.array([[0.5, 1.2], [0.8, 0.3]])
    # scale=1 ([0, 1] scores): clipped 0.5, 1, 0.8, 0.3 -> mean 0.65 -> gap 0.35.
    assert stats.aggregate_optimality_gap(unit, scale=1.0) == pytest.approx(0.35)
    assert stats.aggregate_optimality_gap(100 * unit) == pytest.approx(35.0)
    table = stats.aggregate_intervals({"a": unit}, metrics=("optimality_gap",), reps=200, scale=1.0)
    assert table["point"].iloc[0] == pytest.approx(0.35)


def test_unit_scale_scores_without_a_scale_raise() -> None:
    unit = np.array([[0.5, 1.2], [0.8, 0.3]])
    with pytest.raises(ValueError, match=r"look like \[0, 1\]-normalised scores.*scale=1.0"):
        stats.aggregate_optimality_gap(unit)
    with pytest.raises(ValueError, match="scale=1.0"):
        stats.aggregate_intervals({"a": unit, "b": unit / 2}, reps=10)
    # Stated explicitly, x100 scores that happen to be tiny are accepted.
    assert stats.aggregate_optimality_gap(unit, scale=100.0) == pytest.approx(100.0 - 0.7)
    with pytest.raises(ValueError, match="look like D4RL x100 scores"):
        stats.aggregate_intervals({"a": 100 * unit}, reps=10, scale=1.0)
    with pytest.raises(ValueError, match="scale must be one of"):
        stats.aggregate_optimality_gap(unit, scale=10.0)
