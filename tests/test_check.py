"""``offbench check``: the regression rule, its verdicts and exit codes, and its error messages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from typer.testing import CliRunner

from offbench.bench import check, results
from offbench.bench.cli import app

SEEDS = range(3)
# Per pair: the final scores of seeds 0-2 (std 5.0 for td3bc, 2.0 for iql).
SCORES = {
    ("td3bc", "uniform", "hopper-medium"): [60.0, 65.0, 70.0],
    ("iql", "rw", "hopper-medium"): [40.0, 42.0, 44.0],
}


def run_row(algorithm: str, sampler: str, dataset: str, seed: int, score: float | None, **extra) -> dict:
    """A runs row in the full schema of bench/results.py."""
    row = {field.name: None for field in results.RUNS_SCHEMA}
    row.update(
        suite="ci",
        dataset=dataset,
        env="Hopper-v5",
        algorithm=algorithm,
        sampler=sampler,
        hparams="{}",
        hparams_hash="abc123",
        seed=seed,
        final_score=score,
        final_return=10.0 * score if score is not None else None,
        status="ok",
        schema_version=results.SCHEMA_VERSION,
    )
    row.update(extra)
    return row


def runs_table(shift: dict[tuple[str, str, str], float] | None = None) -> pd.DataFrame:
    shift = shift or {}
    return pd.DataFrame(
        [
            run_row(*pair, seed, score + shift.get(pair, 0.0))
            for pair, scores in SCORES.items()
            for seed, score in zip(SEEDS, scores, strict=True)
        ]
    )


def write_runs(path: Path, frame: pd.DataFrame) -> Path:
    return results.write_atomic(results.to_table(frame, results.RUNS_SCHEMA), path)


@pytest.fixture
def results_dir(tmp_path: Path) -> Path:
    out = tmp_path / "results"
    write_runs(out / "runs" / "all.parquet", runs_table())
    return out


def invoke(results_dir: Path, baseline: Path, *extra: str):
    return CliRunner().invoke(
        app, ["check", "--results", str(results_dir), "--baseline", str(baseline), *extra]
    )


def test_allowed_drop_is_the_t_margin_on_the_baseline_std() -> None:
    baseline = np.array([60.0, 65.0, 70.0])
    expected = scipy_stats.t.ppf(0.95, 2) * 5.0 * math.sqrt(1 / 3 + 1 / 4)
    assert check.allowed_drop(baseline, 4) == pytest.approx(expected)
    # Zero variance: the floors apply, the larger of abs_tol and rel_tol x |baseline mean|.
    assert check.allowed_drop(np.array([50.0, 50.0, 50.0]), 3) == pytest.approx(1.0)
    assert check.allowed_drop(np.array([500.0, 500.0]), 2) == pytest.approx(10.0)
    assert check.allowed_drop(np.array([80.0]), 3, abs_tol=3.0) == 3.0  # one seed: floor only


def test_passes_when_results_equal_the_baseline(results_dir: Path, tmp_path: Path) -> None:
    baseline = write_runs(tmp_path / "baseline.parquet", runs_table())
    result = invoke(results_dir, baseline)
    assert result.exit_code == 0, result.output
    assert "check passed: 2 pairs" in result.output and "+0.00" in result.output


def test_fails_when_the_baseline_is_raised_beyond_noise(results_dir: Path, tmp_path: Path) -> None:
    pair = ("td3bc", "uniform", "hopper-medium")
    # Two pairs, so Holm tests the more significant one at 0.05 / 2: its allowed drop is
    # t(0.975, 2) * 5 * sqrt(2/3) = 17.6 points; 25 is beyond it.
    baseline = write_runs(tmp_path / "baseline.parquet", runs_table({pair: 25.0}))
    result = invoke(results_dir, baseline)
    assert result.exit_code == 1, result.output
    for column in ("pair", "baseline", "current", "delta", "verdict"):
        assert column in result.output
    assert "REGRESSED" in result.output and "td3bc/uniform/hopper-medium" in result.output
    assert "-25.00" in result.output and "check failed" in result.output
    verdicts = {p.name: p.verdict for p in check.compare(runs_table(), runs_table({pair: 25.0}))}
    assert verdicts == {"td3bc/uniform/hopper-medium": "REGRESSED", "iql/rw/hopper-medium": "pass"}


def test_passes_when_the_baseline_is_raised_within_noise(results_dir: Path, tmp_path: Path) -> None:
    baseline = write_runs(
        tmp_path / "baseline.parquet", runs_table({("td3bc", "uniform", "hopper-medium"): 8.0})
    )
    result = invoke(results_dir, baseline)
    assert result.exit_code == 0, result.output
    assert "-8.00" in result.output and "REGRESSED" not in result.output


def test_zero_variance_baseline_uses_the_tolerance_floor() -> None:
    flat = pd.DataFrame([run_row("bc", "uniform", "hopper-medium", seed, 50.0) for seed in SEEDS])
    within = flat.assign(final_score=49.5)
    beyond = flat.assign(final_score=48.5)
    assert check.compare(within, flat)[0].verdict == "pass"
    assert check.compare(beyond, flat)[0].verdict == "REGRESSED"


def test_improvement_and_new_pairs_do_not_fail() -> None:
    current = pd.concat(
        [
            runs_table({("iql", "rw", "hopper-medium"): 30.0}),
            pd.DataFrame([run_row("cql", "uniform", "hopper-medium", 0, 10.0)]),
        ]
    )
    verdicts = {p.name: p.verdict for p in check.compare(current, runs_table())}
    assert verdicts["iql/rw/hopper-medium"] == "improved"
    assert verdicts["cql/uniform/hopper-medium"] == "new"
    assert not any(p.failed for p in check.compare(current, runs_table()))


def test_null_scores_compare_final_returns() -> None:
    baseline = runs_table().assign(final_score=None)
    # Scores are null, so only the returns (10x the scores) count: a -20 return drop is within noise
    # (allowed t(0.95, 2) * 50 * sqrt(2/3) = 119), a -200 one is not.
    within = baseline.assign(final_return=baseline["final_return"] - 20.0)
    beyond = baseline.assign(final_return=baseline["final_return"] - 200.0)
    assert {p.metric for p in check.compare(within, baseline)} == {"return"}
    assert not any(p.failed for p in check.compare(within, baseline))
    assert all(p.verdict == "REGRESSED" for p in check.compare(beyond, baseline))


def test_more_diverged_seeds_than_the_baseline_fail() -> None:
    current = runs_table()
    diverged = (current["algorithm"] == "iql") & (current["seed"] == 1)
    current.loc[diverged, ["final_score", "final_return", "status"]] = [None, None, "diverged"]
    verdicts = {p.name: p for p in check.compare(current, runs_table())}
    assert verdicts["iql/rw/hopper-medium"].verdict == "DIVERGED"
    assert "1/3 seeds diverged or failed" in verdicts["iql/rw/hopper-medium"].note


def test_missing_baseline_pair_fails_with_a_clear_message(tmp_path: Path) -> None:
    out = tmp_path / "results"
    write_runs(out / "runs" / "td3bc.parquet", runs_table().query("algorithm == 'td3bc'"))
    baseline = write_runs(tmp_path / "baseline.parquet", runs_table())
    result = invoke(out, baseline)
    assert result.exit_code == 1, result.output
    assert "MISSING" in result.output
    message = "iql/rw/hopper-medium is in the baseline but has no runs in the results"
    assert message in " ".join(result.output.split())


@pytest.mark.parametrize("missing", ["baseline", "results"])
def test_missing_file_is_a_clear_error(results_dir: Path, tmp_path: Path, missing: str) -> None:
    baseline = write_runs(tmp_path / "baseline.parquet", runs_table())
    if missing == "baseline":
        baseline = tmp_path / "nowhere.parquet"
    else:
        results_dir = tmp_path / "no-results"
    result = invoke(results_dir, baseline)
    assert result.exit_code == 2, result.output
    expected = f"baseline {baseline}" if missing == "baseline" else f"results directory {results_dir}"
    assert f"{expected} does not exist" in " ".join(result.output.split())


def test_unreadable_baseline_is_a_clear_error(results_dir: Path, tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.parquet"
    baseline.write_text("not parquet")
    result = invoke(results_dir, baseline)
    assert result.exit_code == 2, result.output
    assert "cannot read baseline" in result.output


def test_write_baseline_then_check_passes(results_dir: Path, tmp_path: Path) -> None:
    baseline = tmp_path / "ci" / "baseline.parquet"
    written = invoke(results_dir, baseline, "--write-baseline")
    assert written.exit_code == 0, written.output
    stored = pd.read_parquet(baseline)
    assert len(stored) == 6 and list(stored.columns) == results.RUNS_SCHEMA.names
    assert invoke(results_dir, baseline).exit_code == 0


def test_labels_of_one_algorithm_are_separate_pairs_and_old_baselines_have_none(tmp_path: Path) -> None:
    def rows(label: str | None, scores: list[float]) -> list[dict]:
        return [
            run_row("dqc", "uniform", "cube", seed, score, label=label)
            for seed, score in zip(SEEDS, scores, strict=True)
        ]

    current = pd.DataFrame(rows("dqc", [50.0, 51.0, 52.0]) + rows("dqc-os", [10.0, 11.0, 12.0]))
    pairs = check.compare(current, current.copy())
    assert [(p.name, p.verdict) for p in pairs] == [
        ("dqc/uniform/cube", "pass"),
        ("dqc-os/uniform/cube", "pass"),
    ]
    # A baseline written before labels existed has no label column: its rows are the plain algorithm's.
    old_path = tmp_path / "old.parquet"
    pd.DataFrame(rows(None, [50.0, 51.0, 52.0])).drop(columns="label").to_parquet(old_path)
    old = check.read_runs(old_path, "baseline")
    assert (old["label"] == "dqc").all()
    verdicts = {p.name: p.verdict for p in check.compare(current, old)}
    assert verdicts == {"dqc/uniform/cube": "pass", "dqc-os/uniform/cube": "new"}


def simulated_failure_rate(draws: int, pairs: int, regressed_by: float = 0.0, holm: bool = True) -> float:
    """Fraction of simulated suites whose check fails: every pair's 3 baseline and 3 current seeds drawn
    from one normal distribution (mean 50, std 5), the first pair's current seeds shifted by
    ``regressed_by`` standard deviations; ``holm=False`` tests each pair at alpha, as before."""
    rng = np.random.default_rng(0)
    failed = 0
    for _ in range(draws):
        results = []
        for index in range(pairs):
            b = rng.normal(50.0, 5.0, 3)
            c = rng.normal(50.0 - (5.0 * regressed_by if index == 0 else 0.0), 5.0, 3)
            delta = float(c.mean() - b.mean())
            allowed = check.allowed_drop(b, 3)
            verdict = "REGRESSED" if delta < -allowed else "pass"
            p_value = check.drop_p_value(delta, b, 3)
            results.append(
                check.PairResult(
                    "m", "uniform", f"d{index}", "score", b, c, delta, allowed, verdict, "", p_value
                )
            )
        if holm:
            results = check.holm(results)
        failed += any(result.failed for result in results)
    return failed / draws


def test_a_faithful_reproduction_of_16_pairs_fails_at_most_alpha_of_the_time() -> None:
    # Per pair at 5%: 1 - 0.95^16 = 56% under the t model (the tolerance floor lowers it a little).
    assert simulated_failure_rate(1000, 16, holm=False) > 0.4
    # Holm: at most 5%; 1000 draws put a 3-standard-error margin of about 2 points on it.
    assert simulated_failure_rate(1000, 16) <= 0.05 + 0.02


def test_holm_still_catches_a_real_regression_of_one_pair() -> None:
    # A collapse of one pair by 20 seed standard deviations (e.g. 50 -> -50) among 16.
    assert simulated_failure_rate(300, 16, regressed_by=20.0) >= 0.9


def test_holm_levels_step_down_from_alpha_over_m() -> None:
    pairs = [
        check.PairResult(
            "m",
            "uniform",
            f"d{i}",
            "score",
            np.array([50.0, 55.0, 60.0]),
            np.array([50.0, 55.0, 60.0]) - drop,
            -drop,
            0.0,
            "pass",
            "",
            check.drop_p_value(-drop, np.array([50.0, 55.0, 60.0]), 3),
        )
        for i, drop in enumerate([40.0, 0.0, 25.0])
    ]
    adjusted = check.holm(pairs)
    assert [pair.level for pair in adjusted] == pytest.approx([0.05 / 3, 0.05, 0.05 / 2])
    assert [pair.verdict for pair in adjusted] == ["REGRESSED", "pass", "REGRESSED"]


def test_other_data_name_the_recorded_facts_that_differ(tmp_path: Path) -> None:
    def generated(frame: pd.DataFrame, fingerprint: str, transitions: int, mujoco: str) -> pd.DataFrame:
        record = {"seed": 0, "size": 100000, "mujoco": mujoco, "numpy": "2.4.6", "generated_at": fingerprint}
        return frame.assign(
            dataset_fingerprint=fingerprint,
            dataset_transitions=transitions,
            dataset_generation=json.dumps(record, sort_keys=True),
        )

    baseline = generated(runs_table(), "a" * 64, 100_349, "4.0.0")
    current = generated(runs_table(), "b" * 64, 100_175, "4.0.1")
    notes = check.provenance_notes(current, baseline)
    assert (
        "data: the contents of hopper-medium differ from the baseline's: 100,349 → 100,175 transitions; "
        "mujoco 4.0.0 → 4.0.1." in notes
    )
    out = tmp_path / "results"
    write_runs(out / "runs" / "all.parquet", current)
    baseline_file = write_runs(tmp_path / "baseline.parquet", baseline)
    assert invoke(out, baseline_file).exit_code == 0  # the scores are the same
    strict = invoke(out, baseline_file, "--require-same-data")
    assert strict.exit_code == 1 and "mujoco 4.0.0 → 4.0.1" in strict.output
    same = generated(runs_table(), "a" * 64, 100_349, "4.0.1")
    assert check.provenance_notes(same, baseline)[-1].startswith("data: every dataset has the baseline's")
