"""What an algorithm sees of a dataset: preprocessing and minibatch sampling, on the device.

``prepare`` runs once per job on the host: it applies the config's observation and reward
preprocessing and builds the sampler's tables. ``sample`` runs inside the jitted training scan and
draws one minibatch with a JAX key, so no host round trip happens per update.

Samplers (any algorithm can use any of them):
- ``uniform``: every transition equally likely.
- ``rw`` (return-weighted) and ``aw`` (advantage-weighted), Hong et al. (ICLR 2023), with the formulas
  of the official JaxCQL / IQL / d3rlpy-TD3+BC samplers of Improbable-AI/harness-offline-rl. (That
  repository's d3rlpy RW variants apply the softmax to raw returns and are not followed.)
  Trajectory i (an episode of the dataset's episode table: it ends at a terminal or a timeout, and an
  unfinished trailing episode is a trajectory of its own) has return G_i and length T_i. Its score is
  Ĝ_i = (G_i - min G) / (max G - min G) for rw, and the same min-max normalisation of the advantage
  A_i = G_i - V̂(s0_i) for aw, where V̂ is the ordinary least-squares fit (with intercept) of the
  returns on the trajectories' initial observations. Every transition of trajectory i has logit
  Ĝ_i / α, and the softmax runs over all transitions:
  P(i, t) = exp(Ĝ_i / α) / Σ_j T_j exp(Ĝ_j / α), so a trajectory's mass is ∝ T_i exp(Ĝ_i / α).
  α = ``cfg.sampler_temperature``.
- ``topk``: uniform over the transitions of the ⌊p·M⌋ highest-return trajectories (at least one),
  p = ``cfg.sampler_top_fraction``.

Weights are static: computed once, in float64, and drawn from an exact alias table in O(1) per draw.

Action chunks (DQC / QC): data prepared with a ``horizon`` H (the algorithm's declared
``batch_horizon``) yields H-step windows instead of transitions (``draw`` dispatches on it). The
window's start index comes from the configured sampler, so chunks compose with rw/aw/topk; see
``gather_chunks`` for the window rules.
"""

from __future__ import annotations

import math
import warnings

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from offbench.algorithms.config import BaseConfig
from offbench.datasets.dataset import Dataset
from offbench.hints import suggest

SAMPLERS = ("uniform", "rw", "aw", "topk")

# One column of the alias table in integer units: a uint32 draw resolves probabilities of 2**-32 of a
# column, so the table is built exactly at that resolution (int64 arithmetic, no rounding drift).
ALIAS_UNIT = 1 << 32

# Scores whose spread is below this fraction of the largest |return| count as all equal (see
# ``trajectory_scores``); it only has to sit well above float64 least-squares residual noise.
CONSTANT_SCORE_TOLERANCE = 1e-9


@flax.struct.dataclass
class Batch:
    observations: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_observations: jax.Array
    # 1 - terminal: bootstrap everywhere except at true ends (timeouts still bootstrap).
    masks: jax.Array
    # a_{t+1}, the dataset's action at ``next_observations`` (ReBRAC's critic penalty). The last row of an
    # episode has none in the data: there it repeats ``actions``, as padded action chunks do.
    next_actions: jax.Array


@flax.struct.dataclass
class TrainingData:
    """The preprocessed dataset (device arrays) plus the sampler's precomputed tables."""

    dataset: Dataset
    sampler: str = flax.struct.field(pytree_node=False, default="uniform")
    # rw / aw: Walker's alias table over transitions. Column c is kept when a uint32 draw is below
    # ``alias_threshold[c]``, otherwise it is replaced by ``alias_index[c]``.
    alias_threshold: jax.Array | None = None  # [N] uint32
    alias_index: jax.Array | None = None  # [N] int32
    # topk: the indices of the kept transitions, drawn uniformly.
    subset: jax.Array | None = None  # [K] int32
    # Chunked data: transitions from each row to its episode's last row, that row included.
    steps_to_end: jax.Array | None = None  # [N] int32
    horizon: int | None = flax.struct.field(pytree_node=False, default=None)  # H of the windows, or None


@flax.struct.dataclass
class ChunkBatch:
    """H-step windows a_{t:t+H} from sampled start indices t (see ``gather_chunks``)."""

    observations: jax.Array  # [B, obs] s_t
    actions: jax.Array  # [B, H, act]; steps past the window repeat its last action
    rewards: jax.Array  # [B, H] r_{t+j}, 0 past the window
    valid: jax.Array  # [B, H] 1.0 for the k* steps inside the window, 0.0 for the padding
    returns: jax.Array  # [B] sum_{j<k*} gamma^j r_{t+j}
    next_observations: jax.Array  # [B, obs] s_{t+k*}, the bootstrap observation
    discounts: jax.Array  # [B] gamma^{k*}
    # 0 when the window ends at a true terminal (no bootstrap), else 1 (timeouts still bootstrap).
    masks: jax.Array  # [B]


def reward_transform(dataset: Dataset, cfg: BaseConfig) -> tuple[float, float]:
    """(scale, shift) such that training rewards are ``scale * r + shift``."""
    scale = cfg.reward_scale
    if cfg.reward_normalization == "return_range":
        returns = np.asarray(dataset.episodes.returns)
        spread = float(returns.max() - returns.min())
        if spread <= 0.0:
            raise ValueError(
                f"dataset {dataset.spec.id!r}: every episode has the same return, so rewards cannot be "
                "normalised by the return range; set reward_normalization='none'."
            )
        scale = scale / spread
    return scale, cfg.reward_shift


def check_sampler(cfg: BaseConfig) -> None:
    """Refuse an unknown sampler name or a setting outside its domain, naming the fix."""
    if cfg.sampler not in SAMPLERS:
        # Case-folded, so the harness's spellings ("RW", "AW", "Top") find their match.
        raise ValueError(
            f"unknown sampler {cfg.sampler!r}.{suggest(cfg.sampler.lower(), SAMPLERS)} "
            f"Available: {', '.join(SAMPLERS)}."
        )
    if cfg.sampler in ("rw", "aw") and not cfg.sampler_temperature > 0.0:
        raise ValueError(
            f"sampler {cfg.sampler!r} needs sampler_temperature > 0, got {cfg.sampler_temperature!r} "
            "(the papers use 0.1 for IQL and TD3+BC, 0.2 for CQL)."
        )
    if cfg.sampler == "topk" and not 0.0 < cfg.sampler_top_fraction <= 1.0:
        raise ValueError(
            f"sampler 'topk' needs 0 < sampler_top_fraction <= 1, got {cfg.sampler_top_fraction!r} "
            "(the paper's Top-10% is 0.1)."
        )


def trajectory_returns(dataset: Dataset) -> np.ndarray:
    """Undiscounted return of every episode, summed in float64 from the dataset's raw rewards."""
    starts = np.asarray(dataset.episodes.start)
    return np.add.reduceat(np.asarray(dataset.rewards, np.float64), starts)


def advantage_baseline(initial_observations: np.ndarray, returns: np.ndarray) -> np.ndarray:
    """V̂(s0_i): the ordinary least-squares fit, with intercept, of returns on initial observations.

    The official code uses ``sklearn.LinearRegression().fit(s0, G).predict(s0)``. Only the fitted values
    are used, and those are the projection of G onto span{1, s0}: unique even when s0 is rank
    deficient. Centring first keeps that projection well conditioned when s0 barely varies (D4RL
    resets add noise of ~5e-3 around a fixed state).
    """
    x = np.asarray(initial_observations, np.float64).reshape(len(returns), -1)
    x = x - x.mean(axis=0)
    mean_return = returns.mean()
    coefficients, *_ = np.linalg.lstsq(x, returns - mean_return, rcond=None)
    return mean_return + x @ coefficients


def trajectory_scores(dataset: Dataset, sampler: str) -> np.ndarray:
    """Per-trajectory scores in [0, 1] for rw (returns) or aw (advantages), min-max normalised.

    Scores come from the dataset's raw rewards, not the algorithm's transformed ones. Min-max
    normalisation makes them invariant to the reward *scaling* algorithms apply (IQL's
    1000 / return range), but not to a per-step *shift*: r - 1 lowers G_i by T_i, favouring short
    trajectories. The official IQL harness applies AntMaze's r - 1 before weighting, a plausible cause
    of AW's weaker AntMaze results in the paper. Raw rewards keep the sampler a
    property of the dataset, identical for every algorithm it is paired with; the only departure from
    the official runs is IQL on datasets with a reward shift (AntMaze).

    When every trajectory scores the same (a single trajectory, equal returns, or, for aw, no more
    trajectories than the regression has parameters, so the fit is exact), the min-max normalisation is
    undefined. Every trajectory is then equally good, so every score is 0 and the sampler is uniform
    over transitions, the limit of the formula as the spread goes to 0; a warning says so.
    """
    returns = trajectory_returns(dataset)
    values = returns
    if sampler == "aw":
        initial = np.asarray(dataset.observations)[np.asarray(dataset.episodes.start)]
        values = returns - advantage_baseline(initial, returns)
    spread = float(values.max() - values.min())
    if spread <= CONSTANT_SCORE_TOLERANCE * float(np.abs(returns).max()):
        what = "advantages" if sampler == "aw" else "returns"
        warnings.warn(
            f"sampler {sampler!r} on dataset {dataset.spec.id!r}: all {len(returns)} trajectories have the "
            f"same {what}, so the weights are uniform (identical to sampler='uniform').",
            stacklevel=3,
        )
        return np.zeros_like(values)
    return (values - values.min()) / spread


def top_trajectories(returns: np.ndarray, top_fraction: float) -> np.ndarray:
    """Indices of the ⌊p·M⌋ highest-return trajectories, at least one.

    ⌊p·M⌋ is computed as the official code's ``int(M * p)``. Ties at the cut keep the earlier
    trajectory (a stable sort), so the choice is deterministic.
    """
    count = max(1, math.floor(len(returns) * top_fraction))
    return np.argsort(-returns, kind="stable")[:count]


def transition_probabilities(dataset: Dataset, cfg: BaseConfig) -> np.ndarray:
    """The exact float64 probability of drawing each transition under ``cfg.sampler``."""
    check_sampler(cfg)
    n = dataset.size
    lengths = np.asarray(dataset.episodes.length)
    if cfg.sampler == "uniform":
        return np.full(n, 1.0 / n)
    if cfg.sampler == "topk":
        kept = np.zeros(len(lengths), bool)
        kept[top_trajectories(trajectory_returns(dataset), cfg.sampler_top_fraction)] = True
        mass = np.repeat(kept.astype(np.float64), lengths)
        return mass / mass.sum()
    logits = trajectory_scores(dataset, cfg.sampler) / cfg.sampler_temperature
    # Subtracting the largest logit avoids overflow at small temperatures; it cancels in the ratio.
    per_transition = np.repeat(np.exp(logits - logits.max()), lengths)
    return per_transition / math.fsum(per_transition)


def alias_table(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table for ``probabilities``, built exactly in units of 2**-32 of a column.

    Returns ``(threshold, alias)``: column c (drawn uniformly) yields c with probability
    ``threshold[c] / ALIAS_UNIT`` and ``alias[c]`` otherwise; ``threshold`` lies in [0, ALIAS_UNIT].
    Each column's mass q_c = N p_c is rounded to whole units, the rounding spread by largest
    remainder so the units sum to N columns exactly; every probability is then off by less than one
    unit (2**-32 / N). From there the construction is exact integer arithmetic.

    The construction is Vose's, vectorised. Cells below one column ("small", deficit 1 - q) are
    served in order by cells above ("large", excess q - 1): a small cell goes to the first large cell
    whose cumulative excess reaches the deficits handed out before it; a large cell whose excess is
    used up keeps what remains of its column and aliases the next large cell. Float cumulative sums
    would drift by ~N·eps (measured: 7e-8 relative error at N = 1M), which integers do not.
    """
    n = probabilities.size
    exact = np.asarray(probabilities, np.float64) * (n * ALIAS_UNIT)
    units = np.floor(exact).astype(np.int64)
    missing = n * ALIAS_UNIT - int(units.sum())
    # Floor leaves 0 <= missing < N units (plus a few from float rounding of p, which go to the
    # largest cell, where they matter least).
    positive = np.flatnonzero(probabilities > 0)
    by_remainder = positive[np.argsort((units - exact)[positive], kind="stable")]
    bumped = min(max(missing, 0), positive.size)
    units[by_remainder[:bumped]] += 1
    units[np.argmax(units)] += missing - bumped

    is_large = units >= ALIAS_UNIT
    small, large = np.flatnonzero(~is_large), np.flatnonzero(is_large)
    deficits = np.cumsum(ALIAS_UNIT - units[small])
    excesses = np.cumsum(units[large] - ALIAS_UNIT)
    threshold = np.full(n, ALIAS_UNIT, np.int64)
    alias = np.arange(n, dtype=np.int64)
    served_before = deficits - (ALIAS_UNIT - units[small])
    threshold[small] = units[small]
    alias[small] = large[np.searchsorted(excesses, served_before, side="left")]
    # The last large cell absorbs exactly the remaining deficit and keeps its whole column.
    used_up_by = np.searchsorted(deficits, excesses[:-1], side="right")
    exhausted = np.flatnonzero(used_up_by < small.size)
    threshold[large[exhausted]] = ALIAS_UNIT + excesses[exhausted] - deficits[used_up_by[exhausted]]
    alias[large[exhausted]] = large[exhausted + 1]
    return threshold, alias


def prepare(dataset: Dataset, cfg: BaseConfig, horizon: int | None = None) -> TrainingData:
    """The job's training data; with ``horizon`` H, ``draw`` yields H-step windows (action chunks)."""
    check_sampler(cfg)
    # Sampler tables come from the raw dataset (see ``trajectory_scores``), before any transform.
    tables = {}
    if cfg.sampler != "uniform":
        probabilities = transition_probabilities(dataset, cfg)
        if cfg.sampler == "topk":
            tables["subset"] = jnp.asarray(np.flatnonzero(probabilities > 0), jnp.int32)
        else:
            threshold, alias = alias_table(probabilities)
            # A full column (ALIAS_UNIT) aliases itself, so storing ALIAS_UNIT - 1 changes nothing.
            tables["alias_threshold"] = jnp.asarray(np.minimum(threshold, ALIAS_UNIT - 1).astype(np.uint32))
            tables["alias_index"] = jnp.asarray(alias, jnp.int32)
    if horizon is not None:
        tables["steps_to_end"] = jnp.asarray(steps_to_episode_end(dataset, horizon))
    if cfg.normalize_observations:
        dataset = dataset.normalized_observations()
    scale, shift = reward_transform(dataset, cfg)
    if (scale, shift) != (1.0, 0.0):
        dataset = dataset.replace(rewards=(scale * np.asarray(dataset.rewards) + shift).astype(np.float32))
    return TrainingData(dataset=dataset.to_device(), sampler=cfg.sampler, horizon=horizon, **tables)


def sample_indices(data: TrainingData, key: jax.Array, batch_size: int) -> jax.Array:
    """``batch_size`` transition indices, with replacement; O(1) work per index for every sampler."""
    n = data.dataset.rewards.shape[0]
    if data.sampler in ("rw", "aw"):
        column_key, coin_key = jax.random.split(key)
        column = jax.random.randint(column_key, (batch_size,), 0, n)
        # P(coin < threshold) = threshold / 2**32 exactly, the unit the table was built in.
        coin = jax.random.bits(coin_key, (batch_size,), jnp.uint32)
        return jnp.where(coin < data.alias_threshold[column], column, data.alias_index[column])
    if data.sampler == "topk":
        return data.subset[jax.random.randint(key, (batch_size,), 0, data.subset.shape[0])]
    return jax.random.randint(key, (batch_size,), 0, n)


def gather(dataset: Dataset, indices: jax.Array) -> Batch:
    """The transitions at ``indices``. Fields an update never reads (``next_actions`` for most) are
    removed from the jitted program by XLA, so they cost nothing."""
    following = jnp.minimum(indices + 1, dataset.rewards.shape[0] - 1)
    has_next = (
        ~(dataset.terminals[indices] | dataset.timeouts[indices])
        & (dataset.episode_id[following] == dataset.episode_id[indices])
        & (following != indices)
    )
    return Batch(
        observations=dataset.observations[indices],
        actions=dataset.actions[indices],
        rewards=dataset.rewards[indices],
        next_observations=dataset.next_observations[indices],
        masks=1.0 - dataset.terminals[indices].astype(jnp.float32),
        next_actions=jnp.where(has_next[:, None], dataset.actions[following], dataset.actions[indices]),
    )


def sample(data: TrainingData, key: jax.Array, batch_size: int) -> Batch:
    return gather(data.dataset, sample_indices(data, key, batch_size))


def steps_to_episode_end(dataset: Dataset, horizon: int) -> np.ndarray:
    """Per row, the number of transitions from it to its episode's last row inclusive (int32).

    Refuses datasets where H-step windows are meaningless: no episode boundaries at all (windows would
    run across unknown episode ends) or no episode as long as ``horizon``.
    """
    if horizon < 1:
        raise ValueError(f"the chunk length (critic_horizon) must be at least 1, got {horizon}.")
    if not dataset.episode_ends.any():
        raise ValueError(
            f"dataset {dataset.spec.id!r} has no episode boundaries: no transition is marked terminal or "
            "timeout, so action chunks cannot be kept inside episodes. Chunked samplers (DQC, QC) need the "
            "episode ends; load a source that records terminations/truncations."
        )
    lengths = np.asarray(dataset.episodes.length)
    if horizon > lengths.max():
        raise ValueError(
            f"chunk length critic_horizon={horizon} is longer than every episode of dataset "
            f"{dataset.spec.id!r} (the longest has {int(lengths.max())} steps); choose "
            f"critic_horizon <= {int(lengths.max())}."
        )
    starts, episode_id = np.asarray(dataset.episodes.start), np.asarray(dataset.episode_id)
    ends = (starts + lengths)[episode_id]
    return (ends - np.arange(dataset.size)).astype(np.int32)


def gather_chunks(data: TrainingData, starts: jax.Array, horizon: int, discount: float) -> ChunkBatch:
    """The H-step windows starting at ``starts``, for chunked critics on reward-based data (DQC, QC).

    The window holds k* = min(H, steps to the episode's end) steps: it stops at the first terminal or
    timeout. Its return is sum_{j<k*} gamma^j r_{t+j}, it bootstraps from s_{t+k*} (the next observation
    of its last step) with gamma^{k*}, and the mask is 0 only when that last step is a true terminal. A
    window cut by a timeout (or by the end of an unfinished trailing episode) is kept and bootstraps from
    the timeout's next observation, like a one-step TD backup at a time limit: nothing is dropped, where
    QC's official code (``valid[..., -1]``) drops such windows from the critic loss. Dropping them would
    leave the last H - 1 states of every time-limited episode without a critic target (2.4% of a D4RL
    locomotion dataset at H = 25) and is not needed for a correct backup: a time limit is not an end of
    the MDP. The price: a critic fed the padded chunk learns R_{k*} + gamma^{k*} V(s_{t+k*}), i.e. the
    value of the k* dataset actions followed by the value's implicit policy, not of the padded actions
    themselves. Steps past k* are padding: the actions repeat the last valid one, rewards are 0, ``valid``
    marks them 0.
    """
    dataset = data.dataset
    lengths = jnp.minimum(data.steps_to_end[starts], horizon)
    offsets = jnp.arange(horizon)
    valid = offsets[None, :] < lengths[:, None]
    rows = starts[:, None] + jnp.minimum(offsets[None, :], lengths[:, None] - 1)
    rewards = jnp.where(valid, dataset.rewards[rows], 0.0)
    powers = jnp.asarray(discount, jnp.float32) ** offsets
    last = starts + lengths - 1
    return ChunkBatch(
        observations=dataset.observations[starts],
        actions=dataset.actions[rows],
        rewards=rewards,
        valid=valid.astype(jnp.float32),
        returns=(rewards * powers).sum(axis=-1),
        next_observations=dataset.next_observations[last],
        discounts=jnp.asarray(discount, jnp.float32) ** lengths,
        masks=1.0 - dataset.terminals[last].astype(jnp.float32),
    )


def sample_chunks(data: TrainingData, key: jax.Array, batch_size: int, discount: float) -> ChunkBatch:
    """``batch_size`` H-step windows whose start indices come from the configured sampler."""
    if data.horizon is None:
        raise ValueError(
            "this TrainingData was prepared for single transitions; prepare it with a horizon "
            "(sampling.prepare(dataset, cfg, horizon=H)) to sample action chunks."
        )
    return gather_chunks(data, sample_indices(data, key, batch_size), data.horizon, discount)


def draw(data: TrainingData, key: jax.Array, cfg: BaseConfig) -> Batch | ChunkBatch:
    """One training minibatch: H-step windows when ``data`` was prepared with a horizon, else transitions."""
    if data.horizon is None:
        return sample(data, key, cfg.batch_size)
    return sample_chunks(data, key, cfg.batch_size, cfg.discount)
