"""Tests for offbench.datasets.quality: TQ, SACo (D4RL variant) and return statistics.

Every expected value is worked out by hand in the test (tiny datasets with chosen returns, and a 2-D
state + 1-D action toy whose occupied bins are listed row by row).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from offbench.datasets.dataset import DatasetError, DatasetSpec, build_dataset
from offbench.datasets.quality import (
    SACO_BINS,
    SACO_SUBSAMPLE,
    positive_sided_variance,
    quality_table,
    reference_limits,
    return_statistics,
    saco,
    state_action_bins,
    trajectory_quality,
    unique_state_actions,
)


def make_dataset(
    observations,
    actions,
    rewards=None,
    terminals=None,
    timeouts=None,
    *,
    dataset_id: str = "toy",
    ref_min: float | None = None,
    ref_max: float | None = None,
):
    observations = np.asarray(observations, dtype=np.float32)
    actions = np.asarray(actions, dtype=np.float32)
    n = observations.shape[0]
    spec = DatasetSpec(
        id=dataset_id,
        source="test",
        env_id=None,
        observation_dim=observations.shape[1],
        action_dim=actions.shape[1],
        action_low=(-1.0,) * actions.shape[1],
        action_high=(1.0,) * actions.shape[1],
        ref_min_score=ref_min,
        ref_max_score=ref_max,
    )
    if timeouts is None:
        timeouts = np.zeros(n, bool)
        timeouts[-1] = True
    return build_dataset(
        spec,
        observations=observations,
        actions=actions,
        rewards=np.zeros(n) if rewards is None else rewards,
        next_observations=observations,
        terminals=np.zeros(n, bool) if terminals is None else terminals,
        timeouts=timeouts,
    )


def episodes_dataset(returns_per_step, ends, *, ref_min=None, ref_max=None):
    """A 1-D toy whose episodes are given as reward lists; ``ends`` is 'terminal', 'timeout' or None."""
    rewards, terminals, timeouts = [], [], []
    for episode, end in zip(returns_per_step, ends, strict=True):
        rewards += episode
        terminals += [False] * (len(episode) - 1) + [end == "terminal"]
        timeouts += [False] * (len(episode) - 1) + [end == "timeout"]
    n = len(rewards)
    return make_dataset(
        np.arange(n).reshape(n, 1),
        np.zeros((n, 1)),
        np.asarray(rewards, float),
        np.asarray(terminals),
        np.asarray(timeouts),
        ref_min=ref_min,
        ref_max=ref_max,
    )


# Three episodes: returns 3 (ends by terminal), 7 (ends by timeout), 200 (cut off: incomplete).
THREE_EPISODES = ([[1.0, 2.0], [2.0, 2.0, 3.0], [100.0, 100.0]], ["terminal", "timeout", None])


# ---------------------------------------------------------------------------------------------------- TQ


def test_tq_by_hand_excludes_the_incomplete_episode() -> None:
    dataset = episodes_dataset(*THREE_EPISODES)
    assert dataset.num_episodes == 3
    # Complete returns 3 and 7: mean 5; (5 - 1) / (11 - 1) = 0.4. With the cut-off 200 it would be 69/10.
    assert trajectory_quality(dataset, 1.0, 11.0) == pytest.approx(0.4)


def test_tq_defaults_to_the_spec_references_and_can_exceed_one() -> None:
    dataset = episodes_dataset(*THREE_EPISODES, ref_min=-5.0, ref_max=5.0)
    assert trajectory_quality(dataset) == pytest.approx((5.0 + 5.0) / 10.0)  # = 1.0
    assert trajectory_quality(dataset, ref_max=3.0) == pytest.approx(10.0 / 8.0)  # above the "expert"
    with pytest.raises(DatasetError, match="reference scores"):
        trajectory_quality(episodes_dataset(*THREE_EPISODES))


def test_tq_without_complete_episodes_raises_unless_allowed() -> None:
    dataset = episodes_dataset([[1.0, 2.0, 3.0]], [None])
    assert dataset.num_episodes == 1 and not bool(dataset.episodes.complete[0])
    with pytest.raises(DatasetError, match="allow_incomplete"):
        trajectory_quality(dataset, 0.0, 10.0)
    assert trajectory_quality(dataset, 0.0, 10.0, allow_incomplete=True) == pytest.approx(0.6)


def test_tq_allow_incomplete_still_ignores_cut_offs_when_complete_episodes_exist() -> None:
    dataset = episodes_dataset(*THREE_EPISODES)
    assert trajectory_quality(dataset, 1.0, 11.0, allow_incomplete=True) == pytest.approx(0.4)


@pytest.mark.parametrize(("ref_min", "ref_max"), [(1.0, 1.0), (2.0, 1.0), (0.0, math.inf)])
def test_tq_rejects_bad_references(ref_min: float, ref_max: float) -> None:
    with pytest.raises(ValueError, match="ref_max > ref_min"):
        trajectory_quality(episodes_dataset(*THREE_EPISODES), ref_min, ref_max)


# --------------------------------------------------------------------------------------- return statistics


def test_positive_sided_variance_by_hand() -> None:
    # Mean 3; deviations above the mean: only 6 - 3 = 3; (0 + 0 + 9) / 3 = 3.
    assert positive_sided_variance(np.array([1.0, 2.0, 6.0])) == pytest.approx(3.0)
    # Symmetric returns: half the (population) variance. Mean 0, var 8/3 -> psv 4/3.
    assert positive_sided_variance(np.array([-2.0, 0.0, 2.0])) == pytest.approx(4.0 / 3.0)
    assert positive_sided_variance(np.array([5.0, 5.0])) == 0.0
    assert math.isnan(positive_sided_variance(np.array([])))


def test_return_statistics_by_hand_over_complete_episodes() -> None:
    # Complete returns 1, 2, 6 (terminal, timeout, terminal) and a cut-off episode with return 50.
    dataset = episodes_dataset(
        [[1.0], [1.0, 1.0], [3.0, 3.0], [50.0]], ["terminal", "timeout", "terminal", None]
    )
    stats = return_statistics(dataset)
    assert stats["episodes"] == 4
    assert stats["complete_episodes"] == 3
    assert stats["transitions"] == 6
    assert stats["return_mean"] == pytest.approx(3.0)
    assert stats["return_std"] == pytest.approx(math.sqrt((4 + 1 + 9) / 3))
    assert stats["return_min"] == pytest.approx(1.0)
    assert stats["return_max"] == pytest.approx(6.0)
    assert stats["return_psv"] == pytest.approx(3.0)


def test_return_statistics_without_complete_episodes_are_nan() -> None:
    stats = return_statistics(episodes_dataset([[1.0, 2.0]], [None]))
    assert (stats["episodes"], stats["complete_episodes"], stats["transitions"]) == (1, 0, 2)
    for key in ("return_mean", "return_std", "return_min", "return_max", "return_psv"):
        assert math.isnan(stats[key]), key


# ---------------------------------------------------------------------------------------------- binning

# Limits for [s0, s1, a] with 5 edges: s0 edges 0,1,2,3,4; s1 edges 0,2,4,6,8; a edges -.5,-.25,0,.25,.5.
LOW = np.array([0.0, 0.0, -0.5])
HIGH = np.array([4.0, 8.0, 0.5])

# (s0, s1, a) -> bin ids, worked out by hand.
# Ids: 0 below low, i for edge[i-1] <= x < edge[i], 5 at or above high.
TOY_ROWS = [
    ((0.5, 3.0, 0.1), (1, 2, 3)),
    ((0.9, 3.9, 0.2), (1, 2, 3)),  # other values, same bins as row 0
    ((-3.0, 3.0, 0.1), (0, 2, 3)),  # s0 below the range
    ((-7.0, 2.5, 0.2), (0, 2, 3)),  # far below: still bin 0, duplicate of row 2
    ((10.0, 100.0, 0.9), (5, 5, 5)),  # everything above the range
    ((4.0, 8.0, 0.5), (5, 5, 5)),  # exactly at the maximum: the same top bin
    ((0.5, 3.0, -0.9), (1, 2, 0)),  # action below the range
    ((0.5, 3.0, 0.1), (1, 2, 3)),  # exact duplicate of row 0
    ((1.0, 2.0, 0.0), (2, 2, 3)),  # values exactly on interior edges go to the upper bin
]
# Distinct id rows: (1,2,3), (0,2,3), (5,5,5), (1,2,0), (2,2,3).
TOY_UNIQUE_FIRST = [1, 1, 2, 2, 3, 3, 4, 4, 5]  # unique count among the first k = 1..9 rows


def toy_dataset():
    values = np.array([row for row, _ in TOY_ROWS])
    return make_dataset(values[:, :2], values[:, 2:])


def test_state_action_bins_by_hand() -> None:
    values = np.array([row for row, _ in TOY_ROWS])
    ids = state_action_bins(values[:, :2], values[:, 2:], LOW, HIGH, bins=5)
    np.testing.assert_array_equal(ids, np.array([expected for _, expected in TOY_ROWS]))
    assert ids.dtype == np.uint8
    assert state_action_bins(values[:, :2], values[:, 2:], LOW, HIGH, bins=300).dtype == np.uint16


def test_state_action_bins_degenerate_dimension_and_bad_arguments() -> None:
    observations = np.array([[-1.0], [0.0], [1.0]])
    actions = np.zeros((3, 1))
    ids = state_action_bins(observations, actions, np.array([0.0, 0.0]), np.array([0.0, 0.0]), bins=5)
    np.testing.assert_array_equal(ids, [[0, 5], [5, 5], [5, 5]])
    with pytest.raises(ValueError, match="one entry per"):
        state_action_bins(observations, actions, np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="low <= high"):
        state_action_bins(observations, actions, np.ones(2), np.zeros(2))
    with pytest.raises(ValueError, match="bins"):
        state_action_bins(observations, actions, np.zeros(2), np.ones(2), bins=0)
    with pytest.raises(ValueError, match="same N"):
        state_action_bins(observations, actions[:2], np.zeros(2), np.ones(2))


def test_unique_state_actions_by_hand_with_duplicates_and_out_of_range_values() -> None:
    dataset = toy_dataset()
    assert unique_state_actions(dataset, (LOW, HIGH), bins=5, subsample=None) == 5
    assert unique_state_actions(dataset, (LOW, HIGH), bins=5) == 5  # 100k > 9 rows: counted whole


@pytest.mark.parametrize("k", range(1, 10))
def test_unique_state_actions_honours_the_subsample(k: int) -> None:
    assert unique_state_actions(toy_dataset(), (LOW, HIGH), subsample=k) == TOY_UNIQUE_FIRST[k - 1]


@pytest.mark.parametrize("subsample", [0, -3, 2.5, True])
def test_unique_state_actions_rejects_bad_subsample(subsample) -> None:
    with pytest.raises(ValueError, match="subsample"):
        unique_state_actions(toy_dataset(), (LOW, HIGH), subsample=subsample)


def test_reference_limits_are_min_max_of_state_action_over_the_subsample() -> None:
    dataset = toy_dataset()
    low, high = reference_limits(dataset, subsample=None)
    np.testing.assert_allclose(low, [-7.0, 2.0, -0.9])
    np.testing.assert_allclose(high, [10.0, 100.0, 0.9])
    assert low.dtype == np.float64 and high.dtype == np.float64
    low, high = reference_limits(dataset, subsample=2)  # rows 0 and 1 only
    np.testing.assert_allclose(low, [0.5, 3.0, 0.1])
    np.testing.assert_allclose(high, [0.9, 3.9, 0.2], rtol=1e-6)


# ------------------------------------------------------------------------------------------------- SACo


def test_saco_by_hand() -> None:
    # Reference limits: low (0, 0, -1), high (4, 8, 1).
    # Edges: s0 0,1,2,3,4; s1 0,2,4,6,8; a -1,-.5,0,.5,1.
    reference = make_dataset(
        [[0.0, 0.0], [4.0, 8.0], [1.0, 2.0], [1.5, 3.0]], [[-1.0], [1.0], [0.0], [0.2]], dataset_id="ref"
    )
    # Reference ids: (1,1,1), (5,5,5), (2,2,3), (2,2,3) -> 3 unique.
    dataset = make_dataset(
        [[0.1, 0.1], [9.0, 9.0], [-1.0, -1.0], [2.5, 5.0], [2.6, 5.5]],
        [[-0.9], [1.0], [-1.0], [0.7], [0.8]],
    )
    # Dataset ids: (1,1,1), (5,5,5), (0,0,1) [below the reference range], (3,3,4), (3,3,4) -> 4 unique.
    limits = reference_limits(reference)
    assert unique_state_actions(reference, limits) == 3
    assert unique_state_actions(dataset, limits) == 4
    assert saco(dataset, reference) == pytest.approx(4 / 3)  # above 1: wider than the reference


def test_saco_of_the_reference_against_itself_is_one() -> None:
    rng = np.random.default_rng(0)
    reference = make_dataset(rng.normal(size=(500, 3)), rng.uniform(-1, 1, (500, 2)))
    assert saco(reference, reference) == 1.0
    assert saco(reference, reference, bins=20, subsample=100) == 1.0


def test_saco_spread_dataset_exceeds_concentrated_dataset() -> None:
    rng = np.random.default_rng(1)
    n = 2_000
    reference = make_dataset(rng.uniform(-1, 1, (n, 2)), rng.uniform(-1, 1, (n, 1)), dataset_id="replay")
    spread = make_dataset(rng.uniform(-1, 1, (n, 2)), rng.uniform(-1, 1, (n, 1)), dataset_id="random")
    concentrated = make_dataset(
        rng.normal(0.25, 0.03, (n, 2)), rng.normal(0.25, 0.03, (n, 1)), dataset_id="expert"
    )  # all within the one cell [0, 0.5)^3 of the reference grid (edges -1, -.5, 0, .5, 1)
    spread_saco, concentrated_saco = saco(spread, reference), saco(concentrated, reference)
    assert spread_saco > 0.9  # 6^3 = 216 possible cells, nearly all occupied by 2,000 uniform rows
    assert concentrated_saco < 0.05
    assert spread_saco > concentrated_saco


def test_saco_uses_the_reference_subsample_for_limits_and_counts() -> None:
    # Reference: 3 rows spanning [0, 4] then a far outlier at row 3; with subsample=3 the outlier neither
    # stretches the limits nor is counted.
    reference = make_dataset([[0.0], [2.0], [4.0], [400.0]], np.zeros((4, 1)), dataset_id="ref")
    dataset = make_dataset([[0.5], [1.5], [2.5], [3.5]], np.zeros((4, 1)))
    # Limits (0, 4) for s and (0, 0) for a (ids: 5 at/above 0); s ids: ref 1, 3, 5; dataset 1, 2, 3, 4.
    assert saco(dataset, reference, subsample=3) == pytest.approx(3 / 3)  # dataset counts its first 3: 1,2,3
    assert saco(dataset, reference, subsample=4) == pytest.approx(1 / 2)  # limits (0, 400): all in id 1


def test_saco_rejects_a_reference_of_another_layout() -> None:
    reference = make_dataset(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="same environment"):
        saco(make_dataset(np.zeros((3, 3)), np.zeros((3, 1))), reference)


# ------------------------------------------------------------------------------------------------ table


def test_quality_table_bundles_everything_with_its_constants() -> None:
    rng = np.random.default_rng(2)
    reference = make_dataset(
        rng.uniform(-1, 1, (50, 2)), rng.uniform(-1, 1, (50, 1)), dataset_id="env/replay"
    )
    dataset = episodes_dataset(*THREE_EPISODES, ref_min=1.0, ref_max=11.0)
    dataset = make_dataset(
        rng.uniform(-1, 1, (dataset.size, 2)),
        rng.uniform(-1, 1, (dataset.size, 1)),
        dataset.rewards,
        dataset.terminals,
        dataset.timeouts,
        dataset_id="env/medium",
        ref_min=1.0,
        ref_max=11.0,
    )
    table = quality_table(dataset, reference)
    limits = reference_limits(reference)
    assert table["dataset"] == "env/medium"
    assert table["tq"] == pytest.approx(0.4)
    assert (table["tq_ref_min"], table["tq_ref_max"]) == (1.0, 11.0)
    assert table["unique_state_actions"] == unique_state_actions(dataset, limits)
    assert table["reference_unique_state_actions"] == unique_state_actions(reference, limits)
    assert table["saco"] == pytest.approx(saco(dataset, reference))
    assert table["saco_bins"] == SACO_BINS == 5
    assert table["saco_subsample"] == SACO_SUBSAMPLE == 100_000
    assert table["saco_reference"] == "env/replay"
    assert (table["saco_dims"], table["saco_rows"], table["saco_reference_rows"]) == (3, 7, 50)
    assert (table["episodes"], table["complete_episodes"], table["transitions"]) == (3, 2, 7)
    assert table["return_mean"] == pytest.approx(5.0)
    assert table["return_psv"] == pytest.approx(2.0)  # returns 3, 7: mean 5, (0 + 4) / 2
    assert table["tq_psv"] == pytest.approx(2.0 / 100.0)
    assert all(isinstance(v, int | float | str) for v in table.values())

    table = quality_table(dataset, reference, 0.0, 10.0, bins=3, subsample=None)
    assert table["tq"] == pytest.approx(0.5)
    assert (table["saco_bins"], table["saco_subsample"]) == (3, 0)
