"""DQC (Li, Park & Levine, 2025): decoupled Q-chunking, ported to reward-based offline RL.

Follows the paper (arXiv 2512.10926) and the official code (ColinQiyangLi/dqc) for the losses, action
selection and hyper-parameters. That code is goal-conditioned with sigmoid/BCE heads; on reward-based
data every head here is an unbounded scalar trained with a squared or absolute loss, with QC's
(Li, Zhou & Levine, 2025) reward-based chunk backup.

Four modules, one Adam optimiser over all of them, one joint gradient step on the summed loss:
1. chunk critic Q_H^i(s_t, a_{t:t+H}), an ensemble, MSE to y = R_H + gamma^{k*} m V(s_{t+k*}) with the
   *online* value V (no target); R_H, k* and m come from the chunk sampler (``sampling.gather_chunks``:
   windows stop at the first terminal or timeout and bootstrap at timeouts).
2. distilled partial critic Q_h^i(s_t, a_{t:t+h_a}), trained toward z^i = Q_H^i(s_t, a_{t:t+H}) (member i
   from member i, no gradient) with an upper expectile kappa_d (or a kappa_d-quantile), so it
   approximates the max over chunk completions. Only this critic has a target network (tau = 0.005).
3. value V(s_t), an implicit max over dataset partial chunks: the upper kappa_b-quantile (absolute loss;
   the official choice) or kappa_b-expectile of q = agg_i Q̄_h^i(s_t, a_{t:t+h_a}) (target critic).
4. actor: flow-matching behaviour cloning over the flattened h_a-step chunk, not conditioned on Q.
   Steps of the chunk past the window's end (padding) are masked out of the loss, QC's choice.
At evaluation (``act``): N candidate chunks from the flow (Euler, ``flow_steps`` steps, clipped to the
action bounds), scored by agg_i Q_h^i with the online critic; the best one's h_a actions are executed
open-loop by the evaluator, which then re-plans.

Ablations (the paper's baselines; ``ablation`` builds the overrides): with ``use_chunk_critic=False``
there is no Q_H and Q_h is trained directly on y with weight kappa_d (0.5 = plain MSE). QC: h_a = H.
QC-NS: h_a < H. NS: h_a = 1 (n-step with n = H). OS: H = h_a = 1 (one-step TD).

Defaults and departures:
- Config defaults are a CPU size: 4 x 256 networks, batch 256. The paper's size (4 x 1024, batch 4096,
  ``FULL_SCALE``) is for GPUs. Horizons H = 25, h_a = 5 are the paper's main setting. gamma = 0.99 and
  agg = min are QC's choices for reward-based data; kappa_b = 0.9 and kappa_d = 0.8 are the upper ends
  of its ranges (0.7-0.9, 0.5-0.8), close to the paper's cube setting (0.93, 0.8). None is tuned yet.
- The MLPs are OGBench's (Dense -> GELU -> LayerNorm, variance-scaling fan_avg uniform init, linear
  output): ``nets.MLP`` with ``MLP_STYLE``.
- Observations follow ``normalize_observations`` (on by default, as the other locomotion baselines);
  OGBench datasets (OGBench names, npz files, ``offbench/ogbench/...`` ids) use raw observations as DQC
  does.
- The BC loss masks the padded steps of a partial chunk per step (QC's form: mean over all entries of
  the masked squared error); the official DQC code instead weights a whole sample by the validity of
  its chunk's last step, which is always 1 there because its windows never cross an episode end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from offbench.algorithms import Algorithm, optim
from offbench.algorithms.config import BaseConfig, bounded
from offbench.algorithms.nets import MLP, CriticEnsemble, ValueNetwork, polyak
from offbench.algorithms.sampling import ChunkBatch
from offbench.datasets.dataset import Dataset
from offbench.datasets.ogbench_data import OGBENCH_DATASET_GLOBS

AGGREGATIONS = ("min", "mean")
BACKUPS = ("quantile", "expectile")
DISTILLATIONS = ("expectile", "quantile")


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    # CPU size; FULL_SCALE holds the paper's 4 x 1024 networks and batch 4096.
    hidden_dims: tuple[int, ...] = bounded((256, 256, 256, 256), ge=1)
    lr: float = bounded(3e-4, gt=0.0)
    critic_horizon: int = bounded(25, ge=1)  # H: the chunk critic's window, and the backup length
    action_horizon: int = bounded(5, ge=1)  # h_a: the policy's chunk, executed open-loop
    use_chunk_critic: bool = True  # False: QC / QC-NS / NS / OS (no Q_H; Q_h trained on y)
    num_critics: int = bounded(2, ge=1)
    kappa_b: float = bounded(0.9, gt=0.0, lt=1.0)  # implicit value backup: upper quantile / expectile
    kappa_d: float = bounded(0.8, gt=0.0, lt=1.0)  # distillation expectile (0.5 for the ablations: symmetric)
    implicit_backup: str = "quantile"
    distill_method: str = "expectile"
    q_agg: str = "min"  # ensemble aggregation for the value target and the best-of-N score
    num_samples: int = bounded(32, ge=1)  # best-of-N
    flow_steps: int = bounded(10, ge=1)
    tau: float = bounded(0.005, gt=0.0, le=1.0)  # target distilled critic only

    def __post_init__(self) -> None:
        # Ranges are checked by resolve_config; these are the checks that involve several fields or names.
        if self.critic_horizon < self.action_horizon:
            raise ValueError(
                f"critic_horizon H={self.critic_horizon} is shorter than action_horizon "
                f"h_a={self.action_horizon}: the policy's chunk must fit inside the critic's (H >= h_a)."
            )
        for name, value, allowed in (
            ("q_agg", self.q_agg, AGGREGATIONS),
            ("implicit_backup", self.implicit_backup, BACKUPS),
            ("distill_method", self.distill_method, DISTILLATIONS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}.")


# The paper's network and batch size, for GPU runs: pass as hyper-parameter overrides.
FULL_SCALE: dict[str, Any] = {"hidden_dims": (1024, 1024, 1024, 1024), "batch_size": 4096}

# DQC trains on raw observations in OGBench (the official code); locomotion keeps the base normalisation.
DATASET_OVERRIDES = tuple((glob, {"normalize_observations": False}) for glob in OGBENCH_DATASET_GLOBS)


def ablation(name: str, horizon: int = 25, action_horizon: int = 5) -> dict[str, Any]:
    """Hyper-parameter overrides for DQC and the paper's baselines (its ablation figures).

    ``dqc``: DQC(H, h_a). ``qc``: QC(H), one critic over the whole H-chunk. ``qc_ns``: QC-NS(n = H, h_a).
    ``ns``: n-step with a single action, n = H. ``os``: one-step TD. The baselines distil with
    kappa_d = 0.5, i.e. a plain MSE to the backup target, as in the official runs.
    """
    baseline = {"use_chunk_critic": False, "kappa_d": 0.5}
    table = {
        "dqc": {"critic_horizon": horizon, "action_horizon": action_horizon},
        "qc": {**baseline, "critic_horizon": horizon, "action_horizon": horizon},
        "qc_ns": {**baseline, "critic_horizon": horizon, "action_horizon": action_horizon},
        "ns": {**baseline, "critic_horizon": horizon, "action_horizon": 1},
        "os": {**baseline, "critic_horizon": 1, "action_horizon": 1},
    }
    if name not in table:
        raise ValueError(f"unknown DQC variant {name!r}; available: {', '.join(table)}.")
    return table[name]


# Every network is OGBench's MLP as the official code builds it: GELU, LayerNorm after each hidden
# activation, variance-scaling (fan_avg, uniform) initialisation, a linear output layer.
MLP_STYLE: dict[str, Any] = {"activation": "gelu", "layer_norm": True, "initialization": "variance_scaling"}


class VectorField(nn.Module):
    """The flow's velocity v(s, x_t, t) over a flattened h_a-step chunk (unconditional BC)."""

    hidden_dims: Sequence[int]
    chunk_dim: int

    @nn.compact
    def __call__(self, observations: jax.Array, chunks: jax.Array, times: jax.Array) -> jax.Array:
        inputs = jnp.concatenate([observations, chunks, times], axis=-1)
        return MLP(self.hidden_dims, self.chunk_dim, **MLP_STYLE)(inputs)


@flax.struct.dataclass
class State:
    # {"actor", "critic", "value"}, plus "chunk_critic" when ``use_chunk_critic``; one optimiser.
    params: dict
    critic_target: dict  # the distilled critic Q_h's target
    opt: optax.OptState
    step: jax.Array
    action_dim: int = flax.struct.field(pytree_node=False)
    action_low: tuple[float, ...] = flax.struct.field(pytree_node=False)
    action_high: tuple[float, ...] = flax.struct.field(pytree_node=False)


def networks(cfg: Config, action_dim: int) -> dict[str, nn.Module]:
    """Critics Q(s, flattened chunk) are ensembles, shape ``[num_critics, *batch]``."""
    return {
        "chunk_critic": CriticEnsemble(cfg.hidden_dims, cfg.num_critics, **MLP_STYLE),
        "critic": CriticEnsemble(cfg.hidden_dims, cfg.num_critics, **MLP_STYLE),
        "value": value_network(cfg),
        "actor": VectorField(cfg.hidden_dims, cfg.action_horizon * action_dim),
    }


def value_network(cfg: Config) -> ValueNetwork:
    return ValueNetwork(cfg.hidden_dims, **MLP_STYLE)


def init(key: jax.Array, dataset: Dataset, cfg: Config) -> State:
    spec = dataset.spec
    nets = networks(cfg, spec.action_dim)
    keys = jax.random.split(key, 4)
    observation = jnp.zeros((1, spec.observation_dim))
    partial = jnp.zeros((1, cfg.action_horizon * spec.action_dim))
    params = {
        "critic": nets["critic"].init(keys[0], observation, partial),
        "value": nets["value"].init(keys[1], observation),
        "actor": nets["actor"].init(keys[2], observation, partial, jnp.zeros((1, 1))),
    }
    if cfg.use_chunk_critic:
        chunk = jnp.zeros((1, cfg.critic_horizon * spec.action_dim))
        params["chunk_critic"] = nets["chunk_critic"].init(keys[3], observation, chunk)
    return State(
        params=params,
        critic_target=params["critic"],
        opt=optim.adam(cfg.lr).init(params),
        step=jnp.zeros((), jnp.int32),
        action_dim=spec.action_dim,
        action_low=tuple(float(x) for x in spec.action_low),
        action_high=tuple(float(x) for x in spec.action_high),
    )


def aggregate(q: jax.Array, how: str) -> jax.Array:
    """Ensemble aggregation over axis 0: min (pessimistic) or mean."""
    return q.min(axis=0) if how == "min" else q.mean(axis=0)


def asymmetric_loss(target: jax.Array, prediction: jax.Array, kappa: float, kind: str) -> jax.Array:
    """Elementwise upper-expectile (squared) or upper-quantile (absolute) regression loss.

    The weight is kappa where the target is at or above the prediction, else 1 - kappa, as in the
    official code's ``where(target >= prediction, kappa, 1 - kappa)``.
    """
    weight = jnp.where(target >= prediction, kappa, 1.0 - kappa)
    diff = target - prediction
    return weight * (diff**2 if kind == "expectile" else jnp.abs(diff))


def flat_chunks(batch: ChunkBatch, cfg: Config) -> tuple[jax.Array, jax.Array]:
    """(the full H-chunk, the first h_a steps), each flattened to [B, steps * act]."""
    b = batch.actions.shape[0]
    return batch.actions.reshape(b, -1), batch.actions[:, : cfg.action_horizon].reshape(b, -1)


def backup_targets(params: dict, batch: ChunkBatch, cfg: Config) -> jax.Array:
    """y = R_H + gamma^{k*} m V(s_{t+k*}), with the online value and no gradient."""
    next_v = value_network(cfg).apply(params["value"], batch.next_observations)
    return jax.lax.stop_gradient(batch.returns + batch.discounts * batch.masks * next_v)


def loss_fn(
    params: dict, critic_target: dict, batch: ChunkBatch, key: jax.Array, cfg: Config, action_dim: int
) -> tuple[jax.Array, dict]:
    nets = networks(cfg, action_dim)
    chunk, partial = flat_chunks(batch, cfg)
    y = backup_targets(params, batch, cfg)
    info = {"target_mean": y.mean()}
    q = nets["critic"].apply(params["critic"], batch.observations, partial)  # [E, B]

    # 1-2. Chunk critic, and the distilled critic trained toward it (or directly toward y).
    if cfg.use_chunk_critic:
        q_chunk = nets["chunk_critic"].apply(params["chunk_critic"], batch.observations, chunk)
        chunk_loss = ((q_chunk - y) ** 2).mean()
        distill_target = jax.lax.stop_gradient(q_chunk)
        info |= {"chunk_critic_loss": chunk_loss, "q_chunk_mean": q_chunk.mean()}
    else:
        chunk_loss = 0.0
        distill_target = jnp.broadcast_to(y, q.shape)
    critic_loss = asymmetric_loss(distill_target, q, cfg.kappa_d, cfg.distill_method).mean()

    # 3. Implicit value backup from the target distilled critic on the dataset's partial chunk.
    q_target = aggregate(nets["critic"].apply(critic_target, batch.observations, partial), cfg.q_agg)
    v = nets["value"].apply(params["value"], batch.observations)
    value_loss = asymmetric_loss(jax.lax.stop_gradient(q_target), v, cfg.kappa_b, cfg.implicit_backup).mean()

    # 4. Flow-matching BC over the h_a-chunk; padded steps (past the window's end) are masked out.
    noise_key, time_key = jax.random.split(key)
    x0 = jax.random.normal(noise_key, partial.shape)
    t = jax.random.uniform(time_key, (partial.shape[0], 1))
    velocity = nets["actor"].apply(params["actor"], batch.observations, (1.0 - t) * x0 + t * partial, t)
    error = ((velocity - (partial - x0)) ** 2).reshape(partial.shape[0], cfg.action_horizon, -1)
    bc_loss = (error * batch.valid[:, : cfg.action_horizon, None]).mean()

    total = chunk_loss + critic_loss + value_loss + bc_loss
    info |= {
        "critic_loss": critic_loss,
        "value_loss": value_loss,
        "bc_loss": bc_loss,
        "q_mean": q.mean(),
        "v_mean": v.mean(),
        "total_loss": total,
    }
    return total, info


def update(state: State, batch: ChunkBatch, key: jax.Array, cfg: Config) -> tuple[State, dict]:
    grads, info = jax.grad(loss_fn, has_aux=True)(
        state.params, state.critic_target, batch, key, cfg, state.action_dim
    )
    params, opt = optim.step(optim.adam(cfg.lr), state.params, grads, state.opt)
    return state.replace(
        params=params,
        opt=opt,
        critic_target=polyak(state.critic_target, params["critic"], cfg.tau),
        step=state.step + 1,
    ), info


def flow_candidates(state: State, observations: jax.Array, key: jax.Array, cfg: Config) -> jax.Array:
    """N candidate chunks per observation, [N, B, h_a * act]: Euler steps of the BC flow, clipped."""
    actor = networks(cfg, state.action_dim)["actor"]
    n, b = cfg.num_samples, observations.shape[0]
    obs = jnp.broadcast_to(observations, (n, *observations.shape))
    x = jax.random.normal(key, (n, b, cfg.action_horizon * state.action_dim))

    def euler(i, x):
        t = jnp.full((n, b, 1), i / cfg.flow_steps)
        return x + actor.apply(state.params["actor"], obs, x, t) / cfg.flow_steps

    x = jax.lax.fori_loop(0, cfg.flow_steps, euler, x)
    low = jnp.tile(jnp.asarray(state.action_low, x.dtype), cfg.action_horizon)
    high = jnp.tile(jnp.asarray(state.action_high, x.dtype), cfg.action_horizon)
    return jnp.clip(x, low, high)


def score_chunks(state: State, observations: jax.Array, chunks: jax.Array, cfg: Config) -> jax.Array:
    """Q_h^i(s, chunk) from the online distilled critic, [E, N, B] for chunks [N, B, h_a * act]."""
    obs = jnp.broadcast_to(observations, (chunks.shape[0], *observations.shape))
    return networks(cfg, state.action_dim)["critic"].apply(state.params["critic"], obs, chunks)


def best_of_n(candidates: jax.Array, scores: jax.Array) -> jax.Array:
    """For every batch entry, the candidate with the highest score: [N, B, D], [N, B] -> [B, D]."""
    best = jnp.argmax(scores, axis=0)
    return candidates[best, jnp.arange(candidates.shape[1])]


def act(state: State, observations: jax.Array, cfg: Config, key: jax.Array) -> jax.Array:
    """The best of N sampled h_a-chunks under agg_i Q_h^i: [B, h_a, act], executed open-loop."""
    candidates = flow_candidates(state, observations, key, cfg)
    scores = aggregate(score_chunks(state, observations, candidates, cfg), cfg.q_agg)
    chunk = best_of_n(candidates, scores)
    return chunk.reshape(observations.shape[0], cfg.action_horizon, state.action_dim)


ALGORITHM = Algorithm(
    name="dqc",
    Config=Config,
    init=init,
    update=update,
    act=act,
    dataset_overrides=DATASET_OVERRIDES,
    act_needs_key=True,
    batch_horizon=lambda cfg: cfg.critic_horizon,
)
