"""The canonical offline dataset: one row per transition, plus an episode table and a spec.

Semantics (the whole suite relies on them):
- ``terminals[i]``: a true end (the MDP terminated). The value does not bootstrap past it.
- ``timeouts[i]``: a time-limit cut. The episode ends but the value *does* bootstrap.
- Bootstrap masks come from ``terminals`` only; episode boundaries (trajectory returns, reweighting,
  action chunks) come from ``terminals | timeouts``. When a source marks a step as both, the terminal
  wins (the step is a true end), as in d3rlpy's fix for overlapping D4RL flags.
- An episode whose last row has neither flag (a dataset cut mid-episode) is kept but marked
  ``complete=False`` in the episode table.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import flax.struct
import jax
import numpy as np

OBSERVATION_STD_EPSILON = 1e-3
ACTION_BOUND_TOLERANCE = 1e-4


# Dataset names with these suffixes are files (D4RL HDF5, OGBench npz), not ids.
DATASET_FILE_SUFFIXES = (".hdf5", ".h5", ".npz")
NUMERIC_KINDS = "biuf"  # NumPy dtype kinds of bool, signed and unsigned integer and float arrays


class DatasetError(ValueError):
    """Bad or missing data. The message names the problem and how to fix it."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is, independent of its arrays. Hashable, so it can be static under jit."""

    id: str
    source: str
    env_id: str | None
    observation_dim: int
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    ref_source: str | None = None
    eval_env_spec: str | None = None
    observation_keys: tuple[str, ...] | None = None
    description: str | None = None

    @property
    def has_reference_scores(self) -> bool:
        return self.ref_min_score is not None and self.ref_max_score is not None

    def normalized_score(self, returns: np.ndarray | float) -> np.ndarray | float | None:
        """D4RL-style 100 * (return - ref_min) / (ref_max - ref_min); None without references."""
        if not self.has_reference_scores:
            return None
        return 100.0 * (np.asarray(returns) - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)


def spec_from_dict(values: dict) -> DatasetSpec:
    """A spec from ``dataclasses.asdict``'s dict after a JSON round trip (lists back to tuples)."""
    return DatasetSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@flax.struct.dataclass
class EpisodeTable:
    start: np.ndarray  # [E] index of the episode's first transition
    length: np.ndarray  # [E]
    returns: np.ndarray  # [E] undiscounted sum of rewards
    complete: np.ndarray  # [E] bool: ends with a terminal or a timeout


@flax.struct.dataclass
class Dataset:
    observations: np.ndarray  # [N, obs]
    actions: np.ndarray  # [N, act]
    rewards: np.ndarray  # [N]
    next_observations: np.ndarray  # [N, obs]
    terminals: np.ndarray  # [N] bool
    timeouts: np.ndarray  # [N] bool
    episode_id: np.ndarray  # [N] int32
    step: np.ndarray  # [N] int32, index within the episode
    episodes: EpisodeTable
    observation_mean: np.ndarray  # [obs]
    observation_std: np.ndarray  # [obs], std + 1e-3
    spec: DatasetSpec = flax.struct.field(pytree_node=False)

    @property
    def size(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.episodes.start.shape[0])

    @property
    def episode_ends(self) -> np.ndarray:
        return np.asarray(self.terminals) | np.asarray(self.timeouts)

    def to_device(self) -> Dataset:
        """A copy whose arrays live on the default JAX device (done once per training job)."""
        return jax.device_put(self)

    def normalized_observations(self) -> Dataset:
        """Observations and next observations standardised with the dataset's own statistics."""
        mean, std = self.observation_mean, self.observation_std
        return self.replace(
            observations=(self.observations - mean) / std,
            next_observations=(self.next_observations - mean) / std,
        )

    def summary(self) -> dict[str, float | int]:
        returns = np.asarray(self.episodes.returns)
        return {
            "transitions": self.size,
            "episodes": self.num_episodes,
            "complete_episodes": int(np.asarray(self.episodes.complete).sum()),
            "return_mean": float(returns.mean()) if returns.size else math.nan,
            "return_std": float(returns.std()) if returns.size else math.nan,
            "return_min": float(returns.min()) if returns.size else math.nan,
            "return_max": float(returns.max()) if returns.size else math.nan,
        }


def _check_finite(name: str, array: np.ndarray, dataset_id: str) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        rows = np.unique(np.nonzero(bad)[0])
        raise DatasetError(
            f"dataset {dataset_id!r}: {name} contains {int(bad.sum())} NaN/inf values "
            f"(first rows: {rows[:5].tolist()}). Clean or regenerate the data; offbench does not "
            "silently drop or impute values."
        )


def build_dataset(
    spec: DatasetSpec,
    *,
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    next_observations: np.ndarray,
    terminals: np.ndarray,
    timeouts: np.ndarray,
) -> Dataset:
    """Validate flat transition arrays and derive the episode structure and normalisation.

    Rows must be in episode order: an episode ends at a row whose terminal or timeout flag is set,
    and the next row starts the next episode.
    """
    observations = np.asarray(observations, dtype=np.float32)
    next_observations = np.asarray(next_observations, dtype=np.float32)
    actions = np.asarray(actions, dtype=np.float32)
    rewards = np.asarray(rewards, dtype=np.float32).reshape(-1)
    terminals = np.asarray(terminals).reshape(-1).astype(bool)
    timeouts = np.asarray(timeouts).reshape(-1).astype(bool)

    n = rewards.shape[0]
    if n == 0:
        raise DatasetError(
            f"dataset {spec.id!r} has no transitions. Regenerate or re-download it, or pass another dataset."
        )
    lengths = {
        "observations": observations.shape[0],
        "actions": actions.shape[0],
        "next_observations": next_observations.shape[0],
        "terminals": terminals.shape[0],
        "timeouts": timeouts.shape[0],
    }
    mismatched = {k: v for k, v in lengths.items() if v != n}
    if mismatched:
        raise DatasetError(
            f"dataset {spec.id!r}: mismatched lengths, rewards has {n} rows but "
            + ", ".join(f"{k} has {v}" for k, v in mismatched.items())
            + ". Every per-transition array must have one row per transition."
        )
    # A step flagged both terminal and timeout is a terminal (after the length check: no broadcasting).
    timeouts = timeouts & ~terminals
    if observations.ndim != 2 or observations.shape[1] != spec.observation_dim:
        raise DatasetError(
            f"dataset {spec.id!r}: observations have shape {observations.shape}, expected "
            f"[N, {spec.observation_dim}] (its observation space). Regenerate the dataset or fix its arrays."
        )
    if actions.ndim != 2 or actions.shape[1] != spec.action_dim:
        raise DatasetError(
            f"dataset {spec.id!r}: actions have shape {actions.shape}, expected [N, {spec.action_dim}] (its "
            "action space). Regenerate the dataset or fix its arrays."
        )
    if next_observations.shape != observations.shape:
        raise DatasetError(
            f"dataset {spec.id!r}: next_observations have shape {next_observations.shape} but observations "
            f"have {observations.shape}. Each transition's next observation must have the observation's "
            "layout."
        )
    for name, array in (
        ("observations", observations),
        ("next_observations", next_observations),
        ("actions", actions),
        ("rewards", rewards),
    ):
        _check_finite(name, array, spec.id)

    low, high = np.asarray(spec.action_low, np.float32), np.asarray(spec.action_high, np.float32)
    outside = (actions < low - ACTION_BOUND_TOLERANCE) | (actions > high + ACTION_BOUND_TOLERANCE)
    if outside.any():
        rows = np.unique(np.nonzero(outside)[0])
        raise DatasetError(
            f"dataset {spec.id!r}: {rows.size} actions lie outside the action bounds "
            f"[{low.min():g}, {high.max():g}] (first rows {rows[:5].tolist()}, range seen "
            f"[{actions.min():g}, {actions.max():g}]). Check that the dataset matches its environment "
            "or rescale the actions."
        )
    actions = np.clip(actions, low, high)

    ends = terminals | timeouts
    starts_new = np.concatenate([[True], ends[:-1]])
    episode_id = (np.cumsum(starts_new) - 1).astype(np.int32)
    episode_start = np.nonzero(starts_new)[0].astype(np.int32)
    episode_length = np.diff(np.append(episode_start, n)).astype(np.int32)
    step = (np.arange(n) - episode_start[episode_id]).astype(np.int32)
    episode_returns = np.add.reduceat(rewards.astype(np.float64), episode_start).astype(np.float32)
    episode_complete = ends[episode_start + episode_length - 1]

    mean = observations.mean(axis=0)
    std = observations.std(axis=0) + OBSERVATION_STD_EPSILON
    return Dataset(
        observations=observations,
        actions=actions,
        rewards=rewards,
        next_observations=next_observations,
        terminals=terminals,
        timeouts=timeouts,
        episode_id=episode_id,
        step=step,
        episodes=EpisodeTable(
            start=episode_start,
            length=episode_length,
            returns=episode_returns,
            complete=episode_complete,
        ),
        observation_mean=mean.astype(np.float32),
        observation_std=std.astype(np.float32),
        spec=spec,
    )


def from_episodes(spec: DatasetSpec, episodes: Iterable[dict[str, np.ndarray]]) -> Dataset:
    """Build a dataset from Minari-style episodes.

    Each episode has ``observations`` with T+1 rows (the reset observation and every next
    observation) and ``actions``, ``rewards``, ``terminations``, ``truncations`` with T rows, so
    every transition keeps its true next observation, including the last one of a timed-out episode.
    """
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")
    }
    for index, episode in enumerate(episodes):
        obs = np.asarray(episode["observations"])
        length = len(episode["actions"])
        if obs.shape[0] != length + 1:
            raise DatasetError(
                f"dataset {spec.id!r}, episode {index}: {obs.shape[0]} observations for {length} actions; "
                "Minari episodes need T+1 observations for T steps (a known defect of some old "
                "datasets, e.g. antmaze v0: use the fixed version)."
            )
        if length == 0:
            continue
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(np.asarray(episode["actions"]))
        parts["rewards"].append(np.asarray(episode["rewards"]))
        terminals = np.asarray(episode["terminations"]).astype(bool)
        timeouts = np.asarray(episode["truncations"]).astype(bool)
        # Only the last step can end an episode; a flag set earlier would split it silently.
        if terminals[:-1].any() or timeouts[:-1].any():
            raise DatasetError(
                f"dataset {spec.id!r}, episode {index}: a termination or truncation flag is set before the "
                "episode's last step. Each Minari episode must end exactly once: regenerate the dataset, or "
                "split the episode after each flagged step."
            )
        parts["terminals"].append(terminals)
        parts["timeouts"].append(timeouts)
    if not parts["rewards"]:
        raise DatasetError(
            f"dataset {spec.id!r} contains no episodes with at least one step. Regenerate or re-download it "
            "(delete its folder first), or pass another dataset."
        )
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return build_dataset(spec, **arrays)
