"""Dataset-quality metrics: trajectory quality (TQ), state-action coverage (SACo) and return statistics.

TQ and SACo come from Schweighofer et al., "A Dataset Perspective on Offline RL" (CoLLAs 2022,
arXiv 2111.04714). This module implements **the paper's D4RL variant** (its appendix analysis,
``d4rl_results/main_2.ipynb`` in github.com/kschweig/OfflineRL), not the discrete-action main study:

- **TQ** = (mean undiscounted return of the dataset's *complete* episodes - ref_min) / (ref_max - ref_min).
  Episodes end at ``terminals | timeouts`` (the canonical :class:`~offbench.datasets.dataset.Dataset`
  episode table already splits this way); a trailing episode cut off by the end of the data is excluded,
  as the notebook's loop never closes it. The references are D4RL's random / expert scores (the dataset
  spec's ``ref_min_score`` / ``ref_max_score``), so TQ = D4RL-normalised score of the mean return / 100,
  and it can exceed 1 (hopper-expert-v0: 1.089). The main study instead used the best online-DQN
  evaluation return as the maximum; that variant is not implemented here.
- **SACo** = u(D) / u(D_ref), where u counts the *unique* rows of the binned ``[state, action]`` of the
  **first 100,000 transitions** (:data:`SACO_SUBSAMPLE`). Every dimension d is digitised with
  ``np.digitize(x, np.linspace(low_d, high_d, 5))`` (:data:`SACO_BINS` = 5 *edges*, so bin ids 0..5).
  ``low`` / ``high`` are the per-dimension min / max of ``[state, action]`` of the reference dataset
  (D4RL: the medium-replay dataset of the same environment), taken over *its* first 100,000 transitions,
  exactly as the notebook does (it slices the first 100k rows before computing the limits). Both
  datasets are binned with the reference's limits, so SACo(reference) = 1 and a dataset can exceed 1
  (halfcheetah-random-v0: 1.231). Counting is exact (``np.unique`` over the rows' bytes), matching the
  notebook's Python ``set``; the main study's HyperLogLog (about 1 % error) is deliberately not used.

Gotchas worth repeating next to any SACo number (reference notes, section 5.5): SACo saturates in high
dimensions (with 23 dimensions and 5 edges nearly every transition is its own bin, so SACo mostly
measures the subsample size); values outside the reference range land in bin 0 (below) or in the top
bin (at or above the maximum) and are counted, coarsely; and SACo values are only comparable when the
bin count, the subsample size and the reference (limits) are the same -- :func:`quality_table` records
all three next to the value.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from offbench.datasets.dataset import Dataset, DatasetError
from offbench.files import write_text_atomic

SACO_BINS = 5
"""Edges per dimension in the D4RL variant (``np.linspace(min, max, 5)``), giving bin ids 0..5."""

SACO_SUBSAMPLE = 100_000
"""Transitions counted per dataset in the D4RL variant: the first 100,000 rows, in stored order."""

Limits = tuple[np.ndarray, np.ndarray]
"""``(low, high)``: float64 arrays of length ``observation_dim + action_dim``, for ``[state, action]``."""


# ------------------------------------------------------------------------------------------------ returns


def _complete_returns(dataset: Dataset) -> np.ndarray:
    """Undiscounted returns (float64) of the episodes that end with a terminal or a timeout."""
    returns = np.asarray(dataset.episodes.returns, dtype=np.float64)
    return returns[np.asarray(dataset.episodes.complete, dtype=bool)]


def _references(dataset: Dataset, ref_min: float | None, ref_max: float | None) -> tuple[float, float]:
    """The TQ references: the given ones, else the dataset spec's D4RL-style reference scores."""
    if ref_min is None:
        ref_min = dataset.spec.ref_min_score
    if ref_max is None:
        ref_max = dataset.spec.ref_max_score
    if ref_min is None or ref_max is None:
        raise DatasetError(
            f"dataset {dataset.spec.id!r} has no reference scores (spec.ref_min_score / ref_max_score) and "
            "none were given: pass ref_min (random-policy return) and ref_max (expert return) explicitly."
        )
    ref_min, ref_max = float(ref_min), float(ref_max)
    if not (math.isfinite(ref_min) and math.isfinite(ref_max)) or ref_max <= ref_min:
        raise ValueError(
            "TQ needs finite references with ref_max > ref_min, "
            f"got ref_min={ref_min:g}, ref_max={ref_max:g}."
        )
    return ref_min, ref_max


def trajectory_quality(
    dataset: Dataset,
    ref_min: float | None = None,
    ref_max: float | None = None,
    *,
    allow_incomplete: bool = False,
) -> float:
    """Trajectory quality (TQ), D4RL variant of Schweighofer et al. (2022).

    ``TQ = (mean_G - ref_min) / (ref_max - ref_min)`` where ``mean_G`` is the mean *undiscounted* return
    of the dataset's **complete** episodes (ending at a terminal or a timeout). The paper writes returns
    with a discount, but its code sums rewards undiscounted, and the D4RL references are undiscounted
    returns, so undiscounted is the only consistent choice. An episode cut off by the end of the data is
    excluded: its partial return is not comparable to full-episode references.

    Args:
        dataset: the dataset.
        ref_min: return of the "minimum" policy (D4RL: the random-policy reference score). Defaults to
            ``dataset.spec.ref_min_score``.
        ref_max: return of the "maximum" policy (D4RL: the expert reference score). Defaults to
            ``dataset.spec.ref_max_score``.
        allow_incomplete: when the dataset has **no** complete episode, average over all (incomplete)
            episodes instead of raising. Off by default, because a truncated return silently makes TQ
            look far lower than it is; turn it on only for data that is a single cut-off stream.

    Returns:
        TQ as a float; 0 at the minimum reference, 1 at the maximum, and possibly outside [0, 1].

    Raises:
        DatasetError: no complete episode (and ``allow_incomplete`` is False), or no references given
            and none in the spec.
        ValueError: ``ref_max <= ref_min`` or a non-finite reference.
    """
    ref_min, ref_max = _references(dataset, ref_min, ref_max)
    returns = _complete_returns(dataset)
    if returns.size == 0:
        if not allow_incomplete:
            raise DatasetError(
                f"dataset {dataset.spec.id!r}: none of its {dataset.num_episodes} episode(s) ends with a "
                "terminal or a timeout, so TQ (mean return of complete episodes) is undefined. Mark the "
                "episode ends (timeouts), or pass allow_incomplete=True to average the truncated returns."
            )
        returns = np.asarray(dataset.episodes.returns, dtype=np.float64)
    return float((returns.mean() - ref_min) / (ref_max - ref_min))


def positive_sided_variance(returns: np.ndarray) -> float:
    """Positive-sided variance of trajectory returns (Hong et al., ICLR 2023): ``E[(G - E[G])_+^2]``.

    With M returns G_1..G_M and their mean ``Gbar``, this is ``(1/M) * sum_i max(G_i - Gbar, 0)^2``:
    only the trajectories *above* the mean contribute, so it measures how much better-than-average data
    a return-reweighting sampler can exploit. The expectation is the empirical mean over trajectories
    (divide by M, not M - 1, like ``np.var``); it is in squared return units, on raw (unnormalised)
    returns, and equals half the variance when the returns are symmetric about their mean. NaN for no
    returns.
    """
    returns = np.asarray(returns, dtype=np.float64).reshape(-1)
    if returns.size == 0:
        return math.nan
    above = np.maximum(returns - returns.mean(), 0.0)
    return float(np.mean(above**2))


def return_statistics(dataset: Dataset) -> dict[str, float | int]:
    """Episode counts and return statistics over the **complete** episodes.

    Keys: ``episodes`` (all, including a trailing incomplete one), ``complete_episodes``, ``transitions``,
    and over complete episodes only: ``return_mean``, ``return_std`` (population std, ddof=0),
    ``return_min``, ``return_max`` and ``return_psv``, the positive-sided variance
    ``E[(G - E[G])_+^2]`` of Hong et al. (2023) (see :func:`positive_sided_variance`). Returns are
    undiscounted sums of rewards. The return statistics are NaN when there is no complete episode.
    """
    returns = _complete_returns(dataset)
    empty = returns.size == 0
    return {
        "episodes": dataset.num_episodes,
        "complete_episodes": int(returns.size),
        "transitions": dataset.size,
        "return_mean": math.nan if empty else float(returns.mean()),
        "return_std": math.nan if empty else float(returns.std()),
        "return_min": math.nan if empty else float(returns.min()),
        "return_max": math.nan if empty else float(returns.max()),
        "return_psv": positive_sided_variance(returns),
    }


# ------------------------------------------------------------------------------------------------ coverage


def _check_subsample(subsample: int | None) -> None:
    if subsample is None:
        return
    if isinstance(subsample, bool) or int(subsample) != subsample or subsample < 1:
        raise ValueError(
            f"subsample must be a positive integer or None (all transitions), got {subsample!r}."
        )


def _state_actions(dataset: Dataset, subsample: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``subsample`` rows (all when None) of the observations and actions, in stored order."""
    _check_subsample(subsample)
    rows = slice(None) if subsample is None else slice(0, int(subsample))
    return np.asarray(dataset.observations)[rows], np.asarray(dataset.actions)[rows]


def state_action_bins(
    observations: np.ndarray,
    actions: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    bins: int = SACO_BINS,
) -> np.ndarray:
    """Bin ids of every dimension of ``[state, action]``, as in the D4RL variant of SACo.

    Dimension d of the row-wise concatenation ``[observations, actions]`` is mapped with
    ``np.digitize(x, np.linspace(low[d], high[d], bins))`` (edges in float64). ``bins`` is the number of
    **edges**, so the ids run from 0 to ``bins``: id 0 holds ``x < low[d]``, id i (1 <= i < bins) holds
    ``edge[i-1] <= x < edge[i]``, and id ``bins`` holds ``x >= high[d]`` -- the reference maximum itself
    and everything above it. A dimension with ``low[d] == high[d]`` has two occupied ids: 0 below, ``bins``
    at or above.

    Args:
        observations: ``[N, obs]``.
        actions: ``[N, act]``.
        low, high: ``[obs + act]`` limits, ``low <= high``, e.g. from :func:`reference_limits`.
        bins: number of edges per dimension (the paper's D4RL variant: 5).

    Returns:
        ``[N, obs + act]`` unsigned integer ids, in the smallest dtype that holds ``bins``.
    """
    observations = np.asarray(observations)
    actions = np.asarray(actions)
    if observations.ndim != 2 or actions.ndim != 2 or observations.shape[0] != actions.shape[0]:
        raise ValueError(
            f"observations and actions must be [N, obs] and [N, act] with the same N, got "
            f"{observations.shape} and {actions.shape}."
        )
    if isinstance(bins, bool) or int(bins) != bins or bins < 1:
        raise ValueError(f"bins (edges per dimension) must be a positive integer, got {bins!r}.")
    bins = int(bins)
    pairs = np.concatenate([observations, actions], axis=1)
    dims = pairs.shape[1]
    low = np.asarray(low, dtype=np.float64).reshape(-1)
    high = np.asarray(high, dtype=np.float64).reshape(-1)
    if low.shape != (dims,) or high.shape != (dims,):
        raise ValueError(
            f"limits must have one entry per [state, action] dimension ({dims}), got low {low.shape} and "
            f"high {high.shape}."
        )
    if not (np.isfinite(low).all() and np.isfinite(high).all()) or (low > high).any():
        raise ValueError("limits must be finite with low <= high in every dimension.")
    if not np.isfinite(pairs).all():
        raise ValueError("observations and actions must be finite to be binned.")
    ids = np.empty(pairs.shape, dtype=np.min_scalar_type(bins))
    for d in range(dims):
        ids[:, d] = np.digitize(pairs[:, d], np.linspace(low[d], high[d], bins))
    return ids


def _count_unique_rows(ids: np.ndarray) -> int:
    """Exact number of distinct rows: each row's bytes become one opaque scalar, then ``np.unique``."""
    if ids.shape[0] == 0:
        return 0
    ids = np.ascontiguousarray(ids)
    rows = ids.view(np.dtype((np.void, ids.dtype.itemsize * ids.shape[1]))).reshape(-1)
    return int(np.unique(rows).size)


def reference_limits(reference_dataset: Dataset, subsample: int | None = SACO_SUBSAMPLE) -> Limits:
    """Per-dimension ``(min, max)`` of ``[state, action]`` of the reference dataset, as float64 arrays.

    Taken over the reference's first ``subsample`` transitions (default 100,000; None for all), because
    the paper's D4RL notebook slices the first 100k rows before computing the limits; the reference there
    is the medium-replay dataset of the same environment. Use the same reference (and subsample) for
    every dataset of an environment, or SACo values are not comparable.
    """
    observations, actions = _state_actions(reference_dataset, subsample)
    pairs = np.concatenate([observations, actions], axis=1).astype(np.float64)
    return pairs.min(axis=0), pairs.max(axis=0)


def unique_state_actions(
    dataset: Dataset,
    limits: Limits,
    bins: int = SACO_BINS,
    subsample: int | None = SACO_SUBSAMPLE,
) -> int:
    """Exact number of distinct binned ``[state, action]`` rows among the first ``subsample`` transitions.

    The first rows in stored order (not a random draw), as in the paper; None counts all transitions, and
    a dataset smaller than ``subsample`` is counted whole. Binning is :func:`state_action_bins` with
    ``limits = (low, high)``. Deterministic: no hashing sketch, no randomness.
    """
    observations, actions = _state_actions(dataset, subsample)
    low, high = limits
    return _count_unique_rows(state_action_bins(observations, actions, low, high, bins))


def _check_same_layout(dataset: Dataset, reference_dataset: Dataset) -> None:
    dims = dataset.spec.observation_dim + dataset.spec.action_dim
    ref_dims = reference_dataset.spec.observation_dim + reference_dataset.spec.action_dim
    if (dataset.spec.observation_dim, dataset.spec.action_dim) != (
        reference_dataset.spec.observation_dim,
        reference_dataset.spec.action_dim,
    ):
        raise ValueError(
            f"SACo needs a reference of the same environment: dataset {dataset.spec.id!r} has "
            f"{dataset.spec.observation_dim}+{dataset.spec.action_dim} = {dims} [state, action] dimensions "
            f"but reference {reference_dataset.spec.id!r} has {reference_dataset.spec.observation_dim}+"
            f"{reference_dataset.spec.action_dim} = {ref_dims}."
        )


def saco(
    dataset: Dataset,
    reference_dataset: Dataset,
    bins: int = SACO_BINS,
    subsample: int | None = SACO_SUBSAMPLE,
) -> float:
    """State-action coverage, D4RL variant: ``u(dataset) / u(reference)``.

    ``u`` is :func:`unique_state_actions` over the first ``subsample`` transitions, and both datasets are
    binned with the reference's limits (:func:`reference_limits`, over the reference's first ``subsample``
    transitions), 5 edges per dimension by default. So SACo of the reference against itself is exactly 1,
    and a wider-spread dataset can exceed 1. The reference should be the same environment's medium-replay
    (or, more generally, replay) dataset.
    """
    _check_same_layout(dataset, reference_dataset)
    limits = reference_limits(reference_dataset, subsample)
    count = unique_state_actions(dataset, limits, bins, subsample)
    reference_count = unique_state_actions(reference_dataset, limits, bins, subsample)
    return count / reference_count


# ------------------------------------------------------------------------------------------------ table


def quality_table(
    dataset: Dataset,
    reference_dataset: Dataset,
    ref_min: float | None = None,
    ref_max: float | None = None,
    *,
    bins: int = SACO_BINS,
    subsample: int | None = SACO_SUBSAMPLE,
    allow_incomplete: bool = False,
) -> dict[str, float | int | str]:
    """One results-table row: TQ, SACo, the counts behind them, return statistics and the constants used.

    Keys:

    - ``dataset``: ``dataset.spec.id`` (the join key; ``bench/report_facts.py`` reads ``dataset``, ``tq``,
      ``saco`` from ``datasets.parquet``).
    - ``tq``, ``tq_ref_min``, ``tq_ref_max``: :func:`trajectory_quality` and the references it used
      (``ref_min`` / ``ref_max`` default to the dataset spec's reference scores).
    - ``saco``, ``unique_state_actions``, ``reference_unique_state_actions``: :func:`saco` and its
      numerator / denominator.
    - ``saco_bins`` (edges per dimension), ``saco_subsample`` (an int; 0 stands for None, all
      transitions, so the column stays integer), ``saco_reference`` (the reference's spec id, whose
      first ``saco_subsample`` rows set the limits),
      ``saco_dims`` (``[state, action]`` dimensions, the saturation risk), ``saco_rows`` and
      ``saco_reference_rows`` (transitions actually counted, fewer than ``saco_subsample`` for small
      datasets).
    - everything from :func:`return_statistics` (complete episodes only), plus ``tq_psv``: the
      positive-sided variance of the per-episode TQ values, ``return_psv / (ref_max - ref_min)^2``,
      comparable across environments.
    """
    _check_same_layout(dataset, reference_dataset)
    ref_min, ref_max = _references(dataset, ref_min, ref_max)
    tq = trajectory_quality(dataset, ref_min, ref_max, allow_incomplete=allow_incomplete)
    limits = reference_limits(reference_dataset, subsample)
    count = unique_state_actions(dataset, limits, bins, subsample)
    reference_count = unique_state_actions(reference_dataset, limits, bins, subsample)
    stats = return_statistics(dataset)
    limit = math.inf if subsample is None else int(subsample)
    rows, reference_rows = min(dataset.size, limit), min(reference_dataset.size, limit)
    return {
        "dataset": dataset.spec.id,
        "tq": tq,
        "tq_ref_min": ref_min,
        "tq_ref_max": ref_max,
        "saco": count / reference_count,
        "unique_state_actions": count,
        "reference_unique_state_actions": reference_count,
        "saco_bins": int(bins),
        "saco_subsample": 0 if subsample is None else int(subsample),
        "saco_reference": reference_dataset.spec.id,
        "saco_dims": dataset.spec.observation_dim + dataset.spec.action_dim,
        "saco_rows": rows,
        "saco_reference_rows": reference_rows,
        **stats,
        "tq_psv": float(stats["return_psv"]) / (ref_max - ref_min) ** 2,
    }


# --------------------------------------------------------------------------------------------------
# Stored metrics: the quality table of a local Minari dataset, kept beside its files.

QUALITY_FILE = "offbench_quality.json"


def quality_path(identifier: str) -> Path:
    from offbench.datasets.minari_data import minari_datasets_path

    return minari_datasets_path() / identifier / QUALITY_FILE


def read_quality(identifier: str) -> dict[str, Any] | None:
    """The metrics ``compute_quality`` stored for a dataset id, or None (not computed, or not an id)."""
    try:
        path = quality_path(identifier)
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def write_quality(identifier: str, table: dict[str, Any]) -> Path:
    return write_text_atomic(quality_path(identifier), json.dumps(table, indent=2))
