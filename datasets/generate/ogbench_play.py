"""OGBench manipulation play data made locally with OGBench's scripted oracle, relabelled for one singletask
task and stored as a Minari dataset (no download, no learned policy).

Ids: ``offbench/ogbench/cube-single-play-singletask-task{1..5}-v0``; evaluation environment
``cube-single-singletask-task{N}-v0``. ``offbench datasets generate --env ogbench-cube-single [--task N]``.

Collection reimplements the ``play`` branch of OGBench's ``data_gen_scripts/generate_manipspace.py``
(not shipped in the pip wheel) with the oracle the wheel does ship:
- ``cube-single-v0`` made with ``mode='data_collection'`` and ``terminate_at_goal=False``; the environment
  picks a random cube target at reset;
- ``CubePlanOracle(noise=0.1, noise_smoothing=0.5)`` plans a pick-and-place with temporally correlated
  noise; whenever its plan is done, ``set_new_target(p_stack=0)`` draws a new target and it plans again;
- actions clipped to [-1, 1]; per step the observation, the action and ``qpos`` of the state the action
  was taken in (``info['prev_qpos']``, what OGBench stores as ``qpos``).
Differences from OGBench's script:
- seeded (OGBench's scripts never seed): episode k resets with a seed derived from (seed, k), and the
  oracle's draws, which come from NumPy's global generator, from one derived from ``seed`` (the caller's
  global state is restored afterwards). Same seed, same arrays;
- episodes of :data:`EPISODE_LENGTH` transitions stored with their T+1 observations. OGBench stores 1001
  rows per episode and its loader drops the last, which gives the same 1000 transitions;
- :data:`DEFAULT_SIZE` transitions (100 episodes) instead of OGBench's 1M (1000 episodes), and no
  validation file.

Rewards: ``ogbench.relabel_utils.relabel_dataset`` with the singletask environment, from the stored
``qpos``: reward = (cubes at their target) - (cubes), i.e. -1, or 0 in a state that solves the task;
mask 0 there. The singletask environment ends an episode on the step taken from such a state
(``success_timing='pre'``), so that step is a true terminal. Minari episodes (and offbench's dataset)
end exactly once, so an oracle episode is split after each terminal and the rest continues as a new
episode from the next observation; the time limit ends the last piece (a timeout).

No reference scores: OGBench reports success rates, and a return here is minus the steps taken before
the task is solved (-200 when it never is, the evaluation limit), not a score on a policy ladder; so
``normalized_score`` stays null and raw returns are recorded.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from offbench.datasets.dataset import DatasetError
from offbench.datasets.generate import storage
from offbench.datasets.generate.rollout import Episode
from offbench.datasets.minari_data import minari_datasets_path
from offbench.hints import suggest

NAMESPACE = "offbench/ogbench/"
ENVS = ("cube-single",)  # OGBench environments whose play data can be generated
CLI_ENVS = {f"ogbench-{env}": env for env in ENVS}  # names for `offbench datasets generate --env`
TASKS = (1, 2, 3, 4, 5)
DEFAULT_TASK = 1
EPISODE_LENGTH = 1000
DEFAULT_SIZE = 100_000
# OGBench's play settings (data_gen_scripts/commands.sh): PlanOracle noise and its temporal smoothing.
NOISE = 0.1
NOISE_SMOOTHING = 0.5
ID_PATTERN = re.compile(r"^offbench/ogbench/([a-z0-9\-]+)-play-singletask-task(\d+)-v0$")


def dataset_id(env: str, task: int) -> str:
    return f"{NAMESPACE}{env}-play-singletask-task{task}-v0"


def singletask_env_id(env: str, task: int) -> str:
    return f"{env}-singletask-task{task}-v0"


def generatable_ids() -> list[str]:
    return [dataset_id(env, task) for env in ENVS for task in TASKS]


def parse_id(identifier: str) -> tuple[str, int]:
    """(OGBench environment, task) of a generatable id; a DatasetError with close matches otherwise."""
    match = ID_PATTERN.match(identifier)
    if not match or match.group(1) not in ENVS or int(match.group(2)) not in TASKS:
        raise storage.not_generatable(
            identifier,
            generatable_ids(),
            f"OGBench play ids are {dataset_id(ENVS[0], DEFAULT_TASK)} with tasks {TASKS[0]}-{TASKS[-1]}.",
        )
    return match.group(1), int(match.group(2))


def plan_generation(
    env: str, tasks: tuple[int, ...], size: int, overwrite: bool, episode_length: int = EPISODE_LENGTH
) -> list[str]:
    """Validate a generation before anything is collected; returns the ids it will write.

    Raises a DatasetError with the fix for an unknown environment or task, a size or episode length <= 0,
    and a dataset that already exists or is half-written (unless ``overwrite``).
    """
    if env not in ENVS:
        raise DatasetError(
            f"unknown OGBench environment {env!r}.{suggest(env, ENVS)} offbench generates play data for "
            f"{', '.join(ENVS)}."
        )
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise DatasetError(
            f"OGBench {env} tasks are {TASKS[0]}-{TASKS[-1]}, got {list(tasks)}. Pass --task 1 (or another)."
        )
    storage.check_size(size)
    if isinstance(episode_length, bool) or not isinstance(episode_length, int) or episode_length <= 0:
        raise DatasetError(f"the episode length must be a positive number of steps, got {episode_length!r}.")
    identifiers = [dataset_id(env, task) for task in dict.fromkeys(tasks)]
    root = minari_datasets_path()
    broken = [i for i in identifiers if (root / i).exists() and not storage.exists(i)]
    present = [i for i in identifiers if storage.exists(i)]
    if broken and not overwrite:
        raise DatasetError(
            f"{', '.join(str(root / i) for i in broken)} hold(s) no complete Minari dataset (interrupted or "
            "damaged); delete it, or pass --overwrite (overwrite=True) to regenerate it."
        )
    if present and not overwrite:
        raise DatasetError(
            f"{len(present)} dataset(s) already exist under {root}: {', '.join(present)}. Pass --overwrite "
            "(overwrite=True) to replace them, or delete them first."
        )
    return identifiers


@contextlib.contextmanager
def numpy_global_seed(seed: int) -> Iterator[None]:
    """Seed NumPy's global generator, which OGBench's oracles draw from, and restore it afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def collect_play(
    env: str, episodes: int, episode_length: int, seed: int, log: Callable[[str], Any] | None = None
) -> dict[str, np.ndarray]:
    """OGBench's play-data loop (see the module docstring). Returns ``observations`` [E, T+1, obs],
    ``actions`` [E, T, act] and ``qpos`` [E, T, nq] (the state each action was taken in)."""
    import gymnasium as gym

    from offbench.datasets.ogbench_data import import_ogbench

    import_ogbench()  # registers the environments
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

    environment = gym.make(
        f"{env}-v0", terminate_at_goal=False, mode="data_collection", max_episode_steps=episode_length
    )
    oracle = CubePlanOracle(env=environment, noise=NOISE, noise_smoothing=NOISE_SMOOTHING)
    observations, actions, qpos = [], [], []
    started = time.perf_counter()
    with numpy_global_seed(storage.kind_seed(seed, env, "oracle")):
        for episode in range(episodes):
            observation, info = environment.reset(seed=storage.kind_seed(seed, env, episode))
            oracle.reset(observation, info)
            episode_observations, episode_actions, episode_qpos = [observation], [], []
            truncated = False
            while not truncated:
                action = np.clip(np.asarray(oracle.select_action(observation, info)), -1.0, 1.0)
                observation, _, _, truncated, info = environment.step(action)
                if oracle.done:
                    target_observation, target_info = environment.unwrapped.set_new_target(p_stack=0.0)
                    oracle.reset(target_observation, target_info)
                episode_observations.append(observation)
                episode_actions.append(action)
                episode_qpos.append(info["prev_qpos"])
            observations.append(episode_observations)
            actions.append(episode_actions)
            qpos.append(episode_qpos)
            if log is not None and (episode + 1) % max(1, episodes // 10) == 0:
                log(f"{env}: {episode + 1}/{episodes} play episodes in {time.perf_counter() - started:.0f}s")
    environment.close()
    return {
        "observations": np.asarray(observations, np.float32),
        "actions": np.asarray(actions, np.float32),
        "qpos": np.asarray(qpos, np.float32),
    }


def relabel(env: str, task: int, qpos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OGBench's singletask (rewards, success) of the states ``qpos`` [..., nq], by ``relabel_dataset``."""
    import gymnasium as gym
    from ogbench.relabel_utils import relabel_dataset

    from offbench.datasets.ogbench_data import ogbench_singletask_env

    env_id = ogbench_singletask_env(singletask_env_id(env, task))
    task_env = gym.make(env_id)
    arrays = {"qpos": qpos.reshape(-1, qpos.shape[-1])}
    try:
        relabel_dataset(env_id, task_env, arrays)
    finally:
        task_env.close()
    return arrays["rewards"].reshape(qpos.shape[:-1]), (arrays["masks"] == 0.0).reshape(qpos.shape[:-1])


def split_at_terminals(
    observations: np.ndarray, actions: np.ndarray, rewards: np.ndarray, terminals: np.ndarray
) -> list[Episode]:
    """One time-limited oracle episode (T actions, T+1 observations) as Minari episodes that each end once:
    after every terminal step, and at the time limit (a truncation) unless the last step is terminal."""
    ends = np.nonzero(terminals)[0].tolist()
    if not ends or ends[-1] != len(actions) - 1:
        ends.append(len(actions) - 1)
    pieces, start = [], 0
    for end in ends:
        stop = end + 1
        truncations = np.zeros(stop - start, bool)
        truncations[-1] = not terminals[end]
        pieces.append(
            {
                "observations": observations[start : stop + 1],
                "actions": actions[start:stop],
                "rewards": rewards[start:stop],
                "terminations": terminals[start:stop].copy(),
                "truncations": truncations,
            }
        )
        start = stop
    return pieces


def describe(env: str, task: int, episodes: int, episode_length: int, seed: int, solved: float) -> str:
    return (
        f"OGBench-style {env} play data generated by offbench: {episodes} episodes of {episode_length} steps "
        f"({episodes * episode_length:,} transitions; OGBench's published set has 1000) of OGBench's "
        f"CubePlanOracle (noise {NOISE}, smoothing {NOISE_SMOOTHING}, a new random target whenever a plan "
        f"ends) in {env}-v0 with mode='data_collection', terminate_at_goal=False; seed {seed}. Rewards "
        f"relabelled for {singletask_env_id(env, task)} by ogbench.relabel_utils.relabel_dataset: "
        "(cubes at target) - (cubes) per state; a step taken from a state that solves the task is terminal "
        "and the oracle episode is split there, the time limit ends the rest (timeouts). The task is solved "
        f"at some step in {100 * solved:.0f}% of the oracle episodes. No reference scores: OGBench reports "
        "success rates. Recipe: offbench.datasets.generate.ogbench_play."
    )


def generate_play(
    env: str = "cube-single",
    tasks: tuple[int, ...] = (DEFAULT_TASK,),
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    overwrite: bool = False,
    episode_length: int = EPISODE_LENGTH,
    log: Callable[[str], Any] | None = None,
) -> list[str]:
    """Collect ceil(size / episode_length) play episodes once and write one Minari dataset per task
    (the same transitions, relabelled); returns the ids written. Everything :func:`plan_generation`
    checks is checked before the environment is stepped."""
    identifiers = plan_generation(env, tasks, size, overwrite, episode_length)
    storage.remove_stale_staging()
    episodes = math.ceil(size / episode_length)
    play = collect_play(env, episodes, episode_length, seed, log)
    for task, identifier in zip(dict.fromkeys(tasks), identifiers, strict=True):
        tic = time.perf_counter()
        rewards, terminals = relabel(env, task, play["qpos"])
        pieces = [
            piece
            for k in range(episodes)
            for piece in split_at_terminals(
                play["observations"][k], play["actions"][k], rewards[k], terminals[k]
            )
        ]
        solved = float(terminals.any(axis=1).mean())
        description = describe(env, task, episodes, episode_length, seed, solved)
        storage.write_atomically(
            identifier,
            singletask_env_id(env, task),
            pieces,
            None,
            description,
            overwrite,
            recipe={
                "generator": "offbench.datasets.generate.ogbench_play",
                "size": size,
                "seed": seed,
                "episode_length": episode_length,
            },
        )
        if log is not None:
            log(
                f"{identifier}: {rewards.size:,} transitions, {len(pieces):,} episodes after splitting at "
                f"successes, task solved in {100 * solved:.0f}% of the oracle episodes "
                f"({time.perf_counter() - tic:.1f}s)"
            )
    return identifiers
