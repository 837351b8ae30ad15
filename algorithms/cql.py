"""CQL (Kumar et al., 2020) on SAC, as young-geng/JaxCQL runs it in the trajectory-reweighting paper.

Follows ``JaxCQL/conservative_sac.py`` and ``conservative_sac_main.py`` as copied into
Improbable-AI/harness-offline-rl (commit f88e210), with that launcher's settings
(``experiments/d4rl/run_cql.py``). One update computes every loss from
the same (pre-update) parameters and then steps every optimiser, as JaxCQL's multi-gradient step does:
- policy: SAC's ``alpha * log pi(a|s) - min(Q1, Q2)(s, a)`` with a ~ pi(s) reparameterised;
- temperature: automatic entropy tuning towards -|A|;
- critics: TD to ``r + gamma * mask * min(Q1', Q2')(s', a')`` with a' ~ pi(s') (no entropy term in the
  backup; with the max-target backup, the largest of that value over n draws of a'), plus
  ``cql_min_q_weight`` times the conservative term ``temp * logsumexp(Q(s, a_k) / temp) - Q(s, a_data)``
  over 10 uniform actions, 10 policy actions at s and 10 policy actions drawn at s' (all scored at s),
  each minus its log-density (importance sampling);
- target critics: Polyak, tau = 0.005, every step.
Not implemented (off in every setting the paper ran): the Lagrange variant, BC warm-up epochs, and
clipping of the conservative difference (±inf by default).
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from offbench.algorithms import Algorithm, optim
from offbench.algorithms.config import BaseConfig, bounded
from offbench.algorithms.nets import polyak, sample_tanh_gaussian
from offbench.algorithms.sampling import Batch
from offbench.datasets.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    # policy_arch = qf_arch = '256-256' (conservative_sac_main flags).
    hidden_dims: tuple[int, ...] = bounded((256, 256), ge=1)
    policy_lr: float = bounded(3e-4, gt=0.0)  # also the temperature's learning rate, as in JaxCQL
    qf_lr: float = bounded(3e-4, gt=0.0)
    tau: float = bounded(0.005, gt=0.0, le=1.0)  # soft_target_update_rate
    # JaxCQL's library default is 5.0; the paper's launcher overrides it (--cql.cql_min_q_weight=10.0).
    cql_min_q_weight: float = bounded(10.0, ge=0.0)
    cql_n_actions: int = bounded(10, ge=1)
    cql_temp: float = bounded(1.0, gt=0.0)  # divides the Q-values in the logsumexp
    cql_importance_sample: bool = True
    # Back up the largest min(Q1', Q2')(s', a'_k) over cql_n_actions draws a'_k ~ pi(s') instead of one draw.
    cql_max_target_backup: bool = False
    # JaxCQL default: the TD target carries no -alpha * log pi(a'|s') term.
    backup_entropy: bool = False
    # The policy's log-std is ``multiplier * raw + offset``, both trainable scalars starting here
    # (policy_log_std_multiplier / policy_log_std_offset flags): the initial std is about e^-1.
    policy_log_std_multiplier: float = bounded(1.0)
    policy_log_std_offset: float = bounded(-1.0)
    # conservative_sac_main clips dataset actions to ±0.999 (clip_action flag) before training; a
    # fraction of max_action, so 1 clips nothing.
    clip_action: float = bounded(0.999, gt=0.0, le=1.0)
    # JaxCQL feeds raw observations (no state normalisation) and raw rewards (reward_scale 1,
    # reward_bias 0; the harness's reward_norm only fills an unused ``normalized_rewards`` field).
    normalize_observations: bool = False
    # The reweighting paper's CQL sweeps use RW/AW at temperature 0.2 (0.1 for IQL and TD3+BC).
    sampler_temperature: float = 0.2


# The launcher's per-family settings (experiments/d4rl/run_cql.py, harness-offline-rl f88e210): Kitchen
# runs 512-512-512 policy and Q networks without importance sampling and with the max-target backup.
# AntMaze, maze2d and Adroit run the plain settings above, raw rewards included.
DATASET_OVERRIDES = (
    (
        "*kitchen/*",
        {"hidden_dims": (512, 512, 512), "cql_importance_sample": False, "cql_max_target_backup": True},
    ),
)


@flax.struct.dataclass
class State:
    policy: dict
    critic: dict
    critic_target: dict
    log_alpha: jax.Array
    policy_opt: optax.OptState
    critic_opt: optax.OptState
    alpha_opt: optax.OptState
    step: jax.Array
    action_dim: int = flax.struct.field(pytree_node=False)
    max_action: float = flax.struct.field(pytree_node=False)


class FullyConnected(nn.Module):
    """JaxCQL's ``FullyConnectedNetwork`` with ``orthogonal_init=False`` (the default used).

    Hidden layers are flax-default ``nn.Dense`` (LeCun-normal kernels, zero biases) with ReLU; the output
    layer starts small, ``variance_scaling(1e-2, 'fan_in', 'uniform')``, so initial Q-values and policy
    means are close to 0.
    """

    hidden_dims: tuple[int, ...]
    output_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden_dims:
            x = nn.relu(nn.Dense(width)(x))
        small = nn.initializers.variance_scaling(1e-2, "fan_in", "uniform")
        return nn.Dense(self.output_dim, kernel_init=small)(x)


class TwinCritic(nn.Module):
    """Two independently initialised Q-networks (JaxCQL's qf1 and qf2) as one batched program.

    Returns shape ``[2, *batch]``; any leading batch shape works (the conservative term scores
    ``[B, 3n + 1]`` actions per state in one call).
    """

    hidden_dims: tuple[int, ...]

    @nn.compact
    def __call__(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            FullyConnected,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=2,
        )
        inputs = jnp.concatenate([observations, actions], axis=-1)
        return ensemble(self.hidden_dims, 1)(inputs).squeeze(-1)


class TanhGaussianPolicy(nn.Module):
    """JaxCQL's ``TanhGaussianPolicy``: (mean, log-std) before the tanh squash.

    The log-std is ``multiplier * raw + offset`` with trainable scalars, clipped to [-20, 2].
    """

    hidden_dims: tuple[int, ...]
    action_dim: int
    log_std_multiplier: float
    log_std_offset: float

    @nn.compact
    def __call__(self, observations: jax.Array) -> tuple[jax.Array, jax.Array]:
        outputs = FullyConnected(self.hidden_dims, 2 * self.action_dim)(observations)
        mean, raw_log_std = jnp.split(outputs, 2, axis=-1)
        multiplier = self.param("log_std_multiplier", lambda _: jnp.float32(self.log_std_multiplier))
        offset = self.param("log_std_offset", lambda _: jnp.float32(self.log_std_offset))
        return mean, jnp.clip(multiplier * raw_log_std + offset, -20.0, 2.0)


def networks(cfg: Config, action_dim: int) -> tuple[TanhGaussianPolicy, TwinCritic]:
    policy = TanhGaussianPolicy(
        cfg.hidden_dims, action_dim, cfg.policy_log_std_multiplier, cfg.policy_log_std_offset
    )
    return policy, TwinCritic(cfg.hidden_dims)


def init(key: jax.Array, dataset: Dataset, cfg: Config) -> State:
    spec = dataset.spec
    policy, critic = networks(cfg, spec.action_dim)
    policy_key, critic_key = jax.random.split(key)
    observation = jnp.zeros((1, spec.observation_dim))
    policy_params = policy.init(policy_key, observation)
    critic_params = critic.init(critic_key, observation, jnp.zeros((1, spec.action_dim)))
    log_alpha = jnp.zeros((), jnp.float32)  # alpha starts at 1 (Scalar(0.0))
    return State(
        policy=policy_params,
        critic=critic_params,
        critic_target=critic_params,
        log_alpha=log_alpha,
        policy_opt=optim.adam(cfg.policy_lr).init(policy_params),
        critic_opt=optim.adam(cfg.qf_lr).init(critic_params),
        alpha_opt=optim.adam(cfg.policy_lr).init(log_alpha),
        step=jnp.zeros((), jnp.int32),
        action_dim=spec.action_dim,
        max_action=float(max(spec.action_high)),
    )


def sample_actions(
    policy_params: dict,
    observations: jax.Array,
    key: jax.Array,
    cfg: Config,
    action_dim: int,
    max_action: float,
    num: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Actions ``max_action * tanh(u)``, u ~ N(mean(s), std(s)), and their log-densities.

    With ``num``, draws ``num`` actions per state: shapes ``[B, num, A]`` and ``[B, num]``. JaxCQL's
    actions lie in [-1, 1]; scaling by ``max_action`` (1 on MuJoCo) adds -|A| log(max_action) to the
    log-density.
    """
    policy, _ = networks(cfg, action_dim)
    mean, log_std = policy.apply(policy_params, observations)
    if num is not None:
        shape = mean.shape[:-1] + (num, action_dim)
        mean = jnp.broadcast_to(mean[..., None, :], shape)
        log_std = jnp.broadcast_to(log_std[..., None, :], shape)
    actions, log_probs = sample_tanh_gaussian(key, mean, log_std)
    return max_action * actions, log_probs - action_dim * math.log(max_action)


@flax.struct.dataclass
class CQLSamples:
    """The actions the critic loss scores, drawn from the current policy without gradient."""

    next_actions: jax.Array  # [B, A], a' ~ pi(s') for the TD target; [B, n, A] with the max-target backup
    next_log_pis: jax.Array  # [B]; [B, n] with the max-target backup
    random_actions: jax.Array  # [B, n, A], uniform over the action box
    current_actions: jax.Array  # [B, n, A], ~ pi(s)
    current_log_pis: jax.Array  # [B, n]
    next_state_actions: jax.Array  # [B, n, A], ~ pi(s'), scored at s as in CQL
    next_state_log_pis: jax.Array  # [B, n]


def draw_samples(state: State, batch: Batch, key: jax.Array, cfg: Config) -> CQLSamples:
    random_key, current_key, next_key = jax.random.split(key, 3)
    n, batch_size = cfg.cql_n_actions, batch.actions.shape[0]
    current, current_log_pis = sample_actions(
        state.policy, batch.observations, current_key, cfg, state.action_dim, state.max_action, n
    )
    # The target's a' (n of them for the max-target backup) and the n conservative actions at s' are
    # independent draws from pi(s'), taken from one forward pass (JaxCQL makes two passes of the same
    # network).
    target_draws = n if cfg.cql_max_target_backup else 1
    after, after_log_pis = sample_actions(
        state.policy,
        batch.next_observations,
        next_key,
        cfg,
        state.action_dim,
        state.max_action,
        n + target_draws,
    )
    if cfg.cql_max_target_backup:
        next_actions, next_log_pis = after[:, :n], after_log_pis[:, :n]
    else:
        next_actions, next_log_pis = after[:, 0], after_log_pis[:, 0]
    return CQLSamples(
        next_actions=next_actions,
        next_log_pis=next_log_pis,
        random_actions=jax.random.uniform(
            random_key, (batch_size, n, state.action_dim), minval=-state.max_action, maxval=state.max_action
        ),
        current_actions=current,
        current_log_pis=current_log_pis,
        next_state_actions=after[:, target_draws:],
        next_state_log_pis=after_log_pis[:, target_draws:],
    )


def conservative_term(
    q: jax.Array, samples: CQLSamples, action_dim: int, max_action: float, cfg: Config
) -> jax.Array:
    """Per critic, ``mean_s[temp * logsumexp_k(Q(s, a_k) / temp) - Q(s, a_data)]``: shape [2].

    ``q`` is ``[2, B, 1 + 3n]``: the dataset action, then the random, current-policy and next-state
    policy actions. With importance sampling each sampled Q is divided by its proposal density (minus
    the log-density), the dataset action is left out, and the uniform density is (2 max_action)^-|A|;
    without it, the 3n + 1 raw values enter the logsumexp.
    """
    n = cfg.cql_n_actions
    q_data, q_random, q_current, q_next = jnp.split(q, [1, 1 + n, 1 + 2 * n], axis=-1)
    if cfg.cql_importance_sample:
        log_uniform = -action_dim * math.log(2.0 * max_action)
        candidates = jnp.concatenate(
            [
                q_random - log_uniform,
                q_current - samples.current_log_pis,
                q_next - samples.next_state_log_pis,
            ],
            axis=-1,
        )
    else:
        candidates = q
    soft_max = cfg.cql_temp * jax.scipy.special.logsumexp(candidates / cfg.cql_temp, axis=-1)
    return (soft_max - q_data[..., 0]).mean(axis=-1)


def backup(state: State, batch: Batch, samples: CQLSamples, cfg: Config) -> tuple[jax.Array, jax.Array]:
    """``min(Q1', Q2')(s', a')`` of the target critics and ``log pi(a'|s')``, each [B].

    With the max-target backup, a' is the draw whose value is largest (JaxCQL's argmax over the
    ``cql_n_actions`` draws, the log-density taken at the same index).
    """
    _, critic = networks(cfg, state.action_dim)
    if not cfg.cql_max_target_backup:
        target_q = critic.apply(state.critic_target, batch.next_observations, samples.next_actions)
        return target_q.min(axis=0), samples.next_log_pis
    observations = jnp.broadcast_to(
        batch.next_observations[:, None], samples.next_actions.shape[:2] + batch.next_observations.shape[1:]
    )
    target_q = critic.apply(state.critic_target, observations, samples.next_actions).min(axis=0)  # [B, n]
    best = jnp.argmax(target_q, axis=-1)[:, None]
    return (
        jnp.take_along_axis(target_q, best, axis=-1)[:, 0],
        jnp.take_along_axis(samples.next_log_pis, best, axis=-1)[:, 0],
    )


def critic_loss(critic_params: dict, state: State, batch: Batch, samples: CQLSamples, cfg: Config):
    _, critic = networks(cfg, state.action_dim)
    target_q, next_log_pis = backup(state, batch, samples, cfg)
    if cfg.backup_entropy:
        target_q = target_q - jnp.exp(state.log_alpha) * next_log_pis
    target = jax.lax.stop_gradient(batch.rewards + cfg.discount * batch.masks * target_q)

    actions = jnp.concatenate(
        [batch.actions[:, None], samples.random_actions, samples.current_actions, samples.next_state_actions],
        axis=1,
    )
    observations = jnp.broadcast_to(
        batch.observations[:, None], actions.shape[:2] + batch.observations.shape[1:]
    )
    q = critic.apply(critic_params, observations, actions)  # [2, B, 1 + 3n]
    td_loss = ((q[..., 0] - target) ** 2).mean(axis=-1)  # [2]: qf1_loss, qf2_loss before CQL
    conservative = conservative_term(q, samples, state.action_dim, state.max_action, cfg)
    loss = (td_loss + cfg.cql_min_q_weight * conservative).sum()
    return loss, {
        "critic_loss": loss,
        "td_loss": td_loss.mean(),
        "cql_term": conservative.mean(),
        "q_mean": q[..., 0].mean(),
        "target_q_mean": target_q.mean(),
    }


def policy_loss(policy_params: dict, state: State, batch: Batch, key: jax.Array, cfg: Config):
    _, critic = networks(cfg, state.action_dim)
    actions, log_pi = sample_actions(
        policy_params, batch.observations, key, cfg, state.action_dim, state.max_action
    )
    q = critic.apply(state.critic, batch.observations, actions).min(axis=0)
    loss = (jnp.exp(state.log_alpha) * log_pi - q).mean()
    return loss, log_pi


def alpha_loss(log_alpha: jax.Array, log_pi: jax.Array, action_dim: int) -> jax.Array:
    """Automatic entropy tuning with JaxCQL's target entropy -|A| (set in conservative_sac_main)."""
    return -log_alpha * (jax.lax.stop_gradient(log_pi) - action_dim).mean()


def update(state: State, batch: Batch, key: jax.Array, cfg: Config) -> tuple[State, dict]:
    bound = cfg.clip_action * state.max_action
    batch = batch.replace(actions=jnp.clip(batch.actions, -bound, bound))
    policy_key, samples_key = jax.random.split(key)

    (actor_loss, log_pi), policy_grads = jax.value_and_grad(policy_loss, has_aux=True)(
        state.policy, state, batch, policy_key, cfg
    )
    temperature_loss, alpha_grad = jax.value_and_grad(alpha_loss)(state.log_alpha, log_pi, state.action_dim)
    samples = draw_samples(state, batch, samples_key, cfg)
    critic_grads, critic_info = jax.grad(critic_loss, has_aux=True)(state.critic, state, batch, samples, cfg)
    alpha = jnp.exp(state.log_alpha)  # the value every loss above used

    policy_params, policy_opt = optim.step(
        optim.adam(cfg.policy_lr), state.policy, policy_grads, state.policy_opt
    )
    log_alpha, alpha_opt = optim.step(optim.adam(cfg.policy_lr), state.log_alpha, alpha_grad, state.alpha_opt)
    critic_params, critic_opt = optim.step(
        optim.adam(cfg.qf_lr), state.critic, critic_grads, state.critic_opt
    )
    state = state.replace(
        policy=policy_params,
        policy_opt=policy_opt,
        log_alpha=log_alpha,
        alpha_opt=alpha_opt,
        critic=critic_params,
        critic_opt=critic_opt,
        critic_target=polyak(state.critic_target, critic_params, cfg.tau),
        step=state.step + 1,
    )
    return state, {
        **critic_info,
        "policy_loss": actor_loss,
        "alpha_loss": temperature_loss,
        "alpha": alpha,
        "log_pi": log_pi.mean(),
    }


def act(state: State, observations: jax.Array, cfg: Config) -> jax.Array:
    """The deterministic action ``max_action * tanh(mean)`` (JaxCQL evaluates with deterministic=True)."""
    policy, _ = networks(cfg, state.action_dim)
    mean, _ = policy.apply(state.policy, observations)
    return state.max_action * jnp.tanh(mean)


ALGORITHM = Algorithm(
    name="cql", Config=Config, init=init, update=update, act=act, dataset_overrides=DATASET_OVERRIDES
)
