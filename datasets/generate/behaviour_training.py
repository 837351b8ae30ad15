"""SAC training of the behaviour policies, resumable, on one Gymnasium MuJoCo task.

``train`` is built for a small CPU: the replay buffer is preallocated on the device and filled with
``dynamic_update_slice``, and each jitted call inserts one step of ``num_envs`` environments, runs
``num_envs * updates_per_step`` SAC updates under ``lax.scan`` and samples the next actions: one dispatch
per iteration, whose only host traffic is the new transitions in and the next actions out.

Two kinds of files come out of it:

- resume checkpoints in ``work_dir`` (``behaviour_checkpoints``). Re-running the same command continues
  from the newest one. At every checkpoint step all environments are reset, in uninterrupted runs as
  well, with seeds derived from (seed, step). A resumed run is therefore bit-identical to one that was
  never interrupted. The cost is one time-limit truncation per environment per checkpoint, which SAC
  handles like any other time limit (it keeps bootstrapping).
- committed snapshots of the actor, evaluated and listed in their manifest (``policies``).
"""

from __future__ import annotations

import collections
import functools
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from offbench.datasets.generate import behaviour_checkpoints as checkpoints
from offbench.datasets.generate import policies, replay_buffer, sac
from offbench.datasets.generate.replay_buffer import BUFFER_FIELDS, ReplayBuffer

# --------------------------------------------------------------------------------------------------
# Environments
# --------------------------------------------------------------------------------------------------


def _reset_seeds(seed: int, step: int, n: int) -> list[int]:
    """Seeds for resetting all environments at a given training step: a pure function of (seed, step)."""
    return [int(s) for s in np.random.SeedSequence([seed, step]).generate_state(n)]


class _EnvBatch:
    """``n`` independent environments stepped in lockstep; finished episodes reset immediately.

    Unlike ``gymnasium.vector`` autoreset, ``step`` returns the true final observation of an episode
    as ``next_observations`` and the first observation of the next one as the observation to act on.
    """

    def __init__(self, env: str, n: int) -> None:
        self.envs = [policies.locomotion_env(env) for _ in range(n)]
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
# The jitted training iteration
# --------------------------------------------------------------------------------------------------


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
    buffer = replay_buffer.add(buffer, transitions)
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
    work_dir = Path(work_dir or checkpoints.default_work_dir(env))
    out_dir = Path(out_dir or policies.POLICIES_DIR / env)
    work_dir.mkdir(parents=True, exist_ok=True)
    for stale in work_dir.glob(".checkpoint_*.tmp-*"):  # left behind by a run killed mid-write
        stale.unlink()
    if snapshot_every:
        policies.check_snapshot_dir(out_dir, env, seed, cfg)
    # Logs redirected to a file would otherwise wrap at rich's default 80 columns.
    console = Console(quiet=quiet, log_path=False, width=None if os.isatty(1) else 160)

    envs = _EnvBatch(env, num_envs)
    meta = checkpoints.run_meta(env, seed, num_envs, cfg)
    key, init_key = jax.random.split(jax.random.PRNGKey(seed))
    fresh = checkpoints.Progress(
        state=sac.init(init_key, envs.obs_dim, envs.act_dim, cfg),
        buffer=replay_buffer.empty_buffer(cfg.buffer_size, envs.obs_dim, envs.act_dim),
        key=key,
        rng=np.random.default_rng(seed),
        step=0,
        # Only needed from learning_starts on, when the previous iteration has sampled them.
        pending_actions=np.zeros((num_envs, envs.act_dim), np.float32),
    )
    state, buffer, key, rng, step, pending = checkpoints.latest_checkpoint(work_dir, meta, fresh, console)
    del fresh  # after a restore, this would keep a second full-size replay buffer alive
    if step:
        console.log(f"resuming {env} seed {seed} from step {step:,} ({work_dir})")
    obs = envs.reset(_reset_seeds(seed, step, num_envs))

    evaluator = policies.snapshot_evaluator(env, eval_episodes) if snapshot_every else None
    last_eval = "-"

    def snapshot(step: int, actor_params: sac.Params) -> str:
        evaluation = policies.evaluate_snapshot(evaluator, actor_params)
        manifest = policies.save_snapshot(out_dir, env, step, seed, actor_params, evaluation)
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
                buffer = replay_buffer.insert(buffer, transitions)
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
                progress = checkpoints.Progress(
                    state, buffer, key, rng, step, np.asarray(pending, np.float32)
                )
                checkpoints.save_checkpoint(work_dir, progress, meta)
                window_time = time.perf_counter()  # keep evaluation and saving out of the throughput
    return state
