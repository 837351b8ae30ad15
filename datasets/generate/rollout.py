"""Collect whole episodes from a policy in a Gymnasium environment and store them as Minari data.

Episodes keep Minari's layout (T+1 observations for T steps) so every transition keeps its true next
observation. Writing goes through ``minari.create_dataset_from_buffers`` for the metadata and a direct
HDF5 writer in Minari's layout for the episodes (no per-step callbacks); ``storage.write_atomically``
writes into a temporary Minari root and moves the finished dataset into place.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np

Episode = dict[str, np.ndarray]


def write_minari(
    dataset_id: str,
    env_id: str,
    episodes: list[Episode],
    *,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    description: str | None = None,
    algorithm_name: str = "offbench",
    env_kwargs: dict | None = None,
    eval_env_kwargs: dict | None = None,
) -> None:
    """Create a Minari (HDF5) dataset from episodes. Reference scores are stored only when given.

    ``env_kwargs`` are the collection environment's ``gym.make`` arguments, recorded in its spec;
    ``eval_env_kwargs``, when given, make a distinct evaluation environment (its spec is recorded as
    ``eval_env_spec``; by default the evaluation environment is ``env_id`` as registered).

    Minari creates the dataset (metadata, spaces, namespace) from an empty buffer list; the episodes are
    then written by :func:`write_episodes_hdf5` in Minari's layout, and the totals go into the metadata.
    Minari's own ``update_episodes`` writes the same layout but spends about twice the time per
    episode (chunked, resizable datasets, and a group count per episode), which dominates for datasets of
    thousands of short episodes.
    """
    import minari

    references = {}
    if ref_max_score is not None:
        references = {"ref_min_score": ref_min_score, "ref_max_score": ref_max_score}
    with mujoco_warnings_as_python(env_id):
        dataset = minari.create_dataset_from_buffers(
            dataset_id,
            [],
            env=gym.make(env_id, **(env_kwargs or {})),
            eval_env=env_id if eval_env_kwargs is None else gym.make(env_id, **eval_env_kwargs),
            algorithm_name=algorithm_name,
            author={"offbench"},
            author_email={"offbench@users.noreply.invalid"},
            code_permalink="https://github.com/offbench/offbench",
            description=description or dataset_id,
            data_format="hdf5",
            num_episodes_average_score=100,
            **references,
        )
    storage = dataset.storage
    write_episodes_hdf5(Path(storage.data_path) / HDF5_FILE, episodes)
    storage.update_metadata(
        {
            "total_episodes": len(episodes),
            "total_steps": int(sum(len(ep["actions"]) for ep in episodes)),
            "dataset_size": storage.get_size(),
        }
    )


HDF5_FILE = "main_data.hdf5"
EPISODE_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")


def write_episodes_hdf5(path: Path, episodes: list[Episode]) -> None:
    """Append episodes to a Minari HDF5 file: group ``episode_<i>`` with attributes ``id`` and
    ``total_steps``, one contiguous dataset per key and an empty ``infos`` group, as Minari writes them.
    Dictionary observations (``{key: array}``) become a group with one dataset per key, as Minari stores
    a Dict space."""

    def write(group, key: str, value: np.ndarray) -> None:
        data = np.ascontiguousarray(value)
        # The low-level calls skip h5py's per-dataset option handling (half the time here).
        space = h5py.h5s.create_simple(data.shape)
        handle = h5py.h5d.create(group.id, key.encode(), h5py.h5t.py_create(data.dtype), space)
        handle.write(h5py.h5s.ALL, h5py.h5s.ALL, data)

    with h5py.File(path, "a", track_order=True) as file:
        first = len(file)
        for offset, episode in enumerate(episodes):
            index = first + offset
            group = file.create_group(f"episode_{index}")
            group.attrs["id"] = index
            group.attrs["total_steps"] = len(episode["rewards"])
            for key in EPISODE_KEYS:
                if isinstance(episode[key], dict):
                    subgroup = group.create_group(key, track_order=True)
                    for name, value in episode[key].items():
                        write(subgroup, name, value)
                else:
                    write(group, key, episode[key])
            group.create_group("infos")


BatchPolicy = Callable[[np.ndarray, int], np.ndarray]


@contextlib.contextmanager
def mujoco_warnings_as_python(env_id: str) -> Iterator[None]:
    """Turn MuJoCo's model-compiler warnings, which it prints for every environment made (HalfCheetah-v5's
    XML uses the deprecated ``settotalmass``: 100 lines for the reference episodes alone), into one
    Python warning per distinct message."""
    import mujoco

    messages: list[str] = []
    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(messages.append)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)
        for message in dict.fromkeys(messages):
            warnings.warn(f"MuJoCo ({env_id}): {message}", stacklevel=3)


def make_envs(env_id: str, count: int) -> list[gym.Env]:
    """``count`` environments, without the passive checker (it only inspects the first calls)."""
    with mujoco_warnings_as_python(env_id):
        return [gym.make(env_id, disable_env_checker=True) for _ in range(count)]


def collect_episodes(
    env_id: str,
    steps: int,
    policy: BatchPolicy,
    seed: int,
    num_envs: int = 16,
    one_episode_each: bool = False,
) -> list[Episode]:
    """Whole episodes from ``num_envs`` environments stepped in lockstep, one batched policy call a step.

    ``policy(observations[num_envs, obs], step_index)`` returns actions ``[num_envs, act]``; the rows of
    environments that no longer run hold stale observations and their actions are ignored.

    At least ``steps`` transitions, of whole episodes only, in the order they finish. An environment
    whose episode ends starts a new one only while the transitions collected plus those the running
    episodes are expected to bring (each at least the mean episode length so far) fall short of
    ``steps``, and every episode started is kept. The decision to start an episode never depends on
    that episode's outcome, so short episodes are not favoured (dropping the episodes still running at
    the target would keep the first to finish, which are the short, usually low-return ones), and few
    steps are spent past the target: the total ends within about one episode of ``steps`` when episode
    lengths vary little. Environment i's k-th episode resets with a seed derived from (seed, i, k), and
    every decision depends on the data only, so the result is a pure function of ``seed``.
    With ``one_episode_each`` every environment runs exactly one episode and ``steps`` is ignored.
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}.")
    envs = make_envs(env_id, num_envs)
    low, high = envs[0].action_space.low, envs[0].action_space.high
    counts = [0] * num_envs

    def reset(i: int) -> np.ndarray:
        reset_seed = int(np.random.SeedSequence([seed, i, counts[i]]).generate_state(1)[0])
        counts[i] += 1
        return envs[i].reset(seed=reset_seed)[0]

    def fresh() -> dict[str, list]:
        return {"observations": [], "actions": [], "rewards": [], "terminations": [], "truncations": []}

    pending = [fresh() for _ in range(num_envs)]
    latest = np.empty((num_envs, envs[0].observation_space.shape[0]), np.float32)
    for i in range(num_envs):
        pending[i]["observations"].append(reset(i))
        latest[i] = pending[i]["observations"][0]
    running = list(range(num_envs))
    episodes: list[Episode] = []
    total, step_index = 0, 0
    while running:
        # Always the full batch, so a jitted policy sees one shape; rows of idle environments are ignored.
        actions = np.clip(np.asarray(policy(latest, step_index)), low, high)
        step_index += 1
        still_running: list[int] = []
        for row, i in enumerate(running):
            observation, reward, terminated, truncated, _ = envs[i].step(actions[i])
            record = pending[i]
            record["observations"].append(observation)
            record["actions"].append(actions[i])
            record["rewards"].append(reward)
            record["terminations"].append(terminated)
            record["truncations"].append(truncated)
            if not (terminated or truncated):
                latest[i] = observation
                still_running.append(i)
                continue
            episodes.append(
                {
                    "observations": np.asarray(record["observations"], np.float32),
                    "actions": np.asarray(record["actions"], np.float32),
                    "rewards": np.asarray(record["rewards"], np.float32),
                    "terminations": np.asarray(record["terminations"], bool),
                    "truncations": np.asarray(record["truncations"], bool),
                }
            )
            total += len(record["actions"])
            pending[i] = fresh()
            if one_episode_each or total >= steps:
                continue
            mean_length = total / len(episodes)
            active = still_running + running[row + 1 :]
            expected = total + sum(max(len(pending[j]["actions"]), mean_length) for j in active)
            if expected < steps:
                pending[i]["observations"].append(reset(i))
                latest[i] = pending[i]["observations"][0]
                still_running.append(i)
        running = still_running
    for env in envs:
        env.close()
    return episodes
