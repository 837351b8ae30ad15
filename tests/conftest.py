"""Shared fixtures: small datasets built here, with Minari's own API or h5py, never downloaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest


def rollout_episodes(env_id: str, steps: int, policy: Callable[[np.ndarray, np.random.Generator], np.ndarray],
                     seed: int = 0, max_episode_steps: int | None = None) -> list[dict[str, np.ndarray]]:
    """Collect whole episodes (T+1 observations each) until at least ``steps`` transitions."""
    env = gym.make(env_id, max_episode_steps=max_episode_steps) if max_episode_steps else gym.make(env_id)
    rng = np.random.default_rng(seed)
    episodes, total, episode_index = [], 0, 0
    while total < steps:
        observation, _ = env.reset(seed=seed * 100_000 + episode_index)
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
        episodes.append({
            "observations": np.asarray(observations, np.float32),
            "actions": np.asarray(actions, np.float32),
            "rewards": np.asarray(rewards, np.float32),
            "terminations": np.asarray(terminations),
            "truncations": np.asarray(truncations),
        })
        total += len(actions)
        episode_index += 1
    env.close()
    return episodes


def write_minari(dataset_id: str, env_id: str, episodes: list[dict[str, np.ndarray]],
                 ref_min_score: float | None = None, ref_max_score: float | None = None) -> None:
    import minari
    from minari.data_collector import EpisodeBuffer

    buffers = [
        EpisodeBuffer(
            id=i, observations=ep["observations"], actions=ep["actions"], rewards=ep["rewards"],
            terminations=ep["terminations"], truncations=ep["truncations"], infos={},
        )
        for i, ep in enumerate(episodes)
    ]
    kwargs = {}
    if ref_max_score is not None:
        kwargs = {"ref_min_score": ref_min_score, "ref_max_score": ref_max_score}
    minari.create_dataset_from_buffers(
        dataset_id, buffers, env=gym.make(env_id), algorithm_name="test", author="offbench tests",
        author_email="tests@offbench.invalid", code_permalink="https://offbench.invalid",
        description="test data", num_episodes_average_score=5, **kwargs,
    )


def noisy_hopper_policy(observation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fixed linear policy plus noise: falls at varied times, so episodes end by termination."""
    weights = np.linspace(-0.5, 0.5, 33).reshape(3, 11)
    return np.tanh(weights @ observation) + 0.3 * rng.standard_normal(3)


TOY_SPEC_KWARGS = {"id": "toy", "source": "test", "env_id": None, "observation_dim": 3, "action_dim": 2,
                   "action_low": (-1.0, -1.0), "action_high": (1.0, 1.0)}


def make_toy_dataset(n: int = 20):
    """Random transitions with one terminal in the middle and a timeout at the end."""
    from offbench.datasets.dataset import DatasetSpec, build_dataset

    rng = np.random.default_rng(0)
    terminals = np.zeros(n, bool)
    terminals[n // 2] = True
    timeouts = np.zeros(n, bool)
    timeouts[-1] = True
    return build_dataset(
        DatasetSpec(**TOY_SPEC_KWARGS), observations=rng.normal(size=(n, 3)),
        actions=rng.uniform(-1, 1, (n, 2)), rewards=rng.normal(size=n), next_observations=rng.normal(size=(n, 3)),
        terminals=terminals, timeouts=timeouts,
    )


@pytest.fixture
def toy_dataset():
    """A factory: ``toy_dataset(n)`` builds a small random dataset with no environment."""
    return make_toy_dataset


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("minari")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("MINARI_DATASETS_PATH", str(root))
    yield root
    patcher.undo()


@pytest.fixture(scope="session")
def hopper_minari(minari_root: Path) -> str:
    """~3k Hopper-v5 steps written with Minari's API, with reference scores."""
    dataset_id = "test/hopper/noisy-v0"
    write_minari(dataset_id, "Hopper-v5", rollout_episodes("Hopper-v5", 3_000, noisy_hopper_policy),
                 ref_min_score=-20.0, ref_max_score=3000.0)
    return dataset_id
