"""Soft Actor-Critic (Haarnoja et al., 2018, "SAC: Algorithms and Applications") for behaviour policies.

Online SAC with clipped double-Q, Polyak-averaged target critics and automatic entropy tuning towards
a target entropy of -|A|. Everything is a pure function over pytrees so the training driver can jit
and ``lax.scan`` many updates at once: ``Config`` -> ``init`` -> ``update`` -> ``act``.

Losses follow the common reference implementations (CleanRL ``sac_continuous_action.py``, jaxrl):

- critic:      sum_i mean_b (Q_i(s, a) - y)^2, with the target
               y = r + gamma (1 - terminal) (min_j Qbar_j(s', a') - alpha log pi(a'|s')), a' ~ pi(.|s'),
               using the current actor and alpha and the target critics Qbar;
- actor:       mean_b (alpha log pi(a~|s) - min_i Q_i(s, a~)),  a~ ~ pi(.|s) reparameterised;
- temperature: mean_b (-alpha (log pi(a~|s) + target_entropy)), reusing the actor step's samples.

Actions live in [-1, 1]: every environment offbench trains on has that action box.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from offbench.algorithms.nets import CriticEnsemble, TanhGaussianActor, polyak, sample_tanh_gaussian

Batch = dict[str, jax.Array]
Params = dict


@dataclasses.dataclass(frozen=True)
class Config:
    hidden_dims: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    temperature_lr: float = 3e-4
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 0.005
    num_critics: int = 2
    init_temperature: float = 1.0
    # None means -|A|, the value in the SAC paper's automatic tuning.
    target_entropy: float | None = None
    # Uniform-random actions before the first update, to seed the replay buffer.
    learning_starts: int = 5000
    # Gradient updates per environment step (the SAC paper uses 1).
    updates_per_step: int = 1
    buffer_size: int = 1_000_000


class State(NamedTuple):
    actor_params: Params
    critic_params: Params
    target_critic_params: Params
    log_alpha: jax.Array
    actor_opt_state: optax.OptState
    critic_opt_state: optax.OptState
    temperature_opt_state: optax.OptState
    step: jax.Array


def actor_network(cfg: Config, act_dim: int) -> TanhGaussianActor:
    return TanhGaussianActor(cfg.hidden_dims, act_dim)


def critic_network(cfg: Config) -> CriticEnsemble:
    return CriticEnsemble(cfg.hidden_dims, cfg.num_critics)


def _optimisers(cfg: Config) -> tuple[optax.GradientTransformation, ...]:
    return optax.adam(cfg.actor_lr), optax.adam(cfg.critic_lr), optax.adam(cfg.temperature_lr)


def target_entropy(cfg: Config, act_dim: int) -> float:
    return -float(act_dim) if cfg.target_entropy is None else cfg.target_entropy


# Jitted because flax/optax initialisation run eagerly dispatches, and compiles, hundreds of tiny ops.
@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def init(key: jax.Array, obs_dim: int, act_dim: int, cfg: Config) -> State:
    actor_key, critic_key = jax.random.split(key)
    obs, act = jnp.zeros((1, obs_dim)), jnp.zeros((1, act_dim))
    # The nets modules have a dataclass field called ``init`` (the initialisation scheme) that shadows
    # ``Module.init``, so the unbound method is called explicitly.
    actor_params = nn.Module.init(actor_network(cfg, act_dim), actor_key, obs)
    critic_params = nn.Module.init(critic_network(cfg), critic_key, obs, act)
    log_alpha = jnp.asarray(jnp.log(cfg.init_temperature), jnp.float32)
    actor_opt, critic_opt, temperature_opt = _optimisers(cfg)
    return State(
        actor_params=actor_params,
        critic_params=critic_params,
        target_critic_params=critic_params,
        log_alpha=log_alpha,
        actor_opt_state=actor_opt.init(actor_params),
        critic_opt_state=critic_opt.init(critic_params),
        temperature_opt_state=temperature_opt.init(log_alpha),
        step=jnp.zeros((), jnp.int32),
    )


def _sample(
    actor_params: Params, observations: jax.Array, key: jax.Array, cfg: Config, act_dim: int
) -> tuple[jax.Array, jax.Array]:
    mean, log_std = actor_network(cfg, act_dim).apply(actor_params, observations)
    return sample_tanh_gaussian(key, mean, log_std)


def critic_target(state: State, batch: Batch, key: jax.Array, cfg: Config) -> jax.Array:
    """y = r + gamma (1 - terminal) (min_j Qbar_j(s', a') - alpha log pi(a'|s')), a' ~ pi(.|s')."""
    act_dim = batch["actions"].shape[-1]
    next_actions, next_log_prob = _sample(state.actor_params, batch["next_observations"], key, cfg, act_dim)
    next_q = critic_network(cfg).apply(state.target_critic_params, batch["next_observations"], next_actions)
    soft_value = next_q.min(axis=0) - jnp.exp(state.log_alpha) * next_log_prob
    # Only true terminations stop bootstrapping; time-limit truncations are not in ``terminals``.
    return batch["rewards"] + cfg.discount * (1.0 - batch["terminals"]) * soft_value


def critic_loss(
    critic_params: Params, batch: Batch, target: jax.Array, cfg: Config
) -> tuple[jax.Array, jax.Array]:
    """Sum over ensemble members of the mean squared TD error; also returns Q(s, a)."""
    q = critic_network(cfg).apply(critic_params, batch["observations"], batch["actions"])
    return ((q - target) ** 2).mean(axis=1).sum(), q


def actor_loss(
    actor_params: Params,
    critic_params: Params,
    log_alpha: jax.Array,
    batch: Batch,
    key: jax.Array,
    cfg: Config,
) -> tuple[jax.Array, jax.Array]:
    """mean(alpha log pi(a~|s) - min_i Q_i(s, a~)); also returns log pi(a~|s) for the temperature step."""
    act_dim = batch["actions"].shape[-1]
    actions, log_prob = _sample(actor_params, batch["observations"], key, cfg, act_dim)
    q = critic_network(cfg).apply(critic_params, batch["observations"], actions).min(axis=0)
    return (jnp.exp(log_alpha) * log_prob - q).mean(), log_prob


def temperature_loss(log_alpha: jax.Array, log_prob: jax.Array, entropy_target: float) -> jax.Array:
    """mean(-alpha (log pi + target_entropy)): alpha grows while the entropy is below its target."""
    return -(jnp.exp(log_alpha) * (log_prob + entropy_target)).mean()


def update(state: State, batch: Batch, key: jax.Array, cfg: Config) -> tuple[State, dict[str, jax.Array]]:
    """One SAC step: critic, then actor (against the updated critic), then temperature, then targets."""
    target_key, actor_key = jax.random.split(key)
    actor_opt, critic_opt, temperature_opt = _optimisers(cfg)
    entropy_target = target_entropy(cfg, batch["actions"].shape[-1])

    target = jax.lax.stop_gradient(critic_target(state, batch, target_key, cfg))
    (c_loss, q), c_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        state.critic_params, batch, target, cfg
    )
    c_updates, critic_opt_state = critic_opt.update(c_grads, state.critic_opt_state)
    critic_params = optax.apply_updates(state.critic_params, c_updates)

    (a_loss, log_prob), a_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        state.actor_params, critic_params, state.log_alpha, batch, actor_key, cfg
    )
    a_updates, actor_opt_state = actor_opt.update(a_grads, state.actor_opt_state)
    actor_params = optax.apply_updates(state.actor_params, a_updates)

    log_prob = jax.lax.stop_gradient(log_prob)
    t_loss, t_grad = jax.value_and_grad(temperature_loss)(state.log_alpha, log_prob, entropy_target)
    t_updates, temperature_opt_state = temperature_opt.update(t_grad, state.temperature_opt_state)
    log_alpha = optax.apply_updates(state.log_alpha, t_updates)

    new_state = State(
        actor_params=actor_params,
        critic_params=critic_params,
        target_critic_params=polyak(state.target_critic_params, critic_params, cfg.tau),
        log_alpha=log_alpha,
        actor_opt_state=actor_opt_state,
        critic_opt_state=critic_opt_state,
        temperature_opt_state=temperature_opt_state,
        step=state.step + 1,
    )
    metrics = {
        "critic_loss": c_loss,
        "actor_loss": a_loss,
        "temperature_loss": t_loss,
        "alpha": jnp.exp(log_alpha),
        "entropy": -log_prob.mean(),
        "q": q.mean(),
    }
    return new_state, metrics


def actor_from_params(actor_params: Params) -> TanhGaussianActor:
    """Rebuild the actor module from its parameters' shapes, so a saved actor needs no Config to run."""
    layers = actor_params["params"]["MLP_0"]
    widths = [layers[f"Dense_{i}"]["bias"].shape[0] for i in range(len(layers))]
    return TanhGaussianActor(tuple(widths[:-1]), widths[-1] // 2)


def act(params: Params, obs: jax.Array, key: jax.Array | None, deterministic: bool) -> jax.Array:
    """Actions in [-1, 1] for a batch of observations: tanh(mean) or a tanh-Gaussian sample.

    ``params`` are the actor's parameters; ``key`` may be None only when ``deterministic``.
    """
    mean, log_std = actor_from_params(params).apply(params, obs)
    if deterministic:
        return jnp.tanh(mean)
    if key is None:
        raise ValueError("act(..., deterministic=False) samples actions and needs a JAX key.")
    return sample_tanh_gaussian(key, mean, log_std)[0]
