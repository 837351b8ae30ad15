"""CQL: defaults, the conservative term and critic loss by hand, sampled log-densities, the update."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy import BATCH, make_toy_dataset

from offbench.algorithms import cql, sampling
from offbench.algorithms.registry import get_algorithm
from offbench.bench.engine import init_states, make_train_chunk, seed_keys, state_axes

SMALL = cql.Config(hidden_dims=(4,), cql_n_actions=3)


def episodes_dataset():
    """64 random transitions in eight episodes (terminals and timeouts), enough for AW's regression."""
    return make_toy_dataset(64, terminals_at=[7, 20, 33], timeouts_at=[14, 27, 45, 63])


@pytest.fixture(scope="module")
def state() -> cql.State:
    return jax.jit(cql.init, static_argnums=2)(jax.random.key(0), episodes_dataset(), SMALL)


def constant(params: dict, output_bias) -> dict:
    """Zero every kernel and bias, then set the output layer's bias: the network outputs ``output_bias``.

    With zero hidden weights every ReLU unit is 0, so the output is exactly that bias. The policy's
    log-std multiplier and offset are scalars outside the network and keep their values.
    """

    def zero(path, leaf):
        return leaf if "log_std" in jax.tree_util.keystr(path) else jnp.zeros_like(leaf)

    zeroed = jax.tree_util.tree_map_with_path(zero, params)
    network = zeroed["params"]
    (network,) = (value for name, value in network.items() if "FullyConnected" in name)
    output = network[f"Dense_{len(network) - 1}"]
    shape = output["bias"].shape
    output["bias"] = jnp.broadcast_to(jnp.reshape(jnp.float32(output_bias), shape[:-1] + (-1,)), shape)
    return zeroed


def test_defaults_follow_jaxcql_as_the_paper_ran_it(state):
    cfg = cql.Config()
    assert cfg.cql_min_q_weight == 10.0  # the launcher's override of JaxCQL's 5.0
    assert (cfg.cql_n_actions, cfg.cql_temp, cfg.cql_importance_sample) == (10, 1.0, True)
    assert cfg.backup_entropy is False
    assert (cfg.policy_lr, cfg.qf_lr, cfg.tau, cfg.discount, cfg.batch_size) == (3e-4, 3e-4, 0.005, 0.99, 256)
    assert cfg.hidden_dims == (256, 256) and cfg.normalize_observations is False
    assert cfg.sampler_temperature == 0.2  # the paper's CQL temperature for RW/AW
    assert float(state.log_alpha) == 0.0
    policy = state.policy["params"]
    assert float(policy["log_std_multiplier"]) == 1.0 and float(policy["log_std_offset"]) == -1.0
    assert get_algorithm("cql") is cql.ALGORITHM


def critic_loss_by_hand(c, c_target, log_pis_current, log_pis_next, cfg):
    """TD to r + 0.99 * mask * min(target), plus the weighted conservative term, summed over critics."""
    rewards, masks = [1.0, 2.0], [1.0, 0.0]
    target = [r + 0.99 * m * min(c_target) for r, m in zip(rewards, masks, strict=True)]
    n, tau = cfg.cql_n_actions, cfg.cql_temp
    total = 0.0
    for q in c:
        td = sum((q - t) ** 2 for t in target) / 2
        terms = []
        for current, following in zip(log_pis_current, log_pis_next, strict=True):
            if cfg.cql_importance_sample:
                # Q - log density: the uniform density on [-1, 1]^2 is 1/4, so +2 log 2.
                values = [q + 2 * math.log(2)] * n + [q - lp for lp in current] + [q - lp for lp in following]
            else:
                values = [q] * (3 * n + 1)
            terms.append(tau * math.log(sum(math.exp(v / tau) for v in values)) - q)
        total += td + cfg.cql_min_q_weight * sum(terms) / len(terms)
    return total


@pytest.mark.parametrize("settings", [{}, {"cql_temp": 0.5}, {"cql_importance_sample": False}])
def test_critic_loss_with_constant_critics_by_hand(state, settings):
    cfg = dataclasses.replace(SMALL, **settings)
    log_pis_current = [[-1.0, 0.5, 2.0], [0.0, -3.0, 1.0]]
    log_pis_next = [[0.3, -0.7, 1.5], [-2.0, 0.25, 0.0]]
    samples = cql.CQLSamples(
        next_actions=jnp.zeros((2, 2)),
        next_log_pis=jnp.full((2,), 7.0),  # unused: no entropy backup
        random_actions=jnp.full((2, 3, 2), 0.3),
        current_actions=jnp.full((2, 3, 2), -0.2),
        current_log_pis=jnp.array(log_pis_current),
        next_state_actions=jnp.full((2, 3, 2), 0.9),
        next_state_log_pis=jnp.array(log_pis_next),
    )
    critic = constant(state.critic, [[1.0], [2.0]])
    test_state = state.replace(critic=critic, critic_target=constant(state.critic, [[3.0], [0.5]]))
    loss, info = jax.jit(cql.critic_loss, static_argnums=4)(critic, test_state, BATCH, samples, cfg)
    expected = critic_loss_by_hand([1.0, 2.0], [3.0, 0.5], log_pis_current, log_pis_next, cfg)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    if not cfg.cql_importance_sample:  # 3n + 1 equal values: the term is temp * log(3n + 1)
        assert float(info["cql_term"]) == pytest.approx(math.log(10), rel=1e-5)


def action_critic(params: dict, slopes, offsets) -> dict:
    """Critic member m outputs ``slopes[m] * (a_0 + 1) + offsets[m]``: a value that ranks actions.

    Hidden unit 0 computes relu(a_0 + 1) = a_0 + 1 on [-1, 1] (observation 3 inputs, then 2 actions);
    every other weight is zero.
    """
    network = jax.tree.map(jnp.zeros_like, params)["params"]["VmapFullyConnected_0"]
    network["Dense_0"]["kernel"] = network["Dense_0"]["kernel"].at[:, 3, 0].set(1.0)
    network["Dense_0"]["bias"] = network["Dense_0"]["bias"].at[:, 0].set(1.0)
    network["Dense_1"]["kernel"] = (
        network["Dense_1"]["kernel"].at[:, 0, 0].set(jnp.array(slopes, jnp.float32))
    )
    network["Dense_1"]["bias"] = jnp.array(offsets, jnp.float32)[:, None]
    return {"params": {"VmapFullyConnected_0": network}}


def test_max_target_backup_takes_the_best_of_n_draws(state):
    """JaxCQL's cql_max_target_backup: min over the critics per draw a'_k, then the largest over k,
    with log pi(a'|s') read at that k (it enters only with backup_entropy)."""
    cfg = dataclasses.replace(SMALL, cql_max_target_backup=True, backup_entropy=True)
    target = action_critic(state.critic, slopes=[1.0, 2.0], offsets=[0.5, 0.0])
    test_state = state.replace(critic_target=target, log_alpha=jnp.log(jnp.float32(0.5)))
    first_action = np.array([[-0.5, 0.9, 0.1], [0.8, -1.0, 0.3]])  # a'_0 of each draw k, per transition
    next_actions = np.stack([first_action, np.zeros_like(first_action)], axis=-1)
    next_log_pis = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    samples = cql.CQLSamples(
        next_actions=jnp.asarray(next_actions, jnp.float32),
        next_log_pis=jnp.asarray(next_log_pis, jnp.float32),
        random_actions=jnp.zeros((2, 3, 2)),
        current_actions=jnp.zeros((2, 3, 2)),
        current_log_pis=jnp.zeros((2, 3)),
        next_state_actions=jnp.zeros((2, 3, 2)),
        next_state_log_pis=jnp.zeros((2, 3)),
    )
    target_q, log_pi = jax.jit(cql.backup, static_argnums=3)(test_state, BATCH, samples, cfg)
    values = np.minimum(1.0 * (first_action + 1) + 0.5, 2.0 * (first_action + 1))  # [B, n]
    best = values.argmax(axis=1)
    assert list(best) == [1, 0]
    np.testing.assert_allclose(np.asarray(target_q), values.max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(log_pi), next_log_pis[[0, 1], best])
    _, info = jax.jit(cql.critic_loss, static_argnums=4)(state.critic, test_state, BATCH, samples, cfg)
    expected = values.max(axis=1) - 0.5 * next_log_pis[[0, 1], best]
    assert float(info["target_q_mean"]) == pytest.approx(expected.mean(), rel=1e-5)


def test_max_target_backup_draws_n_target_actions_apart_from_the_conservative_ones(state):
    cfg = dataclasses.replace(SMALL, cql_max_target_backup=True)
    samples = jax.jit(cql.draw_samples, static_argnums=3)(state, BATCH, jax.random.key(1), cfg)
    assert samples.next_actions.shape == (2, 3, 2) and samples.next_log_pis.shape == (2, 3)
    assert samples.next_state_actions.shape == (2, 3, 2)
    pooled = np.concatenate(
        [np.asarray(samples.next_actions), np.asarray(samples.next_state_actions)], axis=1
    )
    assert len(np.unique(pooled.reshape(-1, 2), axis=0)) == 12
    new, metrics = jax.jit(cql.update, static_argnums=3)(state, BATCH, jax.random.key(2), cfg)
    assert all(np.isfinite(float(v)) for v in metrics.values())


def tanh_gaussian_log_density(actions: np.ndarray, mean: np.ndarray, log_std: np.ndarray) -> np.ndarray:
    pre_tanh = np.arctanh(actions.astype(np.float64))
    gaussian = -0.5 * ((pre_tanh - mean) / np.exp(log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
    return (gaussian - np.log1p(-(actions.astype(np.float64) ** 2))).sum(-1)


def test_sampled_actions_and_their_log_densities(state):
    # Raw network outputs: mean [0.2, -0.4], log-std 1 * [0.5, -0.5] - 1 (multiplier and offset at init).
    policy = constant(state.policy, [0.2, -0.4, 0.5, -0.5])
    mean, log_std = np.array([0.2, -0.4]), np.array([-0.5, -1.5])
    draw = jax.jit(cql.draw_samples, static_argnums=3)
    samples = draw(state.replace(policy=policy), BATCH, jax.random.key(1), SMALL)
    assert samples.current_actions.shape == (2, 3, 2) and samples.next_state_log_pis.shape == (2, 3)
    assert samples.next_actions.shape == (2, 2) and samples.next_log_pis.shape == (2,)
    for actions, log_pis in [
        (samples.current_actions, samples.current_log_pis),
        (samples.next_state_actions, samples.next_state_log_pis),
        (samples.next_actions, samples.next_log_pis),
    ]:
        expected = tanh_gaussian_log_density(np.asarray(actions), mean, log_std)
        np.testing.assert_allclose(np.asarray(log_pis), expected, rtol=1e-4, atol=1e-4)
    random = np.asarray(samples.random_actions)
    assert random.shape == (2, 3, 2) and np.abs(random).max() <= 1.0 and random.std() > 0.3
    # The draws are independent: no two conservative actions coincide.
    assert len(np.unique(np.asarray(samples.current_actions).reshape(-1, 2), axis=0)) == 6


def test_policy_and_temperature_losses_by_hand(state):
    policy = constant(state.policy, [0.2, -0.4, 0.5, -0.5])
    test_state = state.replace(
        policy=policy, critic=constant(state.critic, [[1.0], [2.0]]), log_alpha=jnp.log(jnp.float32(0.5))
    )
    key = jax.random.key(4)
    loss, log_pi = jax.jit(cql.policy_loss, static_argnums=4)(policy, test_state, BATCH, key, SMALL)
    _, expected_log_pi = cql.sample_actions(policy, BATCH.observations, key, SMALL, 2, 1.0)
    np.testing.assert_allclose(np.asarray(log_pi), np.asarray(expected_log_pi), rtol=1e-5, atol=1e-6)
    # alpha * log pi - min(Q1, Q2)
    assert float(loss) == pytest.approx(0.5 * float(np.mean(log_pi)) - 1.0, rel=1e-5)
    # Target entropy -|A| = -2: the loss is -log_alpha * mean(log pi - 2).
    alpha_loss = cql.alpha_loss(jnp.float32(0.3), log_pi, 2)
    assert float(alpha_loss) == pytest.approx(-0.3 * (float(np.mean(log_pi)) - 2.0), rel=1e-5)


def test_update_moves_every_module_and_the_target_by_polyak(state):
    leaves = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])  # noqa: E731
    new, metrics = jax.jit(cql.update, static_argnums=3)(state, BATCH, jax.random.key(2), SMALL)
    assert int(new.step) == 1
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert not np.array_equal(leaves(new.policy), leaves(state.policy))
    assert not np.array_equal(leaves(new.critic), leaves(state.critic))
    # The losses used the temperature from before the step.
    assert float(new.log_alpha) != 0.0 and float(metrics["alpha"]) == 1.0
    expected_target = 0.995 * leaves(state.critic_target) + 0.005 * leaves(new.critic)
    np.testing.assert_allclose(leaves(new.critic_target), expected_target, rtol=1e-5, atol=1e-7)


def test_act_is_the_squashed_mean(state):
    policy = constant(state.policy, [0.2, -3.0, 0.5, -0.5])
    actions = jax.jit(cql.act, static_argnums=2)(state.replace(policy=policy), BATCH.observations, SMALL)
    np.testing.assert_allclose(np.asarray(actions), np.tanh([[0.2, -3.0]] * 2), rtol=1e-6)


def test_vmapped_seed_equals_single_run_in_the_engine():
    algorithm = get_algorithm("cql")
    cfg = cql.Config(hidden_dims=(16, 16), batch_size=16, cql_n_actions=4, sampler="aw")
    data = sampling.prepare(episodes_dataset(), cfg)

    def train(seeds):
        init_keys, keys = seed_keys(seeds)
        states = init_states(algorithm, data, cfg, init_keys)
        states, _, _, finite = make_train_chunk(algorithm, cfg, 6)(states, keys, data, None)
        assert np.asarray(finite).all() and int(states.step) == 6
        return states

    together, alone = train((0, 7, 3)), train((7,))

    def seed_slice(states, index):
        return jax.tree.map(
            lambda leaf, axis: leaf if axis is None else leaf[index],
            states,
            state_axes(states),
            is_leaf=lambda x: x is None,
        )

    for a, b in zip(
        jax.tree.leaves(seed_slice(together, 1)), jax.tree.leaves(seed_slice(alone, 0)), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
