"""Collect whole episodes from a policy in a Gymnasium environment and store them as Minari data.

Episodes keep Minari's layout (T+1 observations for T steps) so every transition keeps its true next
observation. Writing goes through ``minari.create_dataset_from_buffers`` (no per-step callbacks), into
a temporary id first, renamed into place only when complete.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

Episode = dict[str, np.ndarray]
Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def rollout_episodes(
    env_id: str, steps: int, policy: Policy, seed: int = 0, max_episode_steps: int | None = None
) -> list[Episode]:
    """Whole episodes until at least ``steps`` transitions; episode k resets with seed ``seed*100000+k``."""
    env = gym.make(env_id, max_episode_steps=max_episode_steps) if max_episode_steps else gym.make(env_id)
    rng = np.random.default_rng(seed)
    episodes: list[Episode] = []
    total = 0
    while total < steps:
        observation, _ = env.reset(seed=seed * 100_000 + len(episodes))
        observations, actions, rewards, terminations, truncations = [observation], [], [], [], []
        done = False
        while not done:
            action = np.clip(policy(observation, rng), env.action_space.low, env.action_space.high)
            observation, reward, terminated, truncated, _ = env.step(action)
            observations.append(observation)
            actions.append(action)
            rewards.append(reward)
            terminations.append(terminated)
            truncations.append(truncated)
            done = terminated or truncated
        episodes.append(
            {
                "observations": np.asarray(observations, np.float32),
                "actions": np.asarray(actions, np.float32),
                "rewards": np.asarray(rewards, np.float32),
                "terminations": np.asarray(terminations),
                "truncations": np.asarray(truncations),
            }
        )
        total += len(actions)
    env.close()
    return episodes


def write_minari(
    dataset_id: str,
    env_id: str,
    episodes: list[Episode],
    *,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    description: str | None = None,
    algorithm_name: str = "offbench",
) -> None:
    """Create a Minari (HDF5) dataset from episodes. Reference scores are stored only when given."""
    import minari
    from minari.data_collector import EpisodeBuffer

    buffers = [
        EpisodeBuffer(
            id=i,
            observations=ep["observations"],
            actions=ep["actions"],
            rewards=ep["rewards"],
            terminations=ep["terminations"],
            truncations=ep["truncations"],
            infos={},
        )
        for i, ep in enumerate(episodes)
    ]
    references = {}
    if ref_max_score is not None:
        references = {"ref_min_score": ref_min_score, "ref_max_score": ref_max_score}
    minari.create_dataset_from_buffers(
        dataset_id,
        buffers,
        env=gym.make(env_id),
        eval_env=env_id,
        algorithm_name=algorithm_name,
        author={"offbench"},
        author_email={"offbench@users.noreply.invalid"},
        code_permalink="https://github.com/offbench/offbench",
        description=description or dataset_id,
        data_format="hdf5",
        num_episodes_average_score=100,
        **references,
    )


BatchPolicy = Callable[[np.ndarray, int], np.ndarray]


def collect_episodes(
    env_id: str,
    steps: int,
    policy: BatchPolicy,
    seed: int,
    num_envs: int = 16,
    one_episode_each: bool = False,
) -> list[Episode]:
    """Whole episodes from ``num_envs`` environments stepped in lockstep, one batched policy call a step.

    ``policy(observations[num_envs, obs], step_index)`` returns actions ``[num_envs, act]``. Episodes are
    kept in the order they finish until at least ``steps`` transitions are collected; episodes still
    running then are dropped (no partial trailing episodes). Environment i's k-th episode resets with a
    seed derived from (seed, i, k), so the result is a pure function of ``seed``. With
    ``one_episode_each`` every environment runs exactly one episode (for unbiased mean returns: keeping
    the first episodes to finish would favour short ones).
    """
    envs = [gym.make(env_id, disable_env_checker=True) for _ in range(num_envs)]
    low, high = envs[0].action_space.low, envs[0].action_space.high
    counts = [0] * num_envs

    def reset(i: int) -> np.ndarray:
        reset_seed = int(np.random.SeedSequence([seed, i, counts[i]]).generate_state(1)[0])
        counts[i] += 1
        return envs[i].reset(seed=reset_seed)[0]

    current = [[reset(i)] for i in range(num_envs)]
    running = [True] * num_envs
    pending: list[dict[str, list]] = [
        {"actions": [], "rewards": [], "terminations": [], "truncations": []} for _ in range(num_envs)
    ]
    episodes: list[Episode] = []
    total, step_index = 0, 0
    while total < steps and any(running):
        observations = np.stack([obs[-1] for obs in current]).astype(np.float32)
        actions = np.clip(np.asarray(policy(observations, step_index)), low, high)
        step_index += 1
        for i, env in enumerate(envs):
            if not running[i]:
                continue
            observation, reward, terminated, truncated, _ = env.step(actions[i])
            current[i].append(observation)
            record = pending[i]
            record["actions"].append(actions[i])
            record["rewards"].append(reward)
            record["terminations"].append(terminated)
            record["truncations"].append(truncated)
            if terminated or truncated:
                episodes.append(
                    {
                        "observations": np.asarray(current[i], np.float32),
                        "actions": np.asarray(record["actions"], np.float32),
                        "rewards": np.asarray(record["rewards"], np.float32),
                        "terminations": np.asarray(record["terminations"]),
                        "truncations": np.asarray(record["truncations"]),
                    }
                )
                total += len(record["actions"])
                running[i] = not one_episode_each
                current[i] = [reset(i)] if running[i] else current[i][-1:]
                pending[i] = {"actions": [], "rewards": [], "terminations": [], "truncations": []}
                if total >= steps:
                    break
    for env in envs:
        env.close()
    return episodes
