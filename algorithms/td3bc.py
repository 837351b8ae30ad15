"""TD3+BC (Fujimoto & Gu, 2021): TD3 whose actor loss adds a behaviour-cloning term.

Follows the official code (sfujim/TD3_BC): twin critics, target-policy smoothing, delayed actor and
target updates, lambda = alpha / mean|Q1(s, pi(s))| with the normaliser detached, BC as MSE to the
dataset action, states standardised with the dataset statistics.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import optax

from offbench.algorithms.config import BaseConfig
from offbench.algorithms.nets import CriticEnsemble, DeterministicActor, polyak
from offbench.algorithms.sampling import Batch
from offbench.datasets.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    hidden_dims: tuple[int, ...] = (256, 256)
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha: float = 2.5
    policy_noise: float = 0.2
    noise_clip: float = 0.5
    policy_freq: int = 2
    tau: float = 0.005


@flax.struct.dataclass
class State:
    actor: dict
    actor_target: dict
    critic: dict
    critic_target: dict
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    step: jax.Array
    action_dim: int = flax.struct.field(pytree_node=False)
    max_action: float = flax.struct.field(pytree_node=False)


def networks(cfg: Config, action_dim: int, max_action: float) -> tuple[DeterministicActor, CriticEnsemble]:
    return DeterministicActor(cfg.hidden_dims, action_dim, max_action), CriticEnsemble(cfg.hidden_dims)


def init(key: jax.Array, dataset: Dataset, cfg: Config) -> State:
    spec = dataset.spec
    max_action = float(max(spec.action_high))
    actor, critic = networks(cfg, spec.action_dim, max_action)
    actor_key, critic_key = jax.random.split(key)
    observation = jnp.zeros((1, spec.observation_dim))
    actor_params = actor.init(actor_key, observation)
    critic_params = critic.init(critic_key, observation, jnp.zeros((1, spec.action_dim)))
    return State(
        actor=actor_params,
        actor_target=actor_params,
        critic=critic_params,
        critic_target=critic_params,
        actor_opt=optax.adam(cfg.actor_lr).init(actor_params),
        critic_opt=optax.adam(cfg.critic_lr).init(critic_params),
        step=jnp.zeros((), jnp.int32),
        action_dim=spec.action_dim,
        max_action=max_action,
    )


def critic_loss(critic_params: dict, state: State, batch: Batch, key: jax.Array, cfg: Config):
    actor, critic = networks(cfg, state.action_dim, state.max_action)
    noise = jnp.clip(
        cfg.policy_noise * state.max_action * jax.random.normal(key, batch.actions.shape),
        -cfg.noise_clip * state.max_action,
        cfg.noise_clip * state.max_action,
    )
    next_actions = jnp.clip(
        actor.apply(state.actor_target, batch.next_observations) + noise, -state.max_action, state.max_action
    )
    target_q = critic.apply(state.critic_target, batch.next_observations, next_actions).min(axis=0)
    target = jax.lax.stop_gradient(batch.rewards + cfg.discount * batch.masks * target_q)
    q = critic.apply(critic_params, batch.observations, batch.actions)
    # Sum over the two critics of each one's MSE, as F.mse_loss(Q1) + F.mse_loss(Q2).
    loss = ((q - target) ** 2).mean(axis=1).sum()
    return loss, {"critic_loss": loss, "q_mean": q.mean()}


def actor_loss(actor_params: dict, state: State, batch: Batch, cfg: Config):
    actor, critic = networks(cfg, state.action_dim, state.max_action)
    pi = actor.apply(actor_params, batch.observations)
    q1 = critic.apply(state.critic, batch.observations, pi)[0]
    lmbda = jax.lax.stop_gradient(cfg.alpha / jnp.abs(q1).mean())
    bc_loss = ((pi - batch.actions) ** 2).mean()
    loss = -lmbda * q1.mean() + bc_loss
    return loss, {"actor_loss": loss, "bc_loss": bc_loss}


def update(state: State, batch: Batch, key: jax.Array, cfg: Config) -> tuple[State, dict]:
    grads, critic_info = jax.grad(critic_loss, has_aux=True)(state.critic, state, batch, key, cfg)
    updates, critic_opt = optax.adam(cfg.critic_lr).update(grads, state.critic_opt)
    state = state.replace(
        critic=optax.apply_updates(state.critic, updates), critic_opt=critic_opt, step=state.step + 1
    )

    def actor_step(state: State) -> tuple[State, dict]:
        grads, info = jax.grad(actor_loss, has_aux=True)(state.actor, state, batch, cfg)
        updates, actor_opt = optax.adam(cfg.actor_lr).update(grads, state.actor_opt)
        actor_params = optax.apply_updates(state.actor, updates)
        return state.replace(
            actor=actor_params,
            actor_opt=actor_opt,
            actor_target=polyak(state.actor_target, actor_params, cfg.tau),
            critic_target=polyak(state.critic_target, state.critic, cfg.tau),
        ), info

    def skip(state: State) -> tuple[State, dict]:
        return state, {"actor_loss": jnp.nan, "bc_loss": jnp.nan}

    # The engine keeps ``step`` unbatched across vmapped seeds, so this stays a real branch
    # (the actor is not computed and discarded on critic-only steps).
    state, actor_info = jax.lax.cond(state.step % cfg.policy_freq == 0, actor_step, skip, state)
    return state, {**critic_info, **actor_info}


def act(state: State, observations: jax.Array, cfg: Config) -> jax.Array:
    actor, _ = networks(cfg, state.action_dim, state.max_action)
    return actor.apply(state.actor, observations)
