"""SAC behaviour-policy training: the maths, exact resume after SIGKILL, snapshots and their loader."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import ndtr

from offbench.algorithms.nets import sample_tanh_gaussian
from offbench.datasets.generate import behaviour_checkpoints, behaviour_training, policies, replay_buffer, sac

# ------------------------------------------------------------------------------------------------
# Tanh-Gaussian log-probability
# ------------------------------------------------------------------------------------------------


def test_tanh_gaussian_log_prob_matches_numerical_density() -> None:
    """exp(log pi(a)) equals dF/da for F(a) = Phi((atanh a - mu) / sigma), by central differences."""
    mean, std, n = 0.3, 0.7, 64
    action, log_prob = sample_tanh_gaussian(
        jax.random.PRNGKey(0), jnp.full((n, 1), mean), jnp.full((n, 1), math.log(std))
    )
    a = np.asarray(action[:, 0], np.float64)
    cdf = lambda x: ndtr((np.arctanh(x) - mean) / std)
    h = 1e-6
    density = (cdf(a + h) - cdf(a - h)) / (2 * h)
    np.testing.assert_allclose(np.exp(np.asarray(log_prob)), density, rtol=1e-3)


def test_tanh_gaussian_log_prob_sums_dimensions_and_is_stable_in_the_tails() -> None:
    """Pre-tanh values near +-10 (where float32 tanh is exactly +-1) still give the float64 hand value."""
    key, std = jax.random.PRNGKey(1), 0.5
    mean = np.array([[10.0, -10.0, 0.5]])
    _, log_prob = sample_tanh_gaussian(key, jnp.asarray(mean), jnp.full((1, 3), math.log(std)))
    eps = np.asarray(jax.random.normal(key, (1, 3)), np.float64)
    u = mean + std * eps
    # log N(u; mean, std) - log(1 - tanh(u)^2), and log(1 - tanh^2) = -2 log cosh.
    gaussian = -0.5 * eps**2 - math.log(std) - 0.5 * math.log(2 * math.pi)
    expected = np.sum(gaussian + 2.0 * np.log(np.cosh(u)))
    assert np.isfinite(float(log_prob[0]))
    np.testing.assert_allclose(float(log_prob[0]), expected, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# SAC losses, checked against a numpy re-implementation of the networks and formulas
# ------------------------------------------------------------------------------------------------

CFG = sac.Config(hidden_dims=(5,), init_temperature=0.5, discount=0.9, tau=0.1)


def _mlp(layers: dict, x: np.ndarray) -> np.ndarray:
    n = len(layers)
    for i in range(n):
        x = x @ np.asarray(layers[f"Dense_{i}"]["kernel"], np.float64) + np.asarray(
            layers[f"Dense_{i}"]["bias"]
        )
        if i < n - 1:
            x = np.maximum(x, 0.0)
    return x


def _actor_sample(params: dict, obs: np.ndarray, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    out = _mlp(params["params"]["MLP_0"], obs)
    mean, log_std = np.split(out, 2, axis=-1)
    log_std = np.clip(log_std, -20.0, 2.0)
    eps = np.asarray(jax.random.normal(key, mean.shape), np.float64)
    u = mean + np.exp(log_std) * eps
    log_prob = np.sum(
        -0.5 * eps**2 - log_std - 0.5 * np.log(2 * np.pi) - np.log(1.0 - np.tanh(u) ** 2), axis=-1
    )
    return np.tanh(u), log_prob


def _critics(params: dict, obs: np.ndarray, act: np.ndarray) -> np.ndarray:
    layers = params["params"]["VmapMLP_0"]
    x = np.concatenate([obs, act], axis=-1)
    members = []
    for i in range(CFG.num_critics):
        member = {name: {k: v[i] for k, v in layer.items()} for name, layer in layers.items()}
        members.append(_mlp(member, x)[:, 0])
    return np.stack(members)


@pytest.fixture(scope="module")
def tiny() -> tuple[sac.State, dict[str, jax.Array]]:
    state = sac.init(jax.random.PRNGKey(3), 3, 2, CFG)
    # Distinct target critics, so using the online ones by mistake changes the numbers.
    shifted = jax.tree.map(lambda x: x + 0.05, state.critic_params)
    state = state._replace(target_critic_params=shifted)
    rng = np.random.default_rng(0)
    batch = {
        "observations": rng.normal(size=(4, 3)).astype(np.float32),
        "actions": rng.uniform(-0.9, 0.9, size=(4, 2)).astype(np.float32),
        "rewards": np.array([1.0, -0.5, 0.25, 2.0], np.float32),
        "next_observations": rng.normal(size=(4, 3)).astype(np.float32),
        "terminals": np.array([0.0, 1.0, 0.0, 0.0], np.float32),
    }
    return state, {k: jnp.asarray(v) for k, v in batch.items()}


def test_critic_target_and_loss_match_hand_computation(tiny) -> None:
    state, batch = tiny
    b = {k: np.asarray(v, np.float64) for k, v in batch.items()}
    key = jax.random.PRNGKey(7)
    next_actions, next_log_prob = _actor_sample(state.actor_params, b["next_observations"], key)
    soft_value = (
        _critics(state.target_critic_params, b["next_observations"], next_actions).min(0)
        - 0.5 * next_log_prob
    )
    target = b["rewards"] + 0.9 * (1.0 - b["terminals"]) * soft_value
    np.testing.assert_allclose(sac.critic_target(state, batch, key, CFG), target, rtol=1e-5, atol=1e-6)

    q = _critics(state.critic_params, b["observations"], b["actions"])
    loss, _ = sac.critic_loss(state.critic_params, batch, jnp.asarray(target, jnp.float32), CFG)
    np.testing.assert_allclose(loss, ((q - target) ** 2).mean(axis=1).sum(), rtol=1e-5)


def test_actor_and_temperature_losses_match_hand_computation(tiny) -> None:
    state, batch = tiny
    obs = np.asarray(batch["observations"], np.float64)
    key = jax.random.PRNGKey(11)
    actions, log_prob = _actor_sample(state.actor_params, obs, key)
    expected_actor = np.mean(0.5 * log_prob - _critics(state.critic_params, obs, actions).min(0))
    loss, got_log_prob = sac.actor_loss(
        state.actor_params, state.critic_params, state.log_alpha, batch, key, CFG
    )
    np.testing.assert_allclose(loss, expected_actor, rtol=1e-5)
    np.testing.assert_allclose(got_log_prob, log_prob, rtol=1e-5)

    # Target entropy -|A| = -2; the loss is -alpha * mean(log pi + target).
    assert sac.target_entropy(CFG, 2) == -2.0
    expected_temperature = -0.5 * np.mean(log_prob - 2.0)
    np.testing.assert_allclose(
        sac.temperature_loss(state.log_alpha, got_log_prob, -2.0), expected_temperature, rtol=1e-5
    )


def test_update_wires_losses_optimisers_and_targets(tiny) -> None:
    state, batch = tiny
    key = jax.random.PRNGKey(5)
    target_key, actor_key = jax.random.split(key)
    new, metrics = jax.jit(sac.update, static_argnums=3)(state, batch, key, CFG)

    target = sac.critic_target(state, batch, target_key, CFG)
    np.testing.assert_allclose(
        metrics["critic_loss"], sac.critic_loss(state.critic_params, batch, target, CFG)[0], rtol=1e-6
    )
    # The temperature step uses the actor step's samples from the pre-update actor. Adam's first step
    # moves every parameter by lr * sign(gradient); here d loss / d log_alpha = -alpha mean(log pi - 2).
    _, log_prob = sac.actor_loss(
        state.actor_params, new.critic_params, state.log_alpha, batch, actor_key, CFG
    )
    grad = -0.5 * float(jnp.mean(log_prob - 2.0))
    np.testing.assert_allclose(new.log_alpha, state.log_alpha - CFG.temperature_lr * np.sign(grad), rtol=1e-6)
    expected_target = jax.tree.map(
        lambda t, o: 0.9 * t + 0.1 * o, state.target_critic_params, new.critic_params
    )
    close = lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    jax.tree.map(close, new.target_critic_params, expected_target)
    assert int(new.step) == 1


def test_act_is_bounded_and_deterministic_is_tanh_mean(tiny) -> None:
    state, _ = tiny
    obs = jnp.asarray(np.random.default_rng(1).normal(size=(6, 3)) * 10, jnp.float32)
    mean, _ = sac.actor_network(CFG, 2).apply(state.actor_params, obs)
    np.testing.assert_allclose(sac.act(state.actor_params, obs, None, deterministic=True), jnp.tanh(mean))
    sampled = sac.act(state.actor_params, obs, jax.random.PRNGKey(0), deterministic=False)
    assert sampled.shape == (6, 2) and bool(jnp.all(jnp.abs(sampled) <= 1.0))
    with pytest.raises(ValueError, match="needs a JAX key"):
        sac.act(state.actor_params, obs, None, deterministic=False)


# ------------------------------------------------------------------------------------------------
# Resume: a run killed with SIGKILL and restarted equals one that was never interrupted
# ------------------------------------------------------------------------------------------------

RUN_CFG = sac.Config(hidden_dims=(16, 16), batch_size=16, learning_starts=40, buffer_size=4000)
RUN_STEPS, RUN_CHECKPOINT_EVERY = 2000, 100
RUN_KWARGS = dict(
    cfg=RUN_CFG, num_envs=2, checkpoint_every=RUN_CHECKPOINT_EVERY, snapshot_every=0, quiet=True
)


def _final_checkpoint(work_dir: Path) -> dict[str, np.ndarray]:
    with np.load(work_dir / f"checkpoint_{RUN_STEPS:010d}.npz") as npz:
        return {name: npz[name] for name in npz.files}


def _kill_at_first_checkpoint(child: subprocess.Popen, work_dir: Path) -> None:
    deadline = time.monotonic() + 300
    while (
        not list(work_dir.glob("checkpoint_*.npz")) and child.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.002)
    child.send_signal(signal.SIGKILL)
    child.wait()


def test_resume_after_sigkill_is_bit_identical(tmp_path: Path) -> None:
    """Kill a training process once it has a checkpoint and rerun it: the result equals an uninterrupted run.

    The child may be killed mid-way through writing a later checkpoint, which also checks atomicity.
    """
    killed, uninterrupted = tmp_path / "killed", tmp_path / "uninterrupted"
    # The same call as below, in a child process; a dataclass repr evaluates back to an equal Config.
    kwargs = ", ".join(f"{k}={v!r}" for k, v in RUN_KWARGS.items())
    script = (
        "from pathlib import Path\n"
        "from offbench.datasets.generate import behaviour_training\n"
        "from offbench.datasets.generate.sac import Config\n"
        f"behaviour_training.train('hopper', {RUN_STEPS}, 7, Path({str(killed)!r}), None, {kwargs})\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    # Train the reference run while the child starts up, rather than wait for it.
    watcher = threading.Thread(target=_kill_at_first_checkpoint, args=(child, killed))
    watcher.start()
    try:
        behaviour_training.train("hopper", RUN_STEPS, 7, uninterrupted, None, **RUN_KWARGS)
    finally:
        watcher.join()
    assert child.returncode == -signal.SIGKILL, "the training child ended before it could be killed"
    survivors = behaviour_checkpoints.checkpoint_steps(killed)
    assert survivors and survivors[0] < RUN_STEPS

    behaviour_training.train("hopper", RUN_STEPS, 7, killed, None, **RUN_KWARGS)
    resumed, reference = _final_checkpoint(killed), _final_checkpoint(uninterrupted)
    assert resumed.keys() == reference.keys()
    for name in reference:
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)
    assert not list(killed.glob(".checkpoint_*")), "temporary files must not survive a completed run"


def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    """Restoring a checkpoint and saving it again reproduces every array and the numpy generator state."""
    first, second = tmp_path / "first", tmp_path / "second"
    behaviour_training.train("hopper", 200, 3, first, None, **{**RUN_KWARGS, "checkpoint_every": 200})
    meta, arrays = behaviour_checkpoints._read_checkpoint(first / "checkpoint_0000000200.npz")
    expected = behaviour_checkpoints.run_meta("hopper", 3, 2, RUN_CFG)
    fresh = behaviour_checkpoints.Progress(
        state=sac.init(jax.random.PRNGKey(0), 11, 3, RUN_CFG),
        buffer=replay_buffer.empty_buffer(RUN_CFG.buffer_size, 11, 3),
        key=jax.random.PRNGKey(0),
        rng=np.random.default_rng(),
        step=0,
        pending_actions=np.zeros((2, 3), np.float32),
    )
    run = behaviour_checkpoints._restore(meta, arrays, expected, fresh, first)
    # Two updates per iteration from the iteration that reaches learning_starts=40 onwards.
    assert (run.step, int(run.buffer.size), int(run.state.step)) == (200, 200, 2 * (200 - 40 + 2) // 2)

    second.mkdir()
    behaviour_checkpoints.save_checkpoint(second, run, expected)
    meta_again, arrays_again = behaviour_checkpoints._read_checkpoint(second / "checkpoint_0000000200.npz")
    assert meta_again == meta
    for name in arrays:
        np.testing.assert_array_equal(arrays_again[name], arrays[name], err_msg=name)
    with pytest.raises(ValueError, match="different run"):
        behaviour_checkpoints._restore(
            meta, arrays, behaviour_checkpoints.run_meta("hopper", 4, 2, RUN_CFG), fresh, first
        )


# ------------------------------------------------------------------------------------------------
# Snapshots, manifest, designation and the loader
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run writing snapshots step_0 and step_200, each evaluated over 3 episodes."""
    root = tmp_path_factory.mktemp("policies")
    kwargs = {**RUN_KWARGS, "checkpoint_every": 200, "snapshot_every": 200, "eval_episodes": 3}
    behaviour_training.train("hopper", 200, 0, root / "work", root / "hopper", **kwargs)
    return root


def test_snapshots_are_listed_designated_and_loadable(snapshots: Path) -> None:
    manifest = json.loads((snapshots / "hopper" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["snapshots"]] == ["step_0", "step_200"]
    entry = manifest["snapshots"][1]
    assert entry["steps"] == 200 and entry["seed"] == 0 and entry["env_id"] == "Hopper-v5"
    assert (entry["obs_dim"], entry["act_dim"], entry["hidden_dims"], entry["eval_episodes"]) == (
        11,
        3,
        [16, 16],
        3,
    )
    assert manifest["expert"] == max(manifest["snapshots"], key=lambda s: s["sampled_return_mean"])["name"]
    assert {"return_mean", "sampled_return_mean", "sampled_return_std", "sampled_length_mean"} <= set(entry)

    policy = policies.load_policy("hopper", "step_200", policies_dir=snapshots)
    obs = jnp.asarray(np.random.default_rng(0).normal(size=(5, 11)), jnp.float32)
    key = jax.random.PRNGKey(0)
    sampled = policy.actions(obs, key)
    assert sampled.shape == (5, 3) and bool(jnp.all(jnp.abs(sampled) <= 1.0))
    np.testing.assert_array_equal(sampled, policy.actions(obs, key))
    assert not np.array_equal(sampled, policy.actions(obs, jax.random.PRNGKey(1)))
    np.testing.assert_array_equal(
        policy.actions(obs, None, deterministic=True), sac.act(policy.params, obs, None, True)
    )
    assert policies.load_policy("hopper", policies_dir=snapshots).name == manifest["expert"]


def test_designate_picks_best_and_closest_to_forty_percent() -> None:
    def manifest(returns: list[float], deterministic: list[float] | None = None) -> dict:
        deterministic = deterministic or returns
        return {
            "snapshots": [
                {"name": f"s{i}", "steps": i, "sampled_return_mean": r, "return_mean": d}
                for i, (r, d) in enumerate(zip(returns, deterministic, strict=True))
            ]
        }

    designated = policies.designate(manifest([100.0, 900.0, 3000.0, 1300.0, 1150.0, 2900.0]))
    assert (designated["expert"], designated["medium"]) == ("s2", "s4")  # window [750, 1500], 40% = 1200
    assert policies.designate(manifest([100.0, 3000.0, 1600.0]))["medium"] is None
    # Hopper's case: the curve jumps past the window, and 30% of the expert is the only candidate.
    assert policies.designate(manifest([4.0, 1019.0, 3396.0, 3429.0]))["medium"] == "s1"
    assert policies.designate(manifest([4.0, 700.0, 3396.0, 3000.0]))["medium"] is None
    assert policies.designate(manifest([145.0, 326.0]))["medium"] is None  # step 0 is never medium
    all_negative = policies.designate(manifest([-300.0, -100.0]))
    assert (all_negative["expert"], all_negative["medium"]) == ("s1", None)
    # The data holds sampled actions, so the sampled return decides, not the deterministic one.
    by_sampled = policies.designate(
        manifest([100.0, 2900.0, 1100.0, 2500.0], [100.0, 3000.0, 1000.0, 3400.0])
    )
    assert (by_sampled["expert"], by_sampled["medium"]) == ("s1", "s2")


def test_reevaluate_adds_sampled_returns_to_an_old_manifest(snapshots: Path, tmp_path: Path) -> None:
    root = _copy_tree(snapshots / "hopper", tmp_path / "hopper").parent
    manifest_path = root / "hopper" / "manifest.json"
    current = json.loads(manifest_path.read_text())
    sampled_fields = ("sampled_return_mean", "sampled_return_std", "sampled_length_mean")
    old = {
        **current,
        "snapshots": [{k: v for k, v in s.items() if k not in sampled_fields} for s in current["snapshots"]],
    }
    manifest_path.write_text(json.dumps(old))
    with pytest.raises(
        ValueError, match=r"no sampled-action return for step_200.*policies_cli evaluate --env hopper"
    ):
        policies.load_policy("hopper", "step_200", policies_dir=root)

    policies.reevaluate("hopper", root, episodes=3, quiet=True)
    assert json.loads(manifest_path.read_text()) == current  # same seeds, same scores, same designation
    assert policies.load_policy("hopper", "step_200", policies_dir=root).sampled_return_mean == pytest.approx(
        current["snapshots"][1]["sampled_return_mean"]
    )


def _copy_tree(src: Path, dst: Path) -> Path:
    for path in src.rglob("*"):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
    return dst


def test_missing_or_corrupt_snapshots_raise_clear_errors(snapshots: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"manifest\.json does not exist.*make policies"):
        policies.load_policy("walker2d", policies_dir=snapshots)

    root = _copy_tree(snapshots / "hopper", tmp_path / "hopper").parent
    with pytest.raises(ValueError, match=r"no snapshot 'step_999'.*step_0, step_200"):
        policies.load_policy("hopper", "step_999", policies_dir=root)
    manifest_path = root / "hopper" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "medium": None}))  # what a short run's manifest says
    with pytest.raises(ValueError, match="designates no 'medium' snapshot"):
        policies.load_policy("hopper", "medium", policies_dir=root)

    actor_file = root / "hopper" / "step_200" / "actor.msgpack"
    actor_file.write_bytes(actor_file.read_bytes()[:1000])  # a truncated download or interrupted copy
    with pytest.raises(
        ValueError, match=rf"{re.escape(str(actor_file))}.*corrupt.*git checkout.*make policies"
    ):
        policies.load_policy("hopper", "step_200", policies_dir=root)

    actor_file.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(actor_file))} is missing"):
        policies.load_policy("hopper", "step_200", policies_dir=root)

    manifest = json.loads(manifest_path.read_text())
    manifest["snapshots"][0]["hidden_dims"] = [8, 8]  # entry no longer matches the file it names
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"step_0/actor\.msgpack.*has shape"):
        policies.load_policy("hopper", "step_0", policies_dir=root)

    manifest_path.write_text("{ not json")
    with pytest.raises(ValueError, match=r"manifest\.json is not valid JSON"):
        policies.load_policy("hopper", policies_dir=root)
