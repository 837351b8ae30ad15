"""Loss values of BC, TD3+BC and IQL on tiny fixed batches, computed by hand."""

from __future__ import annotations

import dataclasses
import importlib
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from toy import BATCH

from offbench.algorithms import bc, iql, nets, td3, td3bc
from offbench.algorithms.config import resolve_config
from offbench.algorithms.nets import CriticEnsemble, first_critic, linear_with_transposed_kernel
from offbench.algorithms.registry import REGISTRY, get_algorithm


def constant_network(params, output_bias, output_layer: str | None = None):
    """Zero every kernel and bias, then set the output bias: the network outputs ``output_bias``.

    With zero hidden weights every ReLU unit is 0, so the output is exactly the last bias: a network
    whose value we know by hand. For an ensemble the last axis-0 entries give each member's bias.
    """
    zeroed = jax.tree.map(jnp.zeros_like, params)
    flat = jax.tree_util.tree_flatten_with_path(zeroed)[0]
    biases = [path for path, _ in flat if "bias" in jax.tree_util.keystr(path)]
    if output_layer is not None:
        biases = [path for path in biases if output_layer in jax.tree_util.keystr(path)]
    last_bias_path = biases[-1]

    def set_bias(path, leaf):
        if path == last_bias_path:
            return jnp.broadcast_to(
                jnp.asarray(output_bias, leaf.dtype).reshape(leaf.shape[:-1] + (-1,)), leaf.shape
            )
        return leaf

    return jax.tree_util.tree_map_with_path(set_bias, zeroed)


def td3bc_critic_loss(state: td3bc.State, key: jax.Array, cfg: td3bc.Config) -> jax.Array:
    actor, critic = td3bc.networks(cfg, state.action_dim, state.max_action)
    target, _ = td3.td_target(actor, critic, state, BATCH, key, cfg)
    return td3.critic_loss(state.critic, critic, BATCH, target)[0]


def test_td3bc_critic_loss_by_hand(toy_dataset):
    cfg = td3bc.Config(hidden_dims=(4,), policy_noise=0.0)
    state = td3bc.init(jax.random.key(0), toy_dataset(), cfg)
    critic = constant_network(state.critic, [[1.0], [2.0]])  # Q1 = 1, Q2 = 2 everywhere
    state = state.replace(critic=critic, critic_target=critic)
    loss = td3bc_critic_loss(state, jax.random.key(1), cfg)
    # target = r + 0.99 * mask * min(1, 2) = [1.99, 2.0]; loss = mean((1-t)^2) + mean((2-t)^2)
    expected = np.mean([(1 - 1.99) ** 2, (1 - 2.0) ** 2]) + np.mean([(2 - 1.99) ** 2, 0.0])
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def numpy_mlp(params: dict, x: np.ndarray) -> np.ndarray:
    """An independent numpy forward pass of a ReLU MLP stored as Dense_0..Dense_k."""
    node = params["params"]
    while "Dense_0" not in node:
        (node,) = node.values()
    layers = [node[f"Dense_{i}"] for i in range(len(node))]
    for i, layer in enumerate(layers):
        x = x @ np.asarray(layer["kernel"]) + np.asarray(layer["bias"])
        if i < len(layers) - 1:
            x = np.maximum(x, 0.0)
    return x


def test_td3bc_critic_loss_with_clipped_target_noise_matches_numpy(toy_dataset):
    cfg = td3bc.Config(hidden_dims=(8, 8), policy_noise=5.0, noise_clip=0.5)
    state = td3bc.init(jax.random.key(0), toy_dataset(), cfg)
    key = jax.random.key(3)
    loss = td3bc_critic_loss(state, key, cfg)

    noise = np.clip(5.0 * np.asarray(jax.random.normal(key, BATCH.actions.shape)), -0.5, 0.5)
    assert np.abs(noise).max() == 0.5  # the noise is large enough that clipping matters
    next_obs, obs = np.asarray(BATCH.next_observations), np.asarray(BATCH.observations)
    next_actions = np.clip(np.tanh(numpy_mlp(state.actor_target, next_obs)) + noise, -1.0, 1.0)

    def critics(params, o, a):
        stacked = params["params"]["VmapMLP_0"]
        members = [{"params": jax.tree.map(lambda leaf, i=i: np.asarray(leaf)[i], stacked)} for i in range(2)]
        return np.stack([numpy_mlp(m, np.concatenate([o, a], -1))[:, 0] for m in members])

    target = np.asarray(BATCH.rewards) + 0.99 * np.asarray(BATCH.masks) * critics(
        state.critic_target, next_obs, next_actions
    ).min(0)
    q = critics(state.critic, obs, np.asarray(BATCH.actions))
    assert float(loss) == pytest.approx(((q - target) ** 2).mean(1).sum(), rel=1e-5)


def test_td3bc_actor_loss_by_hand(toy_dataset):
    cfg = td3bc.Config(hidden_dims=(4,), alpha=2.5)
    state = td3bc.init(jax.random.key(0), toy_dataset(), cfg)
    state = state.replace(critic=constant_network(state.critic, [[-4.0], [7.0]]))
    actor = constant_network(state.actor, [0.3, -0.2])
    loss, info = td3bc.actor_loss(actor, state, BATCH, cfg)
    pi = np.tanh([0.3, -0.2])
    bc_loss = np.mean((pi - np.asarray(BATCH.actions)) ** 2)
    # lambda = alpha / mean|Q1| = 2.5 / 4; -lambda * mean(Q1) = 2.5
    assert float(info["bc_loss"]) == pytest.approx(bc_loss, rel=1e-6)
    assert float(loss) == pytest.approx(2.5 + bc_loss, rel=1e-6)


def test_td3bc_actor_and_targets_move_every_second_step(toy_dataset):
    cfg = td3bc.Config(hidden_dims=(8,))
    state = td3bc.init(jax.random.key(0), toy_dataset(), cfg)
    first, info = td3bc.update(state, BATCH, jax.random.key(1), cfg)
    leaves = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])  # noqa: E731
    assert np.array_equal(leaves(first.actor), leaves(state.actor))
    assert np.isnan(float(info["actor_loss"])) and np.isnan(float(info["bc_loss"]))  # no actor step: NaN
    assert np.array_equal(leaves(first.critic_target), leaves(state.critic_target))
    assert not np.array_equal(leaves(first.critic), leaves(state.critic))
    second, _ = td3bc.update(first, BATCH, jax.random.key(2), cfg)
    assert not np.array_equal(leaves(second.actor), leaves(first.actor))
    expected_target = 0.995 * leaves(first.critic_target) + 0.005 * leaves(second.critic)
    np.testing.assert_allclose(leaves(second.critic_target), expected_target, rtol=1e-5, atol=1e-7)


def test_iql_losses_by_hand(toy_dataset):
    cfg = iql.Config(hidden_dims=(4, 4), expectile=0.7, temperature=3.0, discount=0.99)
    state = iql.init(jax.random.key(0), toy_dataset(), cfg)
    critic = constant_network(state.critic, [[1.0], [1.5]])  # min(Q1, Q2) = 1
    value = constant_network(state.value, [0.6])
    actor = constant_network(state.actor, [0.2, -0.1], output_layer="['params']['Dense_0']")
    log_std = np.log(0.5)
    actor = jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.full_like(leaf, log_std) if "log_std" in jax.tree_util.keystr(path) else leaf,
        actor,
    )
    state = state.replace(critic=critic, critic_target=critic, value=value, actor=actor)

    value_loss, _ = iql.value_loss(state.value, state, BATCH, cfg)
    assert float(value_loss) == pytest.approx(0.7 * (1.0 - 0.6) ** 2, rel=1e-6)  # q - v > 0: weight 0.7

    actor_loss, info = iql.actor_loss(state.actor, state, BATCH, jax.random.key(0), cfg)
    weight = math.exp((1.0 - 0.6) * 3.0)
    mean = np.tanh([0.2, -0.1])
    actions = np.asarray(BATCH.actions)
    log_prob = np.sum(-0.5 * ((actions - mean) / 0.5) ** 2 - np.log(0.5) - 0.5 * np.log(2 * np.pi), axis=-1)
    assert float(info["advantage_weight"]) == pytest.approx(weight, rel=1e-5)
    assert float(actor_loss) == pytest.approx(-np.mean(weight * log_prob), rel=1e-5)

    critic_loss, _ = iql.critic_loss(state.critic, state, BATCH, cfg)
    target = np.array([1.0 + 0.99 * 0.6, 2.0])  # the terminal transition does not bootstrap
    expected = np.mean((1.0 - target) ** 2 + (1.5 - target) ** 2)
    assert float(critic_loss) == pytest.approx(expected, rel=1e-6)


def test_iql_advantage_weight_is_clipped(toy_dataset):
    cfg = iql.Config(hidden_dims=(4, 4), temperature=3.0)
    state = iql.init(jax.random.key(0), toy_dataset(), cfg)
    critic = constant_network(state.critic, [[100.0], [100.0]])
    state = state.replace(critic_target=critic, value=constant_network(state.value, [0.0]))
    _, info = iql.actor_loss(state.actor, state, BATCH, jax.random.key(0), cfg)
    assert float(info["advantage_weight"]) == pytest.approx(100.0)


def test_dropout_drops_hidden_units_and_rescales_the_kept_ones():
    """Inverted dropout after the hidden activation (jaxrl's MLP): each unit kept with probability
    1 - rate and scaled by 1 / (1 - rate); without ``training`` the network is the plain one."""
    width, rate = 64, 0.25
    mlp = nets.MLP((width,), 1, dropout_rate=rate)
    params = mlp.init(jax.random.key(0), jnp.zeros((1, 1)))
    params = jax.tree.map(jnp.zeros_like, params)
    # Every hidden unit outputs relu(0 * x + 1) = 1; the output sums them.
    params["params"]["Dense_0"]["bias"] = jnp.ones(width)
    params["params"]["Dense_1"]["kernel"] = jnp.ones((width, 1))
    x = jnp.zeros((1, 1))
    assert float(mlp.apply(params, x)[0, 0]) == pytest.approx(width)
    outputs = np.array(
        [
            float(mlp.apply(params, x, training=True, rngs={"dropout": jax.random.key(k)})[0, 0])
            for k in range(200)
        ]
    )
    kept = outputs * (1.0 - rate)
    np.testing.assert_allclose(kept, np.round(kept), atol=1e-4)  # a whole number of units survives
    assert len(np.unique(outputs)) > 1
    assert kept.mean() == pytest.approx(width * (1.0 - rate), rel=0.05)


def test_iql_actor_dropout_acts_in_training_only(toy_dataset):
    plain = iql.Config(hidden_dims=(8, 8))
    dropout = dataclasses.replace(plain, actor_dropout=0.5)
    dataset = toy_dataset()
    state = iql.init(jax.random.key(0), dataset, plain)
    # Dropout adds no parameters: the same state serves both configs.
    assert jax.tree.structure(iql.init(jax.random.key(0), dataset, dropout)) == jax.tree.structure(state)
    np.testing.assert_array_equal(
        iql.act(state, BATCH.observations, plain), iql.act(state, BATCH.observations, dropout)
    )
    plain_losses = {
        float(iql.actor_loss(state.actor, state, BATCH, jax.random.key(k), plain)[0]) for k in range(3)
    }
    dropout_losses = {
        float(iql.actor_loss(state.actor, state, BATCH, jax.random.key(k), dropout)[0]) for k in range(3)
    }
    assert len(plain_losses) == 1  # without dropout the update does not read its key
    assert len(dropout_losses) == 3


def test_iql_expectile_loss_by_hand():
    np.testing.assert_allclose(iql.expectile_loss(jnp.array([-1.0, 2.0]), 0.7), [0.3, 2.8], rtol=1e-6)


def test_bc_loss_by_hand(toy_dataset):
    cfg = bc.Config(hidden_dims=(4,))
    state = bc.init(jax.random.key(0), toy_dataset(), cfg)
    params = constant_network(state.actor, [0.0, 0.5])
    loss, _ = bc.loss_fn(params, state, BATCH, cfg)
    expected = np.mean((np.array([0.0, np.tanh(0.5)]) - np.asarray(BATCH.actions)) ** 2)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_iql_reward_scaling_follows_return_range(toy_dataset):
    from offbench.algorithms.sampling import reward_transform

    dataset = toy_dataset()
    returns = np.asarray(dataset.episodes.returns)
    scale, shift = reward_transform(dataset, iql.Config())
    assert scale == pytest.approx(1000.0 / (returns.max() - returns.min()))
    assert shift == 0.0


def test_dataset_overrides_then_user_overrides():
    algorithm = get_algorithm("iql")
    cfg = resolve_config(
        algorithm.Config, "D4RL/antmaze/umaze-v1", algorithm.dataset_overrides, {"temperature": "5"}
    )
    assert cfg.expectile == 0.9 and cfg.reward_shift == -1.0 and cfg.reward_normalization == "none"
    assert cfg.temperature == 5.0
    locomotion = resolve_config(algorithm.Config, "mujoco/hopper/medium-v0", algorithm.dataset_overrides)
    assert dataclasses.asdict(locomotion) == dataclasses.asdict(iql.Config())


def test_unknown_hyper_parameter_and_algorithm_suggest_fixes():
    with pytest.raises(ValueError, match="no hyper-parameter 'alhpa'.*Did you mean 'alpha'"):
        resolve_config(td3bc.Config, "x", (), {"alhpa": 1})
    with pytest.raises(ValueError, match="unknown algorithm 'td3_bc'.*Did you mean 'td3bc'"):
        get_algorithm("td3_bc")
    with pytest.raises(ValueError, match="not a valid int"):
        resolve_config(td3bc.Config, "x", (), {"policy_freq": "two"})


def test_first_critic_equals_the_ensembles_first_member_and_its_action_gradient():
    critic = CriticEnsemble((32, 32), layer_norm=True)
    observations = jax.random.normal(jax.random.key(0), (7, 5))
    actions = jax.random.uniform(jax.random.key(1), (7, 2), minval=-1.0, maxval=1.0)
    params = critic.init(jax.random.key(2), observations, actions)
    np.testing.assert_allclose(
        first_critic(critic, params, observations, actions),
        critic.apply(params, observations, actions)[0],
        rtol=1e-6,
    )

    def q1_mean(actions, q1):
        return q1(actions).mean()

    np.testing.assert_allclose(
        jax.grad(q1_mean)(actions, lambda a: first_critic(critic, params, observations, a)),
        jax.grad(q1_mean)(actions, lambda a: critic.apply(params, observations, a)[0]),
        rtol=1e-5,
        atol=1e-7,
    )


def test_linear_has_the_gradients_of_a_plain_matmul_with_any_leading_shape():
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (4, 6, 5))  # e.g. CQL's [batch, sampled actions, features]
    kernel = jax.random.normal(keys[1], (5, 3))
    weights = jax.random.normal(keys[2], (4, 6, 3))

    def loss(matmul, x, kernel):
        return (weights * matmul(x, kernel)).sum()

    expected = jax.grad(partial(loss, jnp.matmul), argnums=(0, 1))(x, kernel)
    got = jax.jit(jax.grad(partial(loss, linear_with_transposed_kernel), argnums=(0, 1)))(x, kernel)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_linear_takes_the_cpu_rewrite_only_on_cpu_with_equal_values(monkeypatch, backend):
    x, kernel = jax.random.normal(jax.random.key(0), (8, 5)), jax.random.normal(jax.random.key(1), (5, 3))
    monkeypatch.setattr(nets.jax, "default_backend", lambda: backend)  # read when linear is traced

    def loss(x, kernel):
        return jnp.sin(nets.linear(x, kernel)).sum()

    jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, kernel))
    assert ("optimization_barrier" in jaxpr) == (backend == "cpu")
    got = jax.grad(loss, argnums=(0, 1))(x, kernel)
    expected = jax.grad(lambda x, kernel: jnp.sin(x @ kernel).sum(), argnums=(0, 1))(x, kernel)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_module_declares_itself_under_its_registry_name(name):
    module = importlib.import_module(REGISTRY[name])
    declared = get_algorithm(name)
    assert declared is module.ALGORITHM and declared.name == name
    assert declared.Config is module.Config and declared.update is module.update
    # A module's published per-dataset settings reach the engine only through its declaration.
    assert declared.dataset_overrides == getattr(module, "DATASET_OVERRIDES", ())
