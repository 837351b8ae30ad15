"""A2PR: the adaptive BC target and weight, the value and VAE losses by hand, the update order."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from offbench.algorithms import a2pr, sampling, td3
from offbench.algorithms.config import resolve_config
from offbench.algorithms.registry import get_algorithm
from offbench.algorithms.sampling import Batch

SMALL = {
    "actor_hidden_dims": (8,),
    "critic_hidden_dims": (1,),
    "value_hidden_dims": (4,),
    "vae_hidden_dims": (4, 4),
    "batch_size": 4,
}


def constant_network(params, output_bias, output_layer: str | None = None):
    """Every weight zero except one output bias: the network outputs ``output_bias`` everywhere."""
    zeroed = jax.tree.map(jnp.zeros_like, params)
    flat = jax.tree_util.tree_flatten_with_path(zeroed)[0]
    biases = [path for path, _ in flat if "bias" in jax.tree_util.keystr(path)]
    if output_layer is not None:
        biases = [path for path in biases if output_layer in jax.tree_util.keystr(path)]
    last_bias = biases[-1]

    def set_bias(path, leaf):
        if path != last_bias:
            return leaf
        bias = jnp.asarray(output_bias, leaf.dtype).reshape(leaf.shape[:-1] + (-1,))
        return jnp.broadcast_to(bias, leaf.shape)

    return jax.tree_util.tree_map_with_path(set_bias, zeroed)


def linear_critic(params):
    """Q1 = Q2 = a_0 + 10 with one hidden ReLU unit (observations 3, actions 2)."""
    member = {
        "Dense_0": {"kernel": jnp.zeros((5, 1)).at[3, 0].set(1.0), "bias": jnp.array([10.0])},
        "Dense_1": {"kernel": jnp.ones((1, 1)), "bias": jnp.zeros(1)},
    }
    stacked = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf]), member)
    assert jax.tree.structure(stacked) == jax.tree.structure(params["params"]["VmapMLP_0"])
    return {"params": {"VmapMLP_0": stacked}}


def hand_state(toy_dataset, **overrides):
    """pi = tanh(0.3, -0.2); VAE(s, .) = tanh(0.5, 0.1) whatever the input and the noise; Q1 = a_0 + 10."""
    cfg = a2pr.Config(**{**SMALL, **overrides})
    state = a2pr.init(jax.random.key(0), toy_dataset(), cfg)
    vae = constant_network(state.vae, [0.5, 0.1], output_layer="decoder")
    state = state.replace(critic=linear_critic(state.critic), vae=vae)
    return cfg, state, constant_network(state.actor, [0.3, -0.2])


def one_sample(action) -> Batch:
    return Batch(
        observations=jnp.array([[0.1, -0.2, 0.3]]),
        actions=jnp.asarray([action], jnp.float32),
        rewards=jnp.array([1.0]),
        next_observations=jnp.array([[0.0, 0.0, 1.0]]),
        masks=jnp.array([1.0]),
        next_actions=jnp.asarray([action], jnp.float32),
    )


PI = np.tanh([0.3, -0.2])
VAE_ACTION = np.tanh([0.5, 0.1])  # Q1 = 10.4621...


@pytest.mark.parametrize(
    ("action", "v", "vae_target", "on"),
    [
        ([-0.5, 0.7], 9.0, True, True),  # both advantages positive: weight mask, not 2 * mask
        ([0.9, 0.7], 10.7, False, True),  # only the dataset action's: Q1(a) = 10.9 > V > Q1(VAE)
        ([-0.5, 0.7], 10.0, True, True),  # only the VAE action's: Q1(VAE) >= V >= Q1(a) = 9.5
        ([-0.5, 0.7], 11.0, True, False),  # neither
        ([0.5, 0.7], 10.5, False, False),  # Q1(a) = V exactly does not count (Q1(VAE) = 10.46 < V)
        (None, 9.0, True, True),  # Q1(VAE) = Q1(a), the dataset action sharing the VAE's first coordinate
    ],
)
def test_bc_target_and_weight(toy_dataset, action, v, vae_target, on):
    cfg, state, actor = hand_state(toy_dataset, mask=0.4)
    if action is None:  # the tie goes to the VAE action
        vae = a2pr.networks(cfg, 2, 1.0)[3]
        reconstruction = vae.apply(state.vae, jnp.zeros((1, 3)), jnp.zeros((1, 2)), jax.random.key(0))[0]
        action = [float(reconstruction[0, 0]), 0.7]
    loss, info = a2pr.actor_loss(actor, state, one_sample(action), jnp.array([v]), jax.random.key(1), cfg)
    target = VAE_ACTION if vae_target else np.asarray(action)
    expected_bc = (0.4 if on else 0.0) * np.mean((PI - target) ** 2)
    assert float(info["bc_loss"]) == pytest.approx(expected_bc, rel=1e-5, abs=1e-9)
    assert float(info["vae_target_fraction"]) == float(vae_target)
    # lambda = alpha / |Q1(pi)|, so -lambda * Q1(pi) = -alpha; BC is not scaled by lambda.
    assert float(loss) == pytest.approx(-2.5 + expected_bc, rel=1e-5)


def test_bc_weight_boundary_on_the_vae_side(toy_dataset):
    cfg, state, actor = hand_state(toy_dataset, mask=0.4)
    _, critic, _, vae = a2pr.networks(cfg, 2, 1.0)
    batch = one_sample([-0.5, 0.7])
    reconstruction = vae.apply(state.vae, batch.observations, batch.actions, jax.random.key(0))[0]
    q_vae = critic.apply(state.critic, batch.observations, reconstruction)[0]
    _, info = a2pr.actor_loss(actor, state, batch, q_vae, jax.random.key(1), cfg)  # V = Q1(VAE) exactly
    assert float(info["bc_weight_mean"]) == pytest.approx(0.4)


def test_value_target_is_the_min_of_the_updated_and_target_critics(toy_dataset):
    cfg = a2pr.Config(**SMALL, discount=0.9)
    state = a2pr.init(jax.random.key(0), toy_dataset(), cfg)
    state = state.replace(critic=constant_network(state.critic, [[2.0], [3.0]]))  # updated critic: min = 2
    value = constant_network(state.value, [0.5])
    batch = Batch(
        observations=jnp.zeros((3, 3)),
        actions=jnp.zeros((3, 2)),
        rewards=jnp.array([1.0, 1.0, 0.0]),
        next_observations=jnp.zeros((3, 3)),
        masks=jnp.array([1.0, 1.0, 0.0]),
        next_actions=jnp.zeros((3, 2)),
    )
    target = jnp.array([5.0, 2.0, 7.0])  # the critic step's y
    loss, _ = a2pr.value_loss(value, state, batch, jnp.zeros((3, 2)), target, cfg)
    updated = np.array([1.0 + 0.9 * 2.0, 1.0 + 0.9 * 2.0, 0.0])  # y_Q; the terminal does not bootstrap
    pessimistic = np.minimum(updated, [5.0, 2.0, 7.0])  # [2.8, 2.0, 0.0]
    assert float(loss) == pytest.approx(np.mean((0.5 - pessimistic) ** 2), rel=1e-6)


def test_vae_loss_by_hand(toy_dataset):
    cfg, state, _ = hand_state(toy_dataset, vae_weight=1.5)
    mean, log_std = 0.3, -6.0  # log_std is clamped to -4
    heads = {"['params']['mean']['bias']": mean, "['params']['log_std']['bias']": log_std}
    vae = jax.tree_util.tree_map_with_path(
        lambda path, leaf: (
            jnp.full_like(leaf, heads.get(jax.tree_util.keystr(path), 0.0))
            if jax.tree_util.keystr(path) in heads
            else leaf
        ),
        state.vae,
    )
    actions = jnp.array([[0.2, 0.0], [-0.8, 0.5], [0.9, -0.9]])  # Q1 = 10.2, 9.2, 10.9
    batch = Batch(
        observations=jnp.zeros((3, 3)),
        actions=actions,
        rewards=jnp.zeros(3),
        next_observations=jnp.zeros((3, 3)),
        masks=jnp.ones(3),
        next_actions=actions,
    )
    v = jnp.array([10.0, 10.0, 10.9])  # positive advantage for the first sample only (10.9 > 10.9 is false)
    loss, info = a2pr.vae_loss(vae, state, batch, v, jax.random.key(2), cfg)
    weights = np.array([1.5, 0.0, 0.0])
    recon = np.mean(weights[:, None] * (VAE_ACTION - np.asarray(actions)) ** 2)
    kl = -0.5 * np.mean(1.0 + 2 * -4.0 - mean**2 - np.exp(2 * -4.0))
    assert float(info["recon_loss"]) == pytest.approx(recon, rel=1e-6)
    assert float(info["kl_loss"]) == pytest.approx(kl, rel=1e-5)
    assert float(loss) == pytest.approx(recon + 0.5 * kl, rel=1e-5)


def reference_actor_loss(actor_params, state, batch, v, key, cfg, stop_gradient: bool):
    """An independent write-up of the actor loss, with the target's gradient kept or cut explicitly."""
    actor, critic, _, vae = a2pr.networks(cfg, state.action_dim, state.max_action)
    pi = actor.apply(actor_params, batch.observations)
    q1 = lambda a: critic.apply(state.critic, batch.observations, a)[0]  # noqa: E731
    reconstruction = vae.apply(state.vae, batch.observations, pi, key)[0]
    if stop_gradient:
        reconstruction = jax.lax.stop_gradient(reconstruction)
    take_vae = q1(reconstruction) >= q1(batch.actions)
    target = jnp.where(take_vae[:, None], reconstruction, batch.actions)
    weight = cfg.mask * jnp.logical_or(q1(reconstruction) >= v, q1(batch.actions) > v)
    lmbda = jax.lax.stop_gradient(cfg.alpha / jnp.abs(q1(pi)).mean())
    return -lmbda * q1(pi).mean() + (weight[:, None] * (pi - target) ** 2).mean()


def test_gradient_flows_through_the_vae_target_unless_switched_off(toy_dataset):
    cfg = a2pr.Config(**{**SMALL, "critic_hidden_dims": (8,)}, mask=1.0)
    dataset = toy_dataset(8)
    state = a2pr.init(jax.random.key(3), dataset, cfg)
    batch = sampling.gather(dataset, jnp.arange(8))
    v = jnp.full(8, -100.0)  # every BC weight on
    key = jax.random.key(4)
    grads = {}
    for stop in (False, True):
        variant = dataclasses.replace(cfg, stop_gradient_vae_target=stop)
        loss = lambda p, c=variant: a2pr.actor_loss(p, state, batch, v, key, c)[0]  # noqa: E731
        grads[stop] = jax.grad(loss)(state.actor)
        expected = jax.grad(reference_actor_loss)(state.actor, state, batch, v, key, variant, stop)
        for a, b in zip(jax.tree.leaves(grads[stop]), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)
    difference = max(
        float(jnp.abs(a - b).max())
        for a, b in zip(jax.tree.leaves(grads[False]), jax.tree.leaves(grads[True]), strict=True)
    )
    assert difference > 1e-4


@pytest.mark.slow  # ~25 s on 2 cores; the loss and target tests above pin A2PR's steps in the default run
def test_update_order(toy_dataset, monkeypatch):
    """Critic step, then V toward the updated critic, then the VAE with the updated Q1 and the V from
    before its step, then the actor with the updated critic and VAE and that same V."""
    cfg = a2pr.Config(**{**SMALL, "critic_hidden_dims": (8,)})
    dataset = toy_dataset(8)
    batch = sampling.gather(dataset, jnp.arange(8))
    state = a2pr.init(jax.random.key(5), dataset, cfg).replace(step=jnp.ones((), jnp.int32))  # actor step
    seen = {}

    def spy_on(module, name):
        function = getattr(module, name)

        def spy(*args):
            seen[name] = args
            return function(*args)

        monkeypatch.setattr(module, name, spy)

    spy_on(td3, "critic_step")
    for name in ("value_loss", "vae_loss", "actor_loss"):
        spy_on(a2pr, name)
    with jax.disable_jit():  # the actor step's lax.cond then runs eagerly, so the spies see values
        after, _ = a2pr.update(state, batch, jax.random.key(6), cfg)

    leaves = lambda tree: np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])  # noqa: E731
    same = lambda a, b: np.array_equal(leaves(a), leaves(b))  # noqa: E731
    _, _, value_net, _ = a2pr.networks(cfg, state.action_dim, state.max_action)
    old_v = value_net.apply(state.value, batch.observations)
    assert not same(after.critic, state.critic) and not same(after.value, state.value)
    assert same(seen["critic_step"][0].critic, state.critic)
    assert same(seen["value_loss"][1].critic, after.critic)
    _, vae_reads, _, v_for_vae, _, _ = seen["vae_loss"]
    assert same(vae_reads.critic, after.critic) and same(v_for_vae, old_v)
    _, actor_reads, _, v_for_actor, _, _ = seen["actor_loss"]
    assert same(actor_reads.critic, after.critic) and same(actor_reads.vae, after.vae)
    assert not same(actor_reads.vae, state.vae) and same(v_for_actor, old_v)
    # The actor step moves the actor and both targets by Polyak averaging, and never the VAE.
    assert not same(after.actor, state.actor) and same(after.vae, actor_reads.vae)
    np.testing.assert_allclose(
        leaves(after.critic_target),
        0.995 * leaves(state.critic_target) + 0.005 * leaves(after.critic),
        rtol=1e-5,
        atol=1e-7,
    )


def test_dataset_overrides():
    overrides = get_algorithm("a2pr").dataset_overrides
    hopper = resolve_config(a2pr.Config, "mujoco/hopper/medium-v0", overrides)
    assert (hopper.alpha, hopper.vae_weight, hopper.mask, hopper.discount) == (2.5, 1.0, 0.4, 0.995)
    assert resolve_config(a2pr.Config, "hopper-random-v2", overrides).mask == 1.5
    assert resolve_config(a2pr.Config, "halfcheetah-medium-v2", overrides).alpha == 40.0
    assert resolve_config(a2pr.Config, "mujoco/walker2d/medium-v0", overrides).vae_weight == 1.5
    # The README at a3b81aa: medium-replay and medium-expert, on the generated and the Minari ids alike.
    replay = resolve_config(a2pr.Config, "offbench/hopper/medium-replay-v0", overrides)
    assert (replay.vae_weight, replay.mask, replay.discount) == (1.5, 0.5, 0.99)
    assert resolve_config(a2pr.Config, "mujoco/hopper/medium-expert-v0", overrides).mask == 4.0
    assert resolve_config(a2pr.Config, "halfcheetah-medium-expert-v2", overrides).mask == 10.0
    assert resolve_config(a2pr.Config, "walker2d-medium-replay-v2", overrides).mask == 1.2
    # Unpublished settings (AntMaze) keep the code's defaults.
    assert resolve_config(a2pr.Config, "D4RL/antmaze/umaze-v1", overrides) == a2pr.Config()
