"""DQC and its chunk sampler: windows, targets and losses by hand, ablation switches, best-of-N, engine."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from offbench.algorithms import dqc, sampling
from offbench.algorithms.config import BaseConfig, resolve_config
from offbench.bench import train as train_module
from offbench.bench.train import Job, run_job
from offbench.datasets.dataset import DatasetSpec, build_dataset
from offbench.datasets.evaluate import Evaluator

GAMMA = 0.5  # powers of 1/2 keep every hand-computed number exact in float32
SMALL = {"hidden_dims": (16,), "batch_size": 8, "num_samples": 4, "flow_steps": 3}

# Jitted once per config: eager op-by-op dispatch is what makes small JAX tests slow on CPU.
gather_chunks = jax.jit(sampling.gather_chunks, static_argnums=(2, 3))
loss_fn = jax.jit(dqc.loss_fn, static_argnums=(4, 5))
backup_targets = jax.jit(dqc.backup_targets, static_argnums=2)


def episodes_dataset(terminals=None, timeouts=None):
    """Row i has observation i, next observation 100 + i and action i / 10.

    Episode A = rows 0-2, rewards 1, 2, 4, ends by a terminal at row 2. Episode B = rows 3-6, rewards
    1, 2, 3, 4, ends by a timeout at row 6. Episode C = rows 7-9, rewards 1, 1, 1, unfinished.
    """
    n = 10
    if terminals is None:
        terminals = np.zeros(n, bool)
        terminals[2] = True
    if timeouts is None:
        timeouts = np.zeros(n, bool)
        timeouts[6] = True
    spec = DatasetSpec("hand", "test", None, 1, 1, (-1.0,), (1.0,))
    return build_dataset(
        spec,
        observations=np.arange(n, dtype=np.float32)[:, None],
        actions=np.arange(n, dtype=np.float32)[:, None] / 10,
        rewards=np.array([1, 2, 4, 1, 2, 3, 4, 1, 1, 1], np.float32),
        next_observations=100 + np.arange(n, dtype=np.float32)[:, None],
        terminals=terminals,
        timeouts=timeouts,
    )


def chunk_config(**overrides) -> dqc.Config:
    values = {"critic_horizon": 3, "action_horizon": 2, "discount": GAMMA, "normalize_observations": False}
    return dqc.Config(**{**SMALL, **values, **overrides})


def windows(starts, horizon=3, dataset=None):
    cfg = chunk_config(critic_horizon=horizon, action_horizon=1)
    data = sampling.prepare(dataset or episodes_dataset(), cfg, horizon)
    return gather_chunks(data, jnp.asarray(starts), horizon, GAMMA)


def test_chunk_windows_stop_at_terminals_and_timeouts():
    batch = windows([0, 1, 3, 5, 6, 8])
    # t=0: the whole of episode A, ending at its terminal: 1 + 2/2 + 4/4, no bootstrap.
    # t=1: two steps left in A: 2 + 4/2.  t=3: a full window inside B: 1 + 2/2 + 3/4.
    # t=5: B's timeout at row 6 cuts the window after 2 steps: 3 + 4/2, bootstrap from row 6's next obs.
    # t=6: the timeout step alone.  t=8: the unfinished episode C ends the window at the last row.
    np.testing.assert_array_equal(batch.returns, [3.0, 4.0, 2.75, 5.0, 4.0, 1.5])
    np.testing.assert_array_equal(batch.discounts, [0.125, 0.25, 0.125, 0.25, 0.5, 0.25])
    np.testing.assert_array_equal(batch.masks, [0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    np.testing.assert_array_equal(batch.next_observations[:, 0], [102, 102, 105, 106, 106, 109])
    np.testing.assert_array_equal(batch.observations[:, 0], [0, 1, 3, 5, 6, 8])
    np.testing.assert_array_equal(
        batch.valid, [[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0]]
    )
    np.testing.assert_array_equal(
        batch.rewards, [[1, 2, 4], [2, 4, 0], [1, 2, 3], [3, 4, 0], [4, 0, 0], [1, 1, 0]]
    )
    # Padding repeats the window's last action.
    np.testing.assert_allclose(
        batch.actions[..., 0],
        np.array([[0, 1, 2], [1, 2, 2], [3, 4, 5], [5, 6, 6], [6, 6, 6], [8, 9, 9]]) / 10,
        rtol=1e-6,
    )


def test_one_step_windows_are_the_transitions():
    dataset = episodes_dataset()
    starts = jnp.arange(dataset.size)
    batch = windows(starts, horizon=1)
    plain = sampling.gather(
        sampling.prepare(dataset, BaseConfig(normalize_observations=False)).dataset, starts
    )
    np.testing.assert_array_equal(batch.returns, plain.rewards)
    np.testing.assert_array_equal(batch.masks, plain.masks)
    np.testing.assert_array_equal(batch.next_observations, plain.next_observations)
    np.testing.assert_array_equal(batch.actions[:, 0], plain.actions)
    np.testing.assert_array_equal(batch.discounts, np.full(dataset.size, GAMMA))


def test_draw_dispatches_on_the_prepared_horizon_and_respects_the_sampler():
    dataset = episodes_dataset()
    key = jax.random.key(0)
    cfg = chunk_config(sampler="topk", sampler_top_fraction=0.34)  # one trajectory: B (return 10)
    batch = jax.jit(sampling.draw, static_argnums=2)(
        sampling.prepare(dataset, cfg, cfg.critic_horizon), key, cfg
    )
    assert isinstance(batch, sampling.ChunkBatch) and batch.actions.shape == (8, 3, 1)
    assert set(np.asarray(batch.observations[:, 0]).tolist()) <= {3.0, 4.0, 5.0, 6.0}
    plain_cfg = BaseConfig(batch_size=8)
    assert isinstance(sampling.draw(sampling.prepare(dataset, plain_cfg), key, plain_cfg), sampling.Batch)


def test_asymmetric_losses_by_hand():
    target, prediction = jnp.array([1.0, 3.0]), jnp.array([2.0, 2.0])
    # Expectile 0.8: below the prediction weighs 0.2, above 0.8.
    np.testing.assert_allclose(dqc.asymmetric_loss(target, prediction, 0.8, "expectile"), [0.2, 0.8])
    # Quantile 0.9 (absolute error): |0 - 1| * 0.1, |5 - 1| * 0.9.
    np.testing.assert_allclose(
        dqc.asymmetric_loss(jnp.array([0.0, 5.0]), jnp.array([1.0, 1.0]), 0.9, "quantile"), [0.1, 3.6]
    )
    # A tie counts as "at or above", as in the official code.
    assert float(dqc.asymmetric_loss(jnp.array(1.0), jnp.array(1.0), 0.7, "quantile")) == 0.0


def constant(params, values):
    """Zero every parameter, then set the output bias: the network outputs ``values`` (per member).

    With zero kernels every pre-activation is 0, GELU(0) = 0 and LayerNorm of a constant vector with zero
    scale and bias is 0, so the output is exactly the output layer's bias (the highest-numbered Dense).
    """
    zeroed = jax.tree.map(jnp.zeros_like, params)
    flat = jax.tree_util.tree_flatten_with_path(zeroed)[0]
    dense = [path for path, _ in flat if re.search(r"Dense_\d+.*bias", jax.tree_util.keystr(path))]
    last = max(dense, key=lambda path: int(re.search(r"Dense_(\d+)", jax.tree_util.keystr(path)).group(1)))

    def set_bias(path, leaf):
        if path != last:
            return leaf
        return jnp.broadcast_to(jnp.asarray(values, leaf.dtype).reshape(leaf.shape[:-1] + (-1,)), leaf.shape)

    return jax.tree_util.tree_map_with_path(set_bias, zeroed)


def constant_state(cfg, chunk=(1.0, 6.0), critic=(2.0, 3.0), target=(4.0, 7.0), value=2.0, actor=0.0):
    """A DQC state of constant networks, built from the parameter shapes alone (nothing compiled)."""
    shapes = jax.eval_shape(lambda key: dqc.init(key, episodes_dataset(), cfg), jax.random.key(0))
    zeros = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes.params)
    params = {"critic": constant(zeros["critic"], critic), "value": constant(zeros["value"], value)}
    params["actor"] = constant(zeros["actor"], actor)
    if cfg.use_chunk_critic:
        params["chunk_critic"] = constant(zeros["chunk_critic"], chunk)
    return shapes.replace(
        params=params,
        critic_target=constant(zeros["critic"], target),
        opt=None,
        step=jnp.zeros((), jnp.int32),
    )


def first_kernel(tree):
    """The first layer's kernel of an ensemble critic: [members, inputs, width]."""
    return [leaf for leaf in jax.tree.leaves(tree) if leaf.ndim == 3][0]


STARTS = [0, 1, 5, 6]  # windows with returns 3, 4, 5, 4 and discounts 1/8, 1/4, 1/4, 1/2
TARGETS = [3.0, 4.0, 5.5, 5.0]  # y = R + gamma^k m V with V = 2; the first two end at the terminal


@pytest.mark.parametrize(("q_agg", "value_loss"), [("min", 0.9 * 2.0), ("mean", 0.9 * 3.5)])
def test_dqc_losses_on_constant_networks_by_hand(q_agg, value_loss):
    cfg = chunk_config(kappa_d=0.8, kappa_b=0.9, q_agg=q_agg)
    state = constant_state(cfg)
    batch = windows(STARTS)
    np.testing.assert_array_equal(backup_targets(state.params, batch, cfg), TARGETS)
    key = jax.random.key(5)
    total, info = loss_fn(state.params, state.critic_target, batch, key, cfg, 1)
    # Chunk critic: members 1 and 6 against y, mean over members and batch.
    chunk = np.mean([(c - y) ** 2 for c in (1.0, 6.0) for y in TARGETS])
    assert float(info["chunk_critic_loss"]) == pytest.approx(chunk) == pytest.approx(7.9375)
    # Distillation, member i from member i: Q_h = 2 above z = 1 (weight 0.2), Q_h = 3 below z = 6 (0.8).
    assert float(info["critic_loss"]) == pytest.approx((0.2 * 1.0 + 0.8 * 9.0) / 2)
    # Value: q = agg(4, 7) from the *target* critic, V = 2 below it, quantile weight 0.9.
    assert float(info["value_loss"]) == pytest.approx(value_loss)
    # BC with a zero velocity field: the target velocity x1 - x0, padded steps masked out.
    x0 = jax.random.normal(jax.random.split(key)[0], (4, 2))
    x1 = np.array([[0.0, 0.1], [0.1, 0.2], [0.5, 0.6], [0.6, 0.6]])
    valid = np.array([[1, 1], [1, 1], [1, 1], [1, 0]])
    assert float(info["bc_loss"]) == pytest.approx(np.mean((x1 - np.asarray(x0)) ** 2 * valid), rel=1e-5)
    assert float(total) == pytest.approx(
        sum(float(info[k]) for k in ("chunk_critic_loss", "critic_loss", "value_loss", "bc_loss")), rel=1e-6
    )


def test_qc_switch_trains_the_critic_directly_on_the_backup():
    cfg = dqc.Config(**{**SMALL, "discount": GAMMA, "normalize_observations": False, **dqc.ablation("qc", 3)})
    assert (cfg.critic_horizon, cfg.action_horizon, cfg.use_chunk_critic) == (3, 3, False)
    state = constant_state(cfg)
    assert "chunk_critic" not in state.params
    assert first_kernel(state.params["critic"]).shape[1] == 1 + 3  # obs + the whole H-chunk
    _, info = loss_fn(state.params, state.critic_target, windows(STARTS), jax.random.key(0), cfg, 1)
    assert "chunk_critic_loss" not in info
    # kappa_d = 0.5: half the squared error to y, for members Q = 2 and Q = 3.
    expected = np.mean([0.5 * (y - q) ** 2 for q in (2.0, 3.0) for y in TARGETS])
    assert float(info["critic_loss"]) == pytest.approx(expected) == pytest.approx(2.34375)


def test_ns_with_one_step_equals_one_step_td_by_hand():
    # NS with n = 1 is OS: H = h_a = 1, no chunk critic. Its target is r + gamma (1 - terminal) V(s').
    ns = dqc.Config(**{**SMALL, "discount": GAMMA, "normalize_observations": False, **dqc.ablation("ns", 1)})
    os_ = dqc.Config(**{**SMALL, "discount": GAMMA, "normalize_observations": False, **dqc.ablation("os")})
    assert ns == os_
    state = constant_state(os_, value=2.0)
    batch = windows([0, 2, 6, 9], horizon=1)
    # rows 0, 2 (terminal), 6 (timeout: bootstraps), 9: r = 1, 4, 4, 1
    np.testing.assert_array_equal(backup_targets(state.params, batch, os_), [2.0, 4.0, 5.0, 2.0])
    _, info = loss_fn(state.params, state.critic_target, batch, jax.random.key(0), os_, 1)
    expected = np.mean([0.5 * (y - q) ** 2 for q in (2.0, 3.0) for y in (2.0, 4.0, 5.0, 2.0)])
    assert float(info["critic_loss"]) == pytest.approx(expected)

    # With a real (random) value network: the same as IQL-style r + gamma m V(s') on a transition batch.
    value = dqc.value_network(os_)
    params = {"value": value.init(jax.random.key(1), jnp.zeros((1, 1)))}
    starts = jnp.arange(10)
    plain = sampling.gather(sampling.prepare(episodes_dataset(), os_).dataset, starts)
    next_v = value.apply(params["value"], plain.next_observations)
    np.testing.assert_allclose(
        backup_targets(params, windows(starts, horizon=1), os_),
        plain.rewards + GAMMA * plain.masks * next_v,
        rtol=1e-6,
    )


def test_ns_and_qc_ns_use_the_full_window_for_the_target_and_the_short_chunk_for_the_critic():
    for name, action_horizon in (("ns", 1), ("qc_ns", 2)):
        cfg = dqc.Config(**{**SMALL, "discount": GAMMA, **dqc.ablation(name, 3, 2)})
        assert cfg.action_horizon == action_horizon and not cfg.use_chunk_critic
        state = constant_state(cfg)
        assert first_kernel(state.params["critic"]).shape[1] == 1 + action_horizon  # obs + h_a actions
        np.testing.assert_array_equal(backup_targets(state.params, windows(STARTS), cfg), TARGETS)


def test_networks_are_ogbench_mlps_with_layer_norm_after_the_activation():
    """Dense -> GELU -> LayerNorm per hidden layer (the official code's order), then a linear output."""
    value = dqc.value_network(dqc.Config(hidden_dims=(5, 4)))
    observations = jax.random.normal(jax.random.key(0), (3, 2))
    params = value.init(jax.random.key(1), observations)
    layers = params["params"]["MLP_0"]
    # Non-trivial LayerNorm scales and biases, so a misplaced LayerNorm cannot go unnoticed.
    for name in ("LayerNorm_0", "LayerNorm_1"):
        layers[name] = {
            key: jax.random.uniform(jax.random.key(len(key)), leaf.shape, minval=0.5, maxval=2.0)
            for key, leaf in layers[name].items()
        }

    def layer_norm(x, scale, bias):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-6) * scale + bias

    def gelu(x):  # the tanh approximation, flax's default
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))

    x = np.asarray(observations, np.float64)
    for i in range(2):
        dense, norm = layers[f"Dense_{i}"], layers[f"LayerNorm_{i}"]
        hidden = gelu(x @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"]))
        x = layer_norm(hidden, np.asarray(norm["scale"]), np.asarray(norm["bias"]))
    expected = (x @ np.asarray(layers["Dense_2"]["kernel"]) + np.asarray(layers["Dense_2"]["bias"]))[:, 0]
    np.testing.assert_allclose(np.asarray(value.apply(params, observations)), expected, rtol=1e-5, atol=1e-6)


def test_dqc_critic_shapes():
    state = constant_state(chunk_config())
    assert first_kernel(state.params["chunk_critic"]).shape[1] == 1 + 3
    assert first_kernel(state.params["critic"]).shape[1] == 1 + 2


def test_best_of_n_picks_the_argmax():
    candidates = jnp.arange(2 * 3 * 2, dtype=jnp.float32).reshape(3, 2, 2)  # [N=3, B=2, D=2]
    scores = jnp.array([[0.0, 5.0], [9.0, -1.0], [1.0, 2.0]])
    np.testing.assert_array_equal(dqc.best_of_n(candidates, scores), [candidates[1, 0], candidates[0, 1]])


@pytest.mark.parametrize("q_agg", ["min", "mean"])
def test_act_returns_the_chunk_the_controlled_critic_likes_best(monkeypatch, q_agg):
    cfg = chunk_config(num_samples=16, q_agg=q_agg)
    state = constant_state(cfg, actor=0.0)  # a zero velocity field: candidates are the clipped noise
    observations = jnp.array([[0.0], [3.0], [-1.0]])
    key = jax.random.key(9)

    def critic(state, observations, chunks, cfg):
        # Two members that disagree, so min and mean choose differently.
        first = -((chunks - 0.3) ** 2).sum(-1)
        second = -2.0 * ((chunks + 0.1) ** 2).sum(-1) + observations[..., 0]
        return jnp.stack([first, second])

    monkeypatch.setattr(dqc, "score_chunks", critic)
    chosen = np.asarray(jax.jit(dqc.act, static_argnums=2)(state, observations, cfg, key))
    assert chosen.shape == (3, 2, 1)
    candidates = np.clip(np.asarray(jax.random.normal(key, (16, 3, 2))), -1, 1)
    q = np.stack([-((candidates - 0.3) ** 2).sum(-1), -2 * ((candidates + 0.1) ** 2).sum(-1) + [0, 3, -1]])
    assert q.min(0).argmax(0)[0] != q.mean(0).argmax(0)[0]  # the aggregation decides the first pick
    agg = q.min(0) if q_agg == "min" else q.mean(0)
    np.testing.assert_allclose(chosen[:, :, 0], candidates[agg.argmax(0), np.arange(3)])


def test_bad_inputs_are_refused_with_clear_errors(toy_dataset):
    with pytest.raises(ValueError, match=r"H >= h_a"):
        dqc.Config(critic_horizon=3, action_horizon=5)
    with pytest.raises(ValueError, match=r"H >= h_a"):
        resolve_config(dqc.Config, "x", (), {"critic_horizon": 1})
    with pytest.raises(ValueError, match="q_agg"):
        dqc.Config(q_agg="max")
    # toy_dataset(20): episodes of 11 and 9 steps.
    with pytest.raises(ValueError, match=r"longer than every episode.*longest has 11 steps"):
        sampling.prepare(toy_dataset(20), dqc.Config(critic_horizon=12, action_horizon=1), 12)
    sampling.prepare(toy_dataset(20), dqc.Config(critic_horizon=11, action_horizon=1), 11)
    unmarked = episodes_dataset(terminals=np.zeros(10, bool), timeouts=np.zeros(10, bool))
    with pytest.raises(ValueError, match="no episode boundaries"):
        sampling.prepare(unmarked, chunk_config(), 3)
    plain = sampling.prepare(episodes_dataset(), BaseConfig())
    with pytest.raises(ValueError, match="prepared for single transitions"):
        sampling.sample_chunks(plain, jax.random.key(0), 4, 0.99)
    with pytest.raises(ValueError, match="unknown DQC variant"):
        dqc.ablation("qcns")


def test_run_job_evaluates_chunks_open_loop(hopper_minari, monkeypatch):
    shapes = []

    class RecordingEvaluator(Evaluator):
        def run(self, policy, active=None):
            def recorded(observations, call):
                actions = policy(observations, call)
                shapes.append(np.asarray(actions).shape)
                return actions

            return super().run(recorded, active)

    monkeypatch.setattr(train_module, "Evaluator", RecordingEvaluator)
    hparams = {**SMALL, "critic_horizon": 4, "action_horizon": 3}
    job = Job(
        "dqc",
        hopper_minari,
        seeds=(0, 1),
        steps=10,
        eval_every=5,
        eval_episodes=2,
        hparams=tuple(hparams.items()),
        final_k=1,
    )
    output = run_job(job)
    evals, runs = output.evals, output.runs
    assert (evals["status"] == "ok").all() and evals["return_mean"].notna().all()
    assert set(shapes) == {(2, 2, 3, 3)}  # [seeds, episodes, h_a, act]: one call per 3 env steps
    assert "chunk_critic_loss" in set(output.metrics["name"])
    assert runs["updates_per_second_per_seed"].gt(0).all()


@pytest.mark.parametrize(
    ("dataset_id", "normalized"),
    [
        ("cube-single-play-singletask-task1-v0", False),  # an OGBench name
        ("visual-antmaze-large-navigate-singletask-v0", False),
        ("/data/cube-double-play-v0.npz", False),  # an OGBench file
        ("offbench/ogbench/cube-single-play-singletask-task1-v0", False),  # generated locally
        ("offbench/hopper/medium-v0", True),
        ("mujoco/hopper/medium-v0", True),
    ],
)
def test_ogbench_data_keeps_raw_observations_however_it_is_named(dataset_id, normalized):
    cfg = resolve_config(dqc.Config, dataset_id, dqc.DATASET_OVERRIDES)
    assert cfg.normalize_observations is normalized
