"""Samplers: analytic probabilities by hand, the alias table's exactness, drawn frequencies, errors."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from offbench.algorithms import sampling
from offbench.algorithms.config import BaseConfig
from offbench.algorithms.registry import available_algorithms, get_algorithm
from offbench.bench.engine import init_states, make_train_chunk, seed_keys, shared_arrays, training_data
from offbench.datasets.dataset import DatasetSpec, build_dataset

SPEC = DatasetSpec(
    id="hand",
    source="test",
    env_id=None,
    observation_dim=1,
    action_dim=1,
    action_low=(-1.0,),
    action_high=(1.0,),
)


def trajectories(rewards: list[list[float]], initial: list[float], ends: list[str], observation_dim: int = 1):
    """A dataset from per-trajectory rewards; ``ends[i]`` is 'terminal', 'timeout' or '' (cut short)."""
    spec = dataclasses.replace(SPEC, observation_dim=observation_dim)
    rng = np.random.default_rng(0)
    observations, terminals, timeouts = [], [], []
    for trajectory, s0, end in zip(rewards, initial, ends, strict=True):
        block = rng.normal(size=(len(trajectory), observation_dim))
        block[0] = s0
        observations.append(block)
        terminals += [False] * (len(trajectory) - 1) + [end == "terminal"]
        timeouts += [False] * (len(trajectory) - 1) + [end == "timeout"]
    observations = np.concatenate(observations)
    n = len(observations)
    return build_dataset(
        spec,
        observations=observations,
        actions=rng.uniform(-1, 1, (n, 1)),
        rewards=np.concatenate(rewards),
        terminals=terminals,
        timeouts=timeouts,
        next_observations=rng.normal(size=(n, observation_dim)),
    )


# Three trajectories: lengths 2, 3, 1; returns 0, 10, 5; initial observations 0, 1, 2. The last one has no
# terminal or timeout (the dataset stops mid-episode): it is still a trajectory of its own (§3.8.4).
HAND = dict(
    rewards=[[1.0, -1.0], [2.0, 3.0, 5.0], [5.0]], initial=[0.0, 1.0, 2.0], ends=["terminal", "timeout", ""]
)


def probabilities(dataset, sampler: str, **settings) -> np.ndarray:
    return sampling.transition_probabilities(dataset, BaseConfig(sampler=sampler, **settings))


def test_rw_probabilities_by_hand():
    dataset = trajectories(**HAND)
    # Ĝ = (G - 0) / 10 = [0, 1, 0.5]; logits Ĝ / 0.5 = [0, 2, 1], one per transition, softmax over all six.
    e = math.e
    z = 2 * 1 + 3 * e**2 + 1 * e
    expected = np.array([1, 1, e**2, e**2, e**2, e]) / z
    np.testing.assert_allclose(probabilities(dataset, "rw", sampler_temperature=0.5), expected, rtol=1e-12)


def test_aw_probabilities_by_hand():
    dataset = trajectories(**HAND)
    # OLS of G = [0, 10, 5] on s0 = [0, 1, 2] with intercept: slope 2.5, fitted [2.5, 5, 7.5],
    # advantages [-2.5, 5, -2.5] -> normalised [0, 1, 0]; logits [0, 2, 0] at temperature 0.5.
    e2 = math.e**2
    expected = np.array([1, 1, e2, e2, e2, 1]) / (3 + 3 * e2)
    np.testing.assert_allclose(probabilities(dataset, "aw", sampler_temperature=0.5), expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        (0.5, [0, 0, 1 / 3, 1 / 3, 1 / 3, 0]),  # floor(1.5) = 1: the return-10 trajectory
        (0.1, [0, 0, 1 / 3, 1 / 3, 1 / 3, 0]),  # floor(0.3) = 0, but at least one trajectory is kept
        (0.7, [0, 0, 1 / 4, 1 / 4, 1 / 4, 1 / 4]),  # floor(2.1) = 2: returns 10 and 5
        (1.0, [1 / 6] * 6),
    ],
)
def test_topk_probabilities_by_hand(fraction, expected):
    dataset = trajectories(**HAND)
    actual = probabilities(dataset, "topk", sampler_top_fraction=fraction)
    np.testing.assert_allclose(actual, expected, rtol=1e-12)


def test_topk_ties_keep_the_earlier_trajectory():
    dataset = trajectories(rewards=[[1.0], [3.0, 0.0], [3.0]], initial=[0.0, 0.0, 0.0], ends=["terminal"] * 3)
    np.testing.assert_allclose(probabilities(dataset, "topk", sampler_top_fraction=0.34), [0, 0.5, 0.5, 0])


def test_uniform_probabilities():
    dataset = trajectories(**HAND)
    np.testing.assert_allclose(probabilities(dataset, "uniform"), np.full(6, 1 / 6))


def test_weights_use_raw_rewards_not_the_algorithms_transform():
    dataset = trajectories(**HAND)
    plain = sampling.prepare(dataset, BaseConfig(sampler="rw"))
    # A per-step shift changes each return by -T_i (here by different amounts): the weights must not move.
    shifted = sampling.prepare(dataset, BaseConfig(sampler="rw", reward_shift=-1.0, reward_scale=1000.0))
    np.testing.assert_array_equal(np.asarray(plain.alias_threshold), np.asarray(shifted.alias_threshold))
    np.testing.assert_array_equal(np.asarray(plain.alias_index), np.asarray(shifted.alias_index))
    assert float(shifted.dataset.rewards[0]) == pytest.approx(999.0)  # the training rewards did change


def test_aw_baseline_equals_least_squares_with_intercept():
    rng = np.random.default_rng(1)
    s0 = rng.normal(size=(20, 3)) * [1.0, 1e-3, 50.0] + [0.0, 1.25, -3.0]
    returns = rng.normal(size=20) * 100 + s0 @ [2.0, 300.0, 0.1]
    design = np.column_stack([np.ones(20), s0])
    reference = design @ np.linalg.lstsq(design, returns, rcond=None)[0]
    np.testing.assert_allclose(sampling.advantage_baseline(s0, returns), reference, rtol=1e-10, atol=1e-9)
    # Fewer trajectories than parameters: the fit interpolates, every advantage is 0.
    few = returns[:3]
    np.testing.assert_allclose(sampling.advantage_baseline(s0[:3], few), few, rtol=1e-10)


@pytest.mark.parametrize("sampler", ["rw", "aw"])
def test_all_equal_scores_give_uniform_weights_with_a_warning(sampler):
    equal = trajectories(
        rewards=[[2.0, 3.0], [5.0], [1.0, 1.0, 3.0]], initial=[0.0, 1.0, 3.0], ends=["timeout"] * 3
    )
    with pytest.warns(UserWarning, match="same (returns|advantages), so the weights are uniform"):
        np.testing.assert_allclose(probabilities(equal, sampler), np.full(6, 1 / 6), rtol=1e-12)
    if sampler == "aw":
        # Two trajectories, one observation dimension: the regression fits both returns exactly.
        exact = trajectories(rewards=[[1.0], [4.0, 1.0]], initial=[0.0, 1.0], ends=["terminal"] * 2)
        with pytest.warns(UserWarning, match="same advantages"):
            np.testing.assert_allclose(probabilities(exact, "aw"), np.full(3, 1 / 3), rtol=1e-12)


def alias_mass(threshold: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """Integer mass each outcome receives from the table: its own share plus what others alias to it."""
    mass = threshold.copy()
    np.add.at(mass, alias, sampling.ALIAS_UNIT - threshold)
    return mass


def test_alias_table_reproduces_the_distribution_exactly():
    rng = np.random.default_rng(0)
    cases = [
        np.full(7, 1 / 7),
        np.array([1.0]),
        np.array([0.0, 1.0, 0.0]),
        np.repeat([0.1, 0.3, 0.05], [4, 2, 4]),
    ]
    for _ in range(200):
        p = rng.exponential(size=int(rng.integers(1, 80))) ** rng.uniform(0.2, 8.0)
        p[rng.random(p.size) < 0.2] = 0.0
        cases.append(p)
    for p in cases:
        p = p / p.sum() if p.sum() > 0 else np.full(p.size, 1 / p.size)
        threshold, alias = sampling.alias_table(p)
        assert threshold.min() >= 0 and threshold.max() <= sampling.ALIAS_UNIT
        mass = alias_mass(threshold, alias)
        columns = p.size * sampling.ALIAS_UNIT
        assert mass.sum() == columns  # integer arithmetic: no mass created or lost
        # Every probability is represented to within one unit of 2**-32 of a column.
        assert np.abs(mass - p * columns).max() <= 1.0
        assert (mass[p == 0] == 0).all()


def test_device_alias_table_matches_the_host_table():
    dataset = trajectories(**HAND)
    cfg = BaseConfig(sampler="aw", sampler_temperature=0.5)
    threshold, alias = sampling.alias_table(sampling.transition_probabilities(dataset, cfg))
    data = sampling.prepare(dataset, cfg)
    assert data.alias_threshold.dtype == jnp.uint32
    # A full column keeps itself either way, so ALIAS_UNIT is stored as ALIAS_UNIT - 1.
    full = threshold == sampling.ALIAS_UNIT
    stored = np.where(full, sampling.ALIAS_UNIT - 1, threshold)
    np.testing.assert_array_equal(np.asarray(data.alias_threshold), stored)
    np.testing.assert_array_equal(np.asarray(data.alias_index), alias)
    assert (alias[full] == np.flatnonzero(full)).all()


# Six trajectories of different lengths, returns and initial observations (AW's fit does not interpolate).
FREQUENCY = dict(
    rewards=[[1.0, 0.0, 2.0], [0.5] * 5, [4.0, -1.0], [1.0] * 6, [0.0, 0.0, 0.0, 7.0], [2.5]],
    initial=[0.3, -1.0, 0.8, 2.0, -0.4, 1.1],
    ends=["terminal", "timeout", "terminal", "timeout", "terminal", ""],
)


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_drawn_frequencies_match_the_probabilities(sampler):
    dataset = trajectories(**FREQUENCY)
    cfg = BaseConfig(sampler=sampler, sampler_temperature=0.5, sampler_top_fraction=0.5)
    expected = sampling.transition_probabilities(dataset, cfg)
    data = sampling.prepare(dataset, cfg)
    draws = 200_000
    indices = jax.jit(sampling.sample_indices, static_argnums=2)(data, jax.random.key(0), draws)
    counts = np.bincount(np.asarray(indices), minlength=dataset.size)
    support = expected > 0
    assert (counts[~support] == 0).all()
    result = stats.chisquare(counts[support], draws * expected[support])
    assert result.pvalue > 1e-3, (counts, draws * expected)


def test_sample_gathers_whole_transitions():
    dataset = trajectories(**FREQUENCY)
    data = sampling.prepare(dataset, BaseConfig(sampler="rw", normalize_observations=False))
    key = jax.random.key(3)
    indices = np.asarray(sampling.sample_indices(data, key, 32))
    batch = sampling.sample(data, key, 32)
    np.testing.assert_array_equal(np.asarray(batch.observations), np.asarray(dataset.observations)[indices])
    np.testing.assert_array_equal(np.asarray(batch.masks), 1.0 - np.asarray(dataset.terminals)[indices])


def test_unknown_sampler_and_bad_settings_are_refused():
    dataset = trajectories(**HAND)
    with pytest.raises(ValueError, match="unknown sampler 'RW'.*Did you mean 'rw'"):
        sampling.prepare(dataset, BaseConfig(sampler="RW"))
    with pytest.raises(ValueError, match="unknown sampler 'top-k'.*Did you mean 'topk'.*Available: uniform"):
        sampling.prepare(dataset, BaseConfig(sampler="top-k"))
    with pytest.raises(ValueError, match="sampler_temperature > 0"):
        sampling.prepare(dataset, BaseConfig(sampler="aw", sampler_temperature=0.0))
    for fraction in (0.0, 1.5):
        with pytest.raises(ValueError, match="0 < sampler_top_fraction <= 1"):
            sampling.prepare(dataset, BaseConfig(sampler="topk", sampler_top_fraction=fraction))


def test_topk_subset_runs_in_the_engine():
    """The engine with the topk table; test_cql runs it with aw's alias table, test_engine with uniform."""
    dataset = trajectories(**FREQUENCY, observation_dim=3)
    algorithm = get_algorithm("bc")
    cfg = algorithm.Config(hidden_dims=(8,), batch_size=8, sampler="topk")
    data = sampling.prepare(dataset, cfg)
    init_keys, keys = seed_keys((0, 1))
    states = init_states(algorithm, data, cfg, init_keys)
    states, _, _, finite = make_train_chunk(algorithm, cfg, 3)(states, keys, data, None)
    assert np.asarray(finite).all() and int(states.step) == 3


# Shared across the tests below, so each (config, sampler) draw compiles once. ``draw`` gives the batch
# the config asks for: transitions, or H-step chunks for configs with a critic_horizon (DQC).
draw = jax.jit(sampling.draw, static_argnums=2)


@pytest.mark.parametrize("name", available_algorithms())
def test_every_algorithm_trains_with_every_sampler(name):
    """Updates never look at the sampler: batches from any sampler train any algorithm.

    The update is compiled once per algorithm (the sampler is left out of its static config) and fed
    batches drawn by each sampler.
    """
    dataset = trajectories(**FREQUENCY, observation_dim=3)
    algorithm = get_algorithm(name)
    # Small networks for speed, whatever an algorithm calls them (actor_hidden_dims, ...).
    small = {f.name: (8, 8) for f in dataclasses.fields(algorithm.Config) if f.name.endswith("hidden_dims")}
    if hasattr(algorithm.Config, "critic_horizon"):  # chunked algorithms: windows that fit these episodes
        small |= {"critic_horizon": 3, "action_horizon": 2}
    cfg = algorithm.Config(batch_size=8, total_steps=3, **small)
    update = jax.jit(algorithm.update, static_argnums=3)
    prepared = training_data(algorithm, dataset, cfg)
    initial = jax.jit(algorithm.init, static_argnums=2)(jax.random.key(0), prepared.dataset, cfg)
    shared = shared_arrays(algorithm, prepared, cfg)  # derived from the dataset, not the sampler
    extra = {} if shared is None else {"shared": shared}
    for sampler in sampling.SAMPLERS:
        data = training_data(
            algorithm, dataset, dataclasses.replace(cfg, sampler=sampler, sampler_temperature=0.5)
        )
        state = initial
        for step in range(3):
            batch = draw(data, jax.random.key(step), cfg)
            state, _ = update(state, batch, jax.random.key(100 + step), cfg, **extra)
        assert int(state.step) == 3, sampler
        for leaf in jax.tree.leaves(state):
            assert np.isfinite(np.asarray(leaf)).all(), sampler
