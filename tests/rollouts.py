"""Test helper: whole episodes of a policy in a Gymnasium environment, for writing small Minari datasets."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np

from offbench.datasets.generate.rollout import Episode

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
