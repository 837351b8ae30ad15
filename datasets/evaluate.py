"""Batched evaluation episodes in a dataset's environment: every seed x episode at once.

One environment per (seed, episode), created once and reused at every evaluation. Each step makes one
batched, jitted policy call for all of them and steps only the environments whose episode is still
running. Reset seeds come from the run seed and the episode index alone, so the same seed meets the same
initial states at every evaluation and in every rerun. The benchmark derives them with ``reset_seeds``;
the behaviour policies' snapshots pass their own (``EVAL_SEED + i``), which their manifests were scored on.

Success follows OGBench's own evaluation loop (``impls/utils/evaluation.py::evaluate`` in the OGBench
repository; the pip wheel ships the environments, not that loop): an episode's success is
``info["success"]`` of its last step. OGBench's singletask environments end an episode on the step
taken from a solved state, so there the last step and "any step" agree. Environments whose last step
reports no ``success`` (Gymnasium MuJoCo) give NaN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np

from offbench.datasets.dataset import DatasetSpec
from offbench.datasets.envs import flatten_observation, make_env


def reset_seeds(run_seed: int, episodes: int) -> list[int]:
    """Environment reset seeds for one run seed, independent of the other seeds in the job."""
    state = np.random.SeedSequence([int(run_seed), 0xE7A1]).generate_state(episodes, dtype=np.uint32)
    return [int(s) for s in state]


@dataclasses.dataclass(frozen=True)
class Episodes:
    """One evaluation's outcome per (seed, episode); NaN for the seeds marked inactive."""

    returns: np.ndarray  # [seeds, episodes] undiscounted returns
    successes: np.ndarray  # [seeds, episodes] 1.0 / 0.0, NaN where the environment reports no success
    lengths: np.ndarray  # [seeds, episodes] environment steps taken; 0 for inactive seeds


class Evaluator:
    """Runs ``episodes`` episodes for each of ``seeds`` with one batched policy call per step.

    ``episode_seeds(seed, episodes)`` gives the reset seeds of one seed's episodes (default
    ``reset_seeds``); ``env_factory`` makes each environment (default ``make_env(spec)``).
    """

    def __init__(
        self,
        spec: DatasetSpec,
        seeds: Sequence[int],
        episodes: int,
        env_factory: Callable[[], gym.Env] | None = None,
        episode_seeds: Callable[[int, int], list[int]] = reset_seeds,
    ) -> None:
        self.spec = spec
        self.num_seeds, self.episodes = len(seeds), episodes
        factory = env_factory or (lambda: make_env(spec))
        self.envs = [factory() for _ in range(self.num_seeds * episodes)]
        self.reset_seeds = [s for seed in seeds for s in episode_seeds(seed, episodes)]
        space = self.envs[0].action_space
        self.action_low, self.action_high = space.low, space.high
        self.env_steps = 0

    def _observation(self, observation) -> np.ndarray:
        return flatten_observation(observation, self.spec.observation_keys)

    def run(
        self, policy: Callable[[np.ndarray, int], np.ndarray], active: np.ndarray | None = None
    ) -> Episodes:
        """Every episode of every active seed, run to its end; inactive seeds get NaN.

        ``policy(observations[seeds, episodes, obs], call_index)`` returns actions [seeds, episodes, act],
        or action chunks [seeds, episodes, horizon, act]: a chunk is executed open-loop, then the policy
        re-plans (all environments stay in lockstep, so one call serves every running episode).
        ``call_index`` counts policy calls within this evaluation, for policies that sample.
        """
        seeds_active = np.ones(self.num_seeds, bool) if active is None else np.asarray(active, bool)
        running = np.repeat(seeds_active, self.episodes)
        observations = np.zeros((len(self.envs), self.spec.observation_dim), np.float32)
        for index in np.nonzero(running)[0]:
            observation, _ = self.envs[index].reset(seed=self.reset_seeds[index])
            observations[index] = self._observation(observation)
        returns = np.zeros(len(self.envs), np.float64)
        lengths = np.zeros(len(self.envs), np.int64)
        successes = np.full(len(self.envs), np.nan)
        shape = (self.num_seeds, self.episodes, self.spec.observation_dim)
        call_index = 0
        while running.any():
            actions = np.asarray(policy(observations.reshape(shape), call_index))
            call_index += 1
            chunks = actions.reshape(len(self.envs), -1 if actions.ndim == 4 else 1, actions.shape[-1])
            chunks = np.clip(chunks, self.action_low, self.action_high)
            for offset in range(chunks.shape[1]):
                for index in np.nonzero(running)[0]:
                    observation, reward, terminated, truncated, info = self.envs[index].step(
                        chunks[index, offset]
                    )
                    observations[index] = self._observation(observation)
                    returns[index] += float(reward)
                    lengths[index] += 1
                    if terminated or truncated:
                        running[index] = False
                        if "success" in info:  # the last step's flag, as OGBench's evaluation reads it
                            successes[index] = float(bool(info["success"]))
                    self.env_steps += 1
        returns = returns.reshape(self.num_seeds, self.episodes)
        returns[~seeds_active] = np.nan  # their successes are NaN already: they never stepped
        grid = (self.num_seeds, self.episodes)
        return Episodes(returns=returns, successes=successes.reshape(grid), lengths=lengths.reshape(grid))

    def close(self) -> None:
        for env in self.envs:
            env.close()
