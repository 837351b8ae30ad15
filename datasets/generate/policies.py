"""Behaviour policies for offbench's own datasets: SAC training, resume checkpoints, snapshots, loader.

``train`` runs SAC online on one Gymnasium MuJoCo task. It is built for a small CPU: the replay buffer
is preallocated on the device and filled with ``dynamic_update_slice``, and each jitted call inserts one
step of ``num_envs`` environments, runs ``num_envs * updates_per_step`` SAC updates under ``lax.scan``
and samples the next actions: one dispatch per iteration, whose only host traffic is the new
transitions in and the next actions out.

Two kinds of files come out of it:

- resume checkpoints in ``work_dir`` (``~/.cache/offbench/sac/<env>/`` by default, outside the repo):
  everything needed to continue (networks, targets, optimiser states, temperature, the replay buffer,
  RNG keys and numpy RNG state), written atomically. Re-running the same command continues from the
  newest one. At every checkpoint step all environments are reset, in uninterrupted runs as well,
  with seeds derived from (seed, step). A resumed run is therefore bit-identical to one that was
  never interrupted. The cost is one time-limit truncation per environment per checkpoint, which
  SAC handles like any other time limit (it keeps bootstrapping).
- committed snapshots in ``datasets/policies/<env>/step_<k>/actor.msgpack``: actor parameters only,
  each evaluated over 100 seeded episodes and listed in ``manifest.json``. ``designate`` marks the
  best snapshot ``expert`` and the one closest to 40% of its return ``medium``.

``load_policy(env, "expert")`` turns a snapshot back into a ``BehaviourPolicy`` for the dataset
generator. Because the replay buffer is never overwritten when ``buffer_size >= total_steps``, the
final resume checkpoint also holds the whole training stream (``load_replay_buffer``), which is
what a medium-replay dataset needs.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import flax.serialization
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from offbench.datasets.generate import LOCOMOTION_ENVS, sac
from offbench.files import write_bytes_atomic, write_text_atomic

POLICIES_DIR = Path(__file__).resolve().parent.parent / "policies"
WORK_ROOT = Path.home() / ".cache" / "offbench" / "sac"
MANIFEST = "manifest.json"
ACTOR_FILE = "actor.msgpack"
# Evaluation episode i always starts from reset(seed=EVAL_SEED + i), whatever the training seed, so all
# snapshots of all runs are scored on the same 100 initial states.
EVAL_SEED = 1_000_000
# D4RL's "medium" policy reached about a third of the expert's return; offbench aims for 40% and accepts
# anything between a quarter and a half. The lower edge is below a third because SAC's return on Hopper
# jumps from ~30% to ~99% of the expert's within one 50k-step snapshot interval (1019 at step 250k, 3396 at
# 300k for seed 0), so a strict third would leave Hopper without a medium policy.
MEDIUM_FRACTION = 0.4
MEDIUM_WINDOW = (0.25, 0.5)
CHECKPOINT_FORMAT = 1
KEEP_CHECKPOINTS = 2


def train_command_hint(env: str) -> str:
    return f"`make policies` or `python -m offbench.datasets.generate.policies train --env {env}`"


def env_id(env: str) -> str:
    if env not in LOCOMOTION_ENVS:
        raise ValueError(f"unknown environment {env!r}; choose one of {', '.join(LOCOMOTION_ENVS)}.")
    return LOCOMOTION_ENVS[env]


def default_work_dir(env: str) -> Path:
    return WORK_ROOT / env


# --------------------------------------------------------------------------------------------------
# Environments
# --------------------------------------------------------------------------------------------------


def _make_env(env: str) -> gym.Env:
    # The passive checker only inspects the first calls; it is skipped to keep stepping lean.
    return gym.make(env_id(env), disable_env_checker=True)


def _reset_seeds(seed: int, step: int, n: int) -> list[int]:
    """Seeds for resetting all environments at a given training step: a pure function of (seed, step)."""
    return [int(s) for s in np.random.SeedSequence([seed, step]).generate_state(n)]


class _EnvBatch:
    """``n`` independent environments stepped in lockstep; finished episodes reset immediately.

    Unlike ``gymnasium.vector`` autoreset, ``step`` returns the true final observation of an episode
    as ``next_observations`` and the first observation of the next one as the observation to act on.
    """

    def __init__(self, env: str, n: int) -> None:
        self.envs = [_make_env(env) for _ in range(n)]
        self.obs_dim = int(self.envs[0].observation_space.shape[0])
        self.act_dim = int(self.envs[0].action_space.shape[0])
        self.episode_returns = np.zeros(n)

    def reset(self, seeds: list[int]) -> np.ndarray:
        self.episode_returns[:] = 0.0
        return np.stack([env.reset(seed=s)[0] for env, s in zip(self.envs, seeds, strict=True)]).astype(
            np.float32
        )

    def step(
        self, actions: np.ndarray, reset_seeds: list[int] | None
    ) -> tuple[dict[str, np.ndarray], np.ndarray, list[float]]:
        """Step every environment. ``reset_seeds`` ends all episodes here (as truncations) and reseeds them.

        Returns (transitions, observations to act on next, returns of the episodes that ended).
        """
        n = len(self.envs)
        next_obs = np.empty((n, self.obs_dim), np.float32)
        obs = np.empty((n, self.obs_dim), np.float32)
        rewards, terminals, timeouts = (
            np.zeros(n, np.float32),
            np.zeros(n, np.float32),
            np.zeros(n, np.float32),
        )
        finished = []
        for i, env in enumerate(self.envs):
            next_obs[i], rewards[i], terminated, truncated, _ = env.step(actions[i])
            truncated = truncated or reset_seeds is not None
            self.episode_returns[i] += rewards[i]
            terminals[i] = terminated
            timeouts[i] = truncated and not terminated
            if terminated or truncated:
                finished.append(float(self.episode_returns[i]))
                self.episode_returns[i] = 0.0
                obs[i] = env.reset(seed=None if reset_seeds is None else reset_seeds[i])[0]
            else:
                obs[i] = next_obs[i]
        transitions = {
            "observations": np.empty(0),  # filled by the caller, which holds the previous observations
            "actions": actions.astype(np.float32),
            "rewards": rewards,
            "next_observations": next_obs,
            "terminals": terminals,
            "timeouts": timeouts,
        }
        return transitions, obs, finished


# --------------------------------------------------------------------------------------------------
# Replay buffer and the jitted training iteration
# --------------------------------------------------------------------------------------------------

BUFFER_FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


class ReplayBuffer(NamedTuple):
    """Preallocated device arrays; rows [0, size) are valid and the next row goes to ``ptr``.

    ``terminals`` marks true terminations (used for bootstrapping); ``timeouts`` marks episodes cut by a
    time limit or a checkpoint reset, kept so datasets built from the buffer can record them like D4RL.
    """

    data: dict[str, jax.Array]
    size: jax.Array
    ptr: jax.Array


def _empty_buffer(capacity: int, obs_dim: int, act_dim: int) -> ReplayBuffer:
    widths = {"observations": obs_dim, "actions": act_dim, "next_observations": obs_dim}
    data = {
        f: jnp.zeros((capacity, widths[f]) if f in widths else (capacity,), jnp.float32)
        for f in BUFFER_FIELDS
    }
    return ReplayBuffer(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def _add(buffer: ReplayBuffer, transitions: dict[str, jax.Array]) -> ReplayBuffer:
    # Capacity is a multiple of the rows added per call, so a block never straddles the end.
    n = transitions["rewards"].shape[0]
    capacity = buffer.data["rewards"].shape[0]
    data = {
        f: jax.lax.dynamic_update_slice_in_dim(
            buffer.data[f], transitions[f].astype(jnp.float32), buffer.ptr, 0
        )
        for f in BUFFER_FIELDS
    }
    return ReplayBuffer(data, jnp.minimum(buffer.size + n, capacity), (buffer.ptr + n) % capacity)


# Donating the buffer lets XLA update it in place instead of copying ~100 MB every call.
_insert = jax.jit(_add, donate_argnums=0)


@functools.partial(jax.jit, static_argnames="cfg", donate_argnums=(0, 1))
def _train_iteration(
    state: sac.State,
    buffer: ReplayBuffer,
    key: jax.Array,
    transitions: dict[str, jax.Array],
    observations: jax.Array,
    cfg: sac.Config,
) -> tuple[sac.State, ReplayBuffer, jax.Array, jax.Array, dict[str, jax.Array]]:
    """Insert one step of every environment, run the matching SAC updates, sample the next actions."""
    buffer = _add(buffer, transitions)
    key, update_key, act_key = jax.random.split(key, 3)

    def one_update(state: sac.State, key: jax.Array) -> tuple[sac.State, dict[str, jax.Array]]:
        index_key, update_key = jax.random.split(key)
        index = jax.random.randint(index_key, (cfg.batch_size,), 0, buffer.size)
        batch = {f: buffer.data[f][index] for f in BUFFER_FIELDS}
        return sac.update(state, batch, update_key, cfg)

    num_updates = observations.shape[0] * cfg.updates_per_step
    state, metrics = jax.lax.scan(one_update, state, jax.random.split(update_key, num_updates))
    actions = sac.act(state.actor_params, observations, act_key, deterministic=False)
    return state, buffer, key, actions, jax.tree.map(jnp.mean, metrics)


# --------------------------------------------------------------------------------------------------
# Resume checkpoints
# --------------------------------------------------------------------------------------------------


class _Progress(NamedTuple):
    """Everything a run carries from one iteration to the next, i.e. what a resume checkpoint holds."""

    state: sac.State
    buffer: ReplayBuffer
    key: jax.Array
    rng: np.random.Generator
    step: int
    pending_actions: np.ndarray


def _checkpoint_path(work_dir: Path, step: int) -> Path:
    return work_dir / f"checkpoint_{step:010d}.npz"


def _checkpoint_steps(work_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in ``work_dir``, newest first (temp files are ignored)."""
    return sorted((int(p.stem.split("_")[1]) for p in work_dir.glob("checkpoint_*.npz")), reverse=True)


def _run_meta(env: str, seed: int, num_envs: int, cfg: sac.Config) -> dict[str, Any]:
    """The settings a checkpoint can only be resumed under."""
    return {"env": env, "seed": seed, "num_envs": num_envs, "cfg": dataclasses.asdict(cfg)}


def _save_checkpoint(work_dir: Path, progress: _Progress, meta: dict[str, Any]) -> Path:
    arrays: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(progress.state)[0]:
        arrays["state" + jax.tree_util.keystr(path)] = np.asarray(leaf)
    size = int(progress.buffer.size)
    for f in BUFFER_FIELDS:
        arrays[f"buffer/{f}"] = np.asarray(progress.buffer.data[f])[:size]
    arrays["buffer/ptr"] = np.asarray(progress.buffer.ptr)
    arrays["key"] = np.asarray(progress.key)
    arrays["pending_actions"] = progress.pending_actions
    full_meta = {
        **meta,
        "format": CHECKPOINT_FORMAT,
        "step": progress.step,
        "numpy_rng": progress.rng.bit_generator.state,
    }
    arrays["meta"] = np.asarray(json.dumps(full_meta))
    path = _checkpoint_path(work_dir, progress.step)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue(), durable=True)
    for old in _checkpoint_steps(work_dir)[KEEP_CHECKPOINTS:]:
        _checkpoint_path(work_dir, old).unlink(missing_ok=True)
    return path


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        return json.loads(str(arrays.pop("meta"))), arrays
    except Exception as e:  # a zip, npy or JSON error all mean the same thing here: unreadable
        raise ValueError(f"resume checkpoint {path} is unreadable ({e}); delete it to fall back.") from e


def _restore(
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray],
    expected: dict[str, Any],
    fresh: _Progress,
    path: Path,
) -> _Progress:
    """Rebuild a run from checkpoint arrays, using a fresh run of the same settings as the shape template."""
    stored = {k: meta.get(k) for k in expected}
    if meta.get("format") != CHECKPOINT_FORMAT or stored != json.loads(json.dumps(expected)):
        raise ValueError(
            f"resume checkpoint {path} was written by a different run "
            f"({stored}, format {meta.get('format')}) "
            f"than this one ({expected}); pass another --work-dir or delete {path.parent}."
        )
    leaves, treedef = jax.tree_util.tree_flatten_with_path(fresh.state)
    restored = []
    for key_path, leaf in leaves:
        name = "state" + jax.tree_util.keystr(key_path)
        value = arrays[name]
        if value.shape != leaf.shape or value.dtype != leaf.dtype:
            raise ValueError(
                f"resume checkpoint {path}: {name} is {value.shape} {value.dtype}, expected {leaf.shape}."
            )
        restored.append(jnp.asarray(value))
    state = jax.tree_util.tree_unflatten(treedef, restored)

    size = arrays["buffer/rewards"].shape[0]
    data = {f: fresh.buffer.data[f].at[:size].set(arrays[f"buffer/{f}"]) for f in BUFFER_FIELDS}
    buffer = ReplayBuffer(data, jnp.asarray(size, jnp.int32), jnp.asarray(arrays["buffer/ptr"], jnp.int32))

    rng = np.random.default_rng()
    rng.bit_generator.state = meta["numpy_rng"]
    return _Progress(
        state, buffer, jnp.asarray(arrays["key"]), rng, int(meta["step"]), arrays["pending_actions"]
    )


def _latest_checkpoint(
    work_dir: Path, expected: dict[str, Any], fresh: _Progress, console: Console
) -> _Progress:
    """The newest readable checkpoint matching this run, or ``fresh`` when there is none."""
    for step in _checkpoint_steps(work_dir):
        path = _checkpoint_path(work_dir, step)
        try:
            meta, arrays = _read_checkpoint(path)
        except ValueError as e:
            # Atomic renames make this unexpected (it needs disk corruption); an older checkpoint still works.
            console.log(f"[yellow]skipping {e}")
            continue
        return _restore(meta, arrays, expected, fresh, path)
    return fresh


def load_replay_buffer(env: str, work_dir: Path | None = None) -> dict[str, np.ndarray]:
    """The replay buffer of the newest resume checkpoint, in insertion order, plus its ``step``.

    With ``buffer_size >= total_steps`` nothing is ever overwritten, so ``buffer[:k]`` is exactly the
    data SAC had seen after k environment steps (e.g. a medium-replay dataset up to the medium snapshot).
    """
    work_dir = Path(work_dir or default_work_dir(env))
    steps = _checkpoint_steps(work_dir) if work_dir.is_dir() else []
    if not steps:
        raise FileNotFoundError(
            f"no resume checkpoint in {work_dir}; train first with {train_command_hint(env)}."
        )
    meta, arrays = _read_checkpoint(_checkpoint_path(work_dir, steps[0]))
    ptr, size = int(arrays["buffer/ptr"]), arrays["buffer/rewards"].shape[0]
    order = np.roll(np.arange(size), -ptr) if size == meta["cfg"]["buffer_size"] else np.arange(size)
    return {"step": np.asarray(meta["step"]), **{f: arrays[f"buffer/{f}"][order] for f in BUFFER_FIELDS}}


# --------------------------------------------------------------------------------------------------
# Evaluation, snapshots and the manifest
# --------------------------------------------------------------------------------------------------

_policy_actions = jax.jit(sac.act, static_argnames="deterministic")


class Evaluator:
    """``episodes`` environments run side by side, one batched policy call per step."""

    def __init__(self, env: str, episodes: int = 100) -> None:
        self.envs = [_make_env(env) for _ in range(episodes)]

    def __call__(
        self, actor_params: sac.Params, key: jax.Array | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Returns and lengths of one episode per environment, started from seeds EVAL_SEED + i.

        Without ``key`` the policy acts deterministically (tanh of the mean); with it, actions are sampled
        from the tanh-Gaussian as the dataset generator does, step t using ``fold_in(key, t)``.
        """
        n = len(self.envs)
        obs = np.stack([env.reset(seed=EVAL_SEED + i)[0] for i, env in enumerate(self.envs)]).astype(
            np.float32
        )
        returns, lengths, active = np.zeros(n), np.zeros(n, np.int64), np.ones(n, bool)
        t = 0
        while active.any():
            # Finished environments keep their last observation so the batch shape (and compile) stays fixed.
            if key is None:
                actions = np.asarray(_policy_actions(actor_params, obs, None, deterministic=True))
            else:
                step_key = jax.random.fold_in(key, t)
                actions = np.asarray(_policy_actions(actor_params, obs, step_key, deterministic=False))
            for i in np.flatnonzero(active):
                obs[i], reward, terminated, truncated, _ = self.envs[i].step(actions[i])
                returns[i] += reward
                lengths[i] += 1
                active[i] = not (terminated or truncated)
            t += 1
        return returns, lengths

    def evaluate(self, actor_params: sac.Params) -> Evaluation:
        """Both modes: deterministic (the policy's own quality) and sampled (what its dataset will hold)."""
        returns, lengths = self(actor_params)
        sampled_returns, sampled_lengths = self(actor_params, jax.random.PRNGKey(EVAL_SEED))
        return Evaluation(returns, lengths, sampled_returns, sampled_lengths)


class Evaluation(NamedTuple):
    returns: np.ndarray
    lengths: np.ndarray
    sampled_returns: np.ndarray
    sampled_lengths: np.ndarray


def designate(manifest: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``manifest`` whose ``expert`` and ``medium`` name snapshots (or are None).

    Both are chosen on ``sampled_return_mean``, the return with actions sampled from the policy: that
    is how the generator collects data, so it is the return the expert and medium datasets hold (a
    stochastic SAC policy scores below its deterministic self; Hopper's expert 2.9k vs 3.4k).
    expert: the highest such return (the earliest on ties). medium: the trained snapshot (steps > 0;
    the untrained step_0 can score in the window while the expert is still weak) closest to
    ``MEDIUM_FRACTION`` of the expert's return among those within ``MEDIUM_WINDOW`` of it; None when
    no snapshot falls in the window yet (or the expert's return is not positive).
    """
    snapshots = manifest.get("snapshots", [])
    expert = max(snapshots, key=lambda s: (s["sampled_return_mean"], -s["steps"]), default=None)
    medium = None
    if expert is not None and expert["sampled_return_mean"] > 0:
        best = expert["sampled_return_mean"]
        low, high = MEDIUM_WINDOW[0] * best, MEDIUM_WINDOW[1] * best
        candidates = [s for s in snapshots if s["steps"] > 0 and low <= s["sampled_return_mean"] <= high]
        medium = min(
            candidates,
            key=lambda s: (abs(s["sampled_return_mean"] - MEDIUM_FRACTION * best), s["steps"]),
            default=None,
        )
    return {
        **manifest,
        "expert": None if expert is None else expert["name"],
        "medium": None if medium is None else medium["name"],
    }


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it with `git checkout -- {path}`.") from e


def _save_snapshot(
    out_dir: Path,
    env: str,
    step: int,
    seed: int,
    actor_params: sac.Params,
    evaluation: Evaluation,
) -> dict[str, Any]:
    """Write ``step_<k>/actor.msgpack``, add its entry to the manifest and re-designate; returns the manifest.

    Snapshots use flax msgpack rather than orbax: one ~280 KB file whose bytes depend only on the
    parameters, so re-running training rewrites identical files, and git sees no churn. An orbax
    checkpoint is a directory of about a dozen files with random blob names that change on every save.
    """
    name = f"step_{step}"
    payload = flax.serialization.to_bytes(jax.device_get(actor_params))
    (out_dir / name).mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out_dir / name / ACTOR_FILE, payload, durable=True)
    actor = sac.actor_from_params(actor_params)
    entry = {
        "name": name,
        "file": f"{name}/{ACTOR_FILE}",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "steps": step,
        "seed": seed,
        "env_id": env_id(env),
        "obs_dim": int(actor_params["params"]["MLP_0"]["Dense_0"]["kernel"].shape[0]),
        "act_dim": actor.action_dim,
        "hidden_dims": list(actor.hidden_dims),
        **evaluation_fields(evaluation),
    }
    manifest_path = out_dir / MANIFEST
    manifest = (
        _read_manifest(manifest_path) if manifest_path.exists() else {"env": env, "env_id": env_id(env)}
    )
    snapshots = [s for s in manifest.get("snapshots", []) if s["name"] != name] + [entry]
    manifest = designate({**manifest, "snapshots": sorted(snapshots, key=lambda s: s["steps"])})
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n", durable=True)
    return manifest


def evaluation_fields(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "eval_episodes": len(evaluation.returns),
        "return_mean": float(np.mean(evaluation.returns)),
        "return_std": float(np.std(evaluation.returns)),
        "length_mean": float(np.mean(evaluation.lengths)),
        "sampled_return_mean": float(np.mean(evaluation.sampled_returns)),
        "sampled_return_std": float(np.std(evaluation.sampled_returns)),
        "sampled_length_mean": float(np.mean(evaluation.sampled_lengths)),
    }


def _check_out_dir(out_dir: Path, env: str, seed: int, cfg: sac.Config) -> None:
    """Refuse to mix snapshots of different seeds or network sizes under one manifest."""
    path = out_dir / MANIFEST
    if not path.exists():
        return
    for s in _read_manifest(path).get("snapshots", []):
        if s["seed"] != seed or s["hidden_dims"] != list(cfg.hidden_dims) or s["env_id"] != env_id(env):
            raise ValueError(
                f"{path} already lists {s['name']} "
                f"(seed {s['seed']}, {s['env_id']}, hidden {s['hidden_dims']}); "
                f"this run (seed {seed}, {env_id(env)}, hidden {list(cfg.hidden_dims)}) would mix with it. "
                "Pass another --out-dir or remove that directory."
            )


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _validate(
    total_steps: int, num_envs: int, checkpoint_every: int, snapshot_every: int, cfg: sac.Config
) -> None:
    for name, value in [
        ("total_steps", total_steps),
        ("checkpoint_every", checkpoint_every),
        ("learning_starts", cfg.learning_starts),
        ("buffer_size", cfg.buffer_size),
    ]:
        if value <= 0 or value % num_envs:
            raise ValueError(f"{name}={value} must be a positive multiple of num_envs={num_envs}.")
    if snapshot_every < 0 or snapshot_every % checkpoint_every:
        raise ValueError(
            f"snapshot_every={snapshot_every} must be 0 (off) or a multiple of "
            f"checkpoint_every={checkpoint_every}."
        )


def _progress_bar(console: Console, quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[speed]}"),
        TextColumn("eval {task.fields[eval]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
    )


def train(
    env: str,
    total_steps: int = 1_000_000,
    seed: int = 0,
    work_dir: Path | None = None,
    out_dir: Path | None = None,
    *,
    cfg: sac.Config = sac.Config(),  # noqa: B008 - frozen, so a shared default is safe
    num_envs: int = 4,
    checkpoint_every: int = 25_000,
    snapshot_every: int = 50_000,
    eval_episodes: int = 100,
    log_every: int = 10_000,
    quiet: bool = False,
) -> sac.State:
    """Train (or resume training) a SAC behaviour policy on ``env`` for ``total_steps`` environment steps.

    Steps count transitions over all ``num_envs`` environments. A resume checkpoint is written to
    ``work_dir`` every ``checkpoint_every`` steps and at the end; at step 0 and every ``snapshot_every``
    steps (0: never) the actor is evaluated and saved to ``out_dir`` with its manifest entry.
    """
    _validate(total_steps, num_envs, checkpoint_every, snapshot_every, cfg)
    work_dir = Path(work_dir or default_work_dir(env))
    out_dir = Path(out_dir or POLICIES_DIR / env)
    work_dir.mkdir(parents=True, exist_ok=True)
    for stale in work_dir.glob(".checkpoint_*.tmp-*"):  # left behind by a run killed mid-write
        stale.unlink()
    if snapshot_every:
        _check_out_dir(out_dir, env, seed, cfg)
    # Logs redirected to a file would otherwise wrap at rich's default 80 columns.
    console = Console(quiet=quiet, log_path=False, width=None if os.isatty(1) else 160)

    envs = _EnvBatch(env, num_envs)
    meta = _run_meta(env, seed, num_envs, cfg)
    key, init_key = jax.random.split(jax.random.PRNGKey(seed))
    fresh = _Progress(
        state=sac.init(init_key, envs.obs_dim, envs.act_dim, cfg),
        buffer=_empty_buffer(cfg.buffer_size, envs.obs_dim, envs.act_dim),
        key=key,
        rng=np.random.default_rng(seed),
        step=0,
        # Only needed from learning_starts on, when the previous iteration has sampled them.
        pending_actions=np.zeros((num_envs, envs.act_dim), np.float32),
    )
    state, buffer, key, rng, step, pending = _latest_checkpoint(work_dir, meta, fresh, console)
    del fresh  # after a restore, this would keep a second full-size replay buffer alive
    if step:
        console.log(f"resuming {env} seed {seed} from step {step:,} ({work_dir})")
    obs = envs.reset(_reset_seeds(seed, step, num_envs))

    evaluator = Evaluator(env, eval_episodes) if snapshot_every else None
    last_eval = "-"

    def snapshot(step: int, actor_params: sac.Params) -> str:
        evaluation = evaluator.evaluate(actor_params)
        manifest = _save_snapshot(out_dir, env, step, seed, actor_params, evaluation)
        returns, sampled = evaluation.returns, evaluation.sampled_returns
        console.log(
            f"snapshot step_{step}: return {returns.mean():.1f} ± {returns.std():.1f} deterministic, "
            f"{sampled.mean():.1f} ± {sampled.std():.1f} sampled over {len(returns)} episodes "
            f"(length {evaluation.lengths.mean():.0f}); "
            f"expert={manifest['expert']} medium={manifest['medium']}"
        )
        return f"{sampled.mean():.0f}"

    recent_returns: collections.deque[float] = collections.deque(maxlen=20)
    metrics: dict[str, jax.Array] = {}
    window_time, window_step, window_updates = time.perf_counter(), step, 0
    with _progress_bar(console, quiet) as bar:
        task = bar.add_task(env, total=total_steps, completed=step, speed="", eval=last_eval)
        if step == 0 and snapshot_every:
            last_eval = snapshot(0, state.actor_params)
        while step < total_steps:
            warmup = step < cfg.learning_starts
            actions = (
                rng.uniform(-1.0, 1.0, (num_envs, envs.act_dim)).astype(np.float32) if warmup else pending
            )
            step += num_envs
            boundary = step % checkpoint_every == 0 or step == total_steps
            transitions, next_obs, finished = envs.step(
                actions, _reset_seeds(seed, step, num_envs) if boundary else None
            )
            transitions["observations"] = obs
            obs = next_obs
            recent_returns.extend(finished)
            if step < cfg.learning_starts:
                buffer = _insert(buffer, transitions)
            else:
                state, buffer, key, pending, metrics = _train_iteration(
                    state, buffer, key, transitions, obs, cfg
                )
                pending = np.asarray(pending)
                window_updates += num_envs * cfg.updates_per_step

            if step % log_every == 0 or boundary:
                elapsed = time.perf_counter() - window_time
                steps_per_s, updates_per_s = (step - window_step) / elapsed, window_updates / elapsed
                speed = f"{steps_per_s:,.0f} env steps/s, {updates_per_s:,.0f} updates/s"
                bar.update(task, completed=step, speed=speed, eval=last_eval)
                if step % log_every == 0:
                    train_return = f"{np.mean(recent_returns):.1f}" if recent_returns else "-"
                    alpha = f"{float(metrics['alpha']):.4f}" if metrics else "-"
                    console.log(f"step {step:,}: {speed}; train return {train_return}; alpha {alpha}")
                window_time, window_step, window_updates = time.perf_counter(), step, 0
            if boundary:
                if snapshot_every and step % snapshot_every == 0:
                    last_eval = snapshot(step, state.actor_params)
                    bar.update(task, eval=last_eval)
                progress = _Progress(state, buffer, key, rng, step, np.asarray(pending, np.float32))
                _save_checkpoint(work_dir, progress, meta)
                window_time = time.perf_counter()  # keep evaluation and saving out of the throughput
    return state


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BehaviourPolicy:
    """A trained SAC actor, ready to label or collect data."""

    env: str
    name: str
    steps: int
    obs_dim: int
    act_dim: int
    return_mean: float
    sampled_return_mean: float
    params: sac.Params

    def actions(
        self, observations: jax.Array | np.ndarray, key: jax.Array | None, deterministic: bool = False
    ) -> jax.Array:
        """Actions in [-1, 1] for a batch ``[n, obs_dim]`` of observations.

        Stochastic (the default) samples the tanh-Gaussian as D4RL/Minari data collection did and needs
        ``key``; deterministic returns tanh(mean) and ignores it.
        """
        observations = jnp.asarray(observations, jnp.float32)
        if observations.ndim != 2 or observations.shape[1] != self.obs_dim:
            raise ValueError(f"expected observations of shape [n, {self.obs_dim}], got {observations.shape}.")
        return _policy_actions(
            self.params, observations, None if deterministic else key, deterministic=deterministic
        )


def _read_actor_params(env_dir: Path, entry: dict[str, Any], env: str) -> sac.Params:
    """The actor parameters of one manifest entry, checksum and shapes verified."""
    fix = train_command_hint(env)
    manifest_path = env_dir / MANIFEST
    path = env_dir / entry["file"]
    restore_fix = f"restore it with `git checkout -- {path}` or re-create it with {fix}"
    if not path.exists():
        raise FileNotFoundError(f"snapshot file {path} is missing; {restore_fix}.")
    payload = path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != entry["sha256"]:
        raise ValueError(
            f"snapshot file {path} is corrupt (its sha256 differs from {manifest_path}); {restore_fix}."
        )
    cfg = sac.Config(hidden_dims=tuple(entry["hidden_dims"]))
    # Shapes only: nothing is initialised or compiled to learn what the file should contain.
    template = jax.eval_shape(
        lambda key: sac.init(key, entry["obs_dim"], entry["act_dim"], cfg), jax.random.PRNGKey(0)
    ).actor_params
    try:
        params = flax.serialization.from_bytes(template, payload)
    except Exception as e:  # msgpack raises several unrelated types for damaged input
        raise ValueError(f"snapshot file {path} cannot be decoded ({e}); {restore_fix}.") from e
    for (where, want), got in zip(
        jax.tree_util.tree_flatten_with_path(template)[0], jax.tree.leaves(params), strict=True
    ):
        if np.shape(got) != want.shape:
            raise ValueError(
                f"snapshot file {path}: {jax.tree_util.keystr(where)} has shape {np.shape(got)} "
                f"but the manifest "
                f"entry implies {want.shape}; {restore_fix}."
            )
    return jax.tree.map(jnp.asarray, params)


def load_policy(env: str, name: str = "expert", policies_dir: Path | None = None) -> BehaviourPolicy:
    """Load a committed snapshot: ``expert``, ``medium`` or a snapshot name such as ``step_300000``."""
    env_dir = Path(policies_dir or POLICIES_DIR) / env
    manifest_path = env_dir / MANIFEST
    fix = train_command_hint(env)
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"no behaviour policies for {env}: {manifest_path} does not exist. Train them with {fix}."
        )
    manifest = _read_manifest(manifest_path)
    snapshot_name = manifest.get(name, name) if name in ("expert", "medium") else name
    if snapshot_name is None:
        raise ValueError(
            f"{manifest_path} designates no {name!r} snapshot yet (medium needs a return between a quarter "
            f"and a half of the expert's); continue training with {fix}."
        )
    entries = {s["name"]: s for s in manifest.get("snapshots", [])}
    if snapshot_name not in entries:
        raise ValueError(
            f"{manifest_path} has no snapshot {snapshot_name!r} (it lists {', '.join(entries) or 'none'}); "
            f"train it with {fix}."
        )
    entry = entries[snapshot_name]
    if "sampled_return_mean" not in entry:
        raise ValueError(
            f"{manifest_path} lists no sampled-action return for {snapshot_name} (it predates them); add it "
            f"with `python -m offbench.datasets.generate.policies evaluate --env {env}`."
        )
    params = _read_actor_params(env_dir, entry, env)
    return BehaviourPolicy(
        env=env,
        name=snapshot_name,
        steps=entry["steps"],
        obs_dim=entry["obs_dim"],
        act_dim=entry["act_dim"],
        return_mean=entry["return_mean"],
        sampled_return_mean=entry["sampled_return_mean"],
        params=params,
    )


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

app = typer.Typer(help="Train and inspect offbench's SAC behaviour policies.", no_args_is_help=True)


def _check_env_option(env: str) -> None:
    try:
        env_id(env)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--env") from e


@app.command("train")
def train_cli(
    env: Annotated[str, typer.Option(help=f"one of {', '.join(LOCOMOTION_ENVS)}")],
    steps: Annotated[int, typer.Option(help="total environment steps")] = 1_000_000,
    seed: int = 0,
    work_dir: Annotated[
        Path | None, typer.Option(help="resume checkpoints (default: ~/.cache/offbench/sac/<env>)")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option(help="snapshots + manifest (default: datasets/policies/<env>)")
    ] = None,
    num_envs: int = 4,
    checkpoint_every: int = 25_000,
    snapshot_every: int = 50_000,
    eval_episodes: int = 100,
) -> None:
    """Train SAC on one environment; re-running the same command resumes from the last checkpoint."""
    _check_env_option(env)
    train(
        env,
        steps,
        seed,
        work_dir,
        out_dir,
        num_envs=num_envs,
        checkpoint_every=checkpoint_every,
        snapshot_every=snapshot_every,
        eval_episodes=eval_episodes,
    )


def reevaluate(env: str, policies_dir: Path | None = None, episodes: int = 100, quiet: bool = False) -> None:
    """Evaluate every committed snapshot of ``env`` again, in both modes, and rewrite its manifest.

    For manifests written before the sampled-action return was recorded. Each snapshot's checksum is
    verified first; the manifest is replaced atomically once all snapshots are scored.
    """
    env_dir = Path(policies_dir or POLICIES_DIR) / env
    manifest = _read_manifest(env_dir / MANIFEST)
    evaluator = Evaluator(env, episodes)
    console = Console(quiet=quiet)
    snapshots = []
    for entry in manifest.get("snapshots", []):
        evaluation = evaluator.evaluate(_read_actor_params(env_dir, entry, env))
        snapshots.append({**entry, **evaluation_fields(evaluation)})
        console.log(
            f"{env} {entry['name']}: {np.mean(evaluation.returns):.1f} deterministic, "
            f"{np.mean(evaluation.sampled_returns):.1f} sampled"
        )
    manifest = designate({**manifest, "snapshots": snapshots})
    write_text_atomic(env_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n", durable=True)
    console.log(f"{env}: expert={manifest['expert']} medium={manifest['medium']}")


@app.command("evaluate")
def evaluate_cli(
    env: Annotated[str, typer.Option(help=f"one of {', '.join(LOCOMOTION_ENVS)}")],
    policies_dir: Path | None = None,
    episodes: int = 100,
) -> None:
    """Re-score every committed snapshot of one environment (deterministic and sampled actions)."""
    _check_env_option(env)
    reevaluate(env, policies_dir, episodes)


@app.command("status")
def status_cli(
    env: Annotated[list[str] | None, typer.Option(help="environments to show (default: all)")] = None,
    policies_dir: Path | None = None,
) -> None:
    """Print each environment's snapshot manifest and its newest resume checkpoint."""
    console = Console()
    for name in env or list(LOCOMOTION_ENVS):
        env_dir = Path(policies_dir or POLICIES_DIR) / name
        work_dir = default_work_dir(name)
        steps = _checkpoint_steps(work_dir) if work_dir.is_dir() else []
        resume = f"resume checkpoint at step {steps[0]:,} in {work_dir}" if steps else "no resume checkpoint"
        if not (env_dir / MANIFEST).exists():
            console.print(f"[bold]{name}[/]: no snapshots ({resume}); train with {train_command_hint(name)}")
            continue
        manifest = _read_manifest(env_dir / MANIFEST)
        table = Table(title=f"{name} ({manifest['env_id']}); {resume}")
        for column in (
            "snapshot",
            "steps",
            "seed",
            "deterministic return",
            "sampled return",
            "length",
            "role",
        ):
            table.add_column(column)
        roles = {manifest.get("expert"): "expert", manifest.get("medium"): "medium"}
        for s in manifest.get("snapshots", []):
            table.add_row(
                s["name"],
                f"{s['steps']:,}",
                str(s["seed"]),
                f"{s['return_mean']:.1f} ± {s['return_std']:.1f}",
                f"{s['sampled_return_mean']:.1f} ± {s['sampled_return_std']:.1f}"
                if "sampled_return_mean" in s
                else "-",
                f"{s['length_mean']:.0f}",
                roles.get(s["name"], ""),
            )
        console.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
