"""TD3's machinery (Fujimoto et al., 2018) shared by TD3+BC and its forks, A2PR and PRDC.

Only what the three official codes do identically lives here: the hyper-parameters, the state of an
actor with twin critics and their targets, the clipped double-Q target with target-policy smoothing,
the critic step, TD3+BC's lambda-normalised Q objective, and the delayed actor step with Polyak
targets. Each algorithm's file keeps its networks, its BC term and the order of its steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from offbench.algorithms import optim
from offbench.algorithms.config import BaseConfig, bounded
from offbench.algorithms.nets import polyak
from offbench.algorithms.sampling import Batch
from offbench.datasets.dataset import DatasetSpec


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    actor_lr: float = bounded(3e-4, gt=0.0)
    critic_lr: float = bounded(3e-4, gt=0.0)
    alpha: float = bounded(2.5, ge=0.0)  # TD3+BC's lambda = alpha / mean|Q1(s, pi(s))|; 0 is pure BC
    policy_noise: float = bounded(0.2, ge=0.0)  # target-policy smoothing, times max_action
    noise_clip: float = bounded(0.5, ge=0.0)  # times max_action
    policy_freq: int = bounded(2, ge=1)  # critic steps per actor (and target) step
    tau: float = bounded(0.005, gt=0.0, le=1.0)


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


AnyState = TypeVar("AnyState", bound=State)


def init(
    key: jax.Array, actor: nn.Module, critic: nn.Module, spec: DatasetSpec, max_action: float, cfg: Config
) -> State:
    """Fresh actor and critic parameters; the targets start as copies."""
    actor_key, critic_key = jax.random.split(key)
    observation = jnp.zeros((1, spec.observation_dim))
    actor_params = actor.init(actor_key, observation)
    critic_params = critic.init(critic_key, observation, jnp.zeros((1, spec.action_dim)))
    return State(
        actor=actor_params,
        actor_target=actor_params,
        critic=critic_params,
        critic_target=critic_params,
        actor_opt=optim.adam(cfg.actor_lr).init(actor_params),
        critic_opt=optim.adam(cfg.critic_lr).init(critic_params),
        step=jnp.zeros((), jnp.int32),
        action_dim=spec.action_dim,
        max_action=max_action,
    )


def td_target(
    actor: nn.Module, critic: nn.Module, state: State, batch: Batch, key: jax.Array, cfg: Config
) -> tuple[jax.Array, jax.Array]:
    """(y, a'): the smoothed target action a' and y = r + gamma * mask * min_i target-Q_i(s', a')."""
    noise = jnp.clip(
        cfg.policy_noise * state.max_action * jax.random.normal(key, batch.actions.shape),
        -cfg.noise_clip * state.max_action,
        cfg.noise_clip * state.max_action,
    )
    next_actions = jnp.clip(
        actor.apply(state.actor_target, batch.next_observations) + noise, -state.max_action, state.max_action
    )
    target_q = critic.apply(state.critic_target, batch.next_observations, next_actions).min(axis=0)
    return jax.lax.stop_gradient(batch.rewards + cfg.discount * batch.masks * target_q), next_actions


def critic_loss(
    critic_params: dict, critic: nn.Module, batch: Batch, target: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    q = critic.apply(critic_params, batch.observations, batch.actions)
    # Sum over the two critics of each one's MSE, as F.mse_loss(Q1) + F.mse_loss(Q2).
    loss = ((q - target) ** 2).mean(axis=1).sum()
    return loss, {"critic_loss": loss, "q_mean": q.mean()}


def critic_step(
    state: AnyState, critic: nn.Module, batch: Batch, target: jax.Array, cfg: Config
) -> tuple[AnyState, dict[str, jax.Array]]:
    """One Adam step of the critics toward ``target``; counts the update (``step`` + 1)."""
    grads, info = jax.grad(critic_loss, has_aux=True)(state.critic, critic, batch, target)
    critic_params, critic_opt = optim.step(optim.adam(cfg.critic_lr), state.critic, grads, state.critic_opt)
    return state.replace(critic=critic_params, critic_opt=critic_opt, step=state.step + 1), info


def q_objective(q1: jax.Array, alpha: float) -> jax.Array:
    """-lambda * mean Q1(s, pi(s)), lambda = alpha / mean|Q1(s, pi(s))| with the normaliser detached."""
    lmbda = jax.lax.stop_gradient(alpha / jnp.abs(q1).mean())
    return -lmbda * q1.mean()


ActorLoss = Callable[[dict, AnyState], tuple[jax.Array, dict[str, jax.Array]]]


def delayed_actor_step(
    state: AnyState, actor_loss: ActorLoss, cfg: Config
) -> tuple[AnyState, dict[str, jax.Array]]:
    """Every ``policy_freq`` updates: one Adam step on ``actor_loss(actor_params, state)``, then Polyak
    averaging of the actor and critic targets. Other updates change nothing and report NaN metrics.
    """

    def actor_step(state: AnyState) -> tuple[AnyState, dict[str, jax.Array]]:
        grads, info = jax.grad(actor_loss, has_aux=True)(state.actor, state)
        actor_params, actor_opt = optim.step(optim.adam(cfg.actor_lr), state.actor, grads, state.actor_opt)
        return state.replace(
            actor=actor_params,
            actor_opt=actor_opt,
            actor_target=polyak(state.actor_target, actor_params, cfg.tau),
            critic_target=polyak(state.critic_target, state.critic, cfg.tau),
        ), info

    def skip(state: AnyState) -> tuple[AnyState, dict[str, jax.Array]]:
        _, info = jax.eval_shape(actor_loss, state.actor, state)
        return state, jax.tree.map(lambda metric: jnp.full(metric.shape, jnp.nan, metric.dtype), info)

    # The engine keeps ``step`` unbatched across vmapped seeds, so this stays a real branch (the actor
    # loss is not computed and discarded on critic-only steps).
    return jax.lax.cond(state.step % cfg.policy_freq == 0, actor_step, skip, state)
