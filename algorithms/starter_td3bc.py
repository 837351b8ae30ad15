"""A new offline-RL algorithm, started from TD3+BC (Fujimoto & Gu, 2021): edit it into yours.

``offbench algorithms new NAME --from td3bc`` copies this file under a new name. It is the built-in
TD3+BC, self-contained and written against offbench's public contract only (``offbench.algorithms``), so
it trains exactly as ``--algorithm td3bc`` does until you change it. Check it after each edit with
``offbench algorithms check NAME.py``; run it with ``offbench run --algorithm NAME.py --dataset ...`` or
from a suite file (``[[algorithms]] name = "NAME.py"``). The contract, in the order this file follows:

1. ``Config``: a frozen dataclass subclassing ``BaseConfig`` (batch size, discount, sampler, ...). Every
   numeric field declares its range with ``bounded``; suites and ``-p name=value`` override fields.
2. ``init(key, dataset, cfg) -> state``: the state is a pytree (a ``flax.struct.dataclass``) holding
   parameters, target parameters, optimiser states and ``step``, an int32 scalar. Only ``dataset.spec``
   may be read in ``init`` (shapes and action bounds); static fields are declared ``pytree_node=False``.
3. ``update(state, batch, key, cfg) -> (state, metrics)``: one gradient step, a pure function. It must
   keep every leaf's shape and dtype (the engine compiles one ``lax.scan`` chunk), add 1 to ``step``, and
   return metrics as a dict of float scalars. ``step`` is shared by every seed of a job (the engine
   vmaps the rest), so ``lax.cond`` on it is a real branch: TD3's delayed actor below.
4. ``act(state, observations, cfg) -> actions``: deterministic evaluation actions, [B, act], inside the
   dataset's action bounds. Declare ``act_needs_key=True`` to receive a key as a last argument.
5. ``ALGORITHM = Algorithm(...)``: the declaration. Optional fields: ``dataset_overrides`` (published
   per-dataset settings), ``shared_arrays`` (dataset-wide arrays the update reads, computed once per job),
   ``batch_horizon`` (H-step action-chunk batches instead of transitions).

Observations arrive standardised when ``cfg.normalize_observations`` (the default), at training and at
evaluation alike.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import optax

from offbench.algorithms import (
    Algorithm,
    BaseConfig,
    Batch,
    CriticEnsemble,
    Dataset,
    DeterministicActor,
    adam,
    bounded,
    first_critic,
    optimizer_step,
    polyak,
)

NAME = "td3bc-starter"  # the algorithm's name in results and suites; `offbench algorithms new` sets it


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    hidden_dims: tuple[int, ...] = bounded((256, 256), ge=1)
    actor_lr: float = bounded(3e-4, gt=0.0)
    critic_lr: float = bounded(3e-4, gt=0.0)
    alpha: float = bounded(2.5, ge=0.0)  # lambda = alpha / mean|Q1(s, pi(s))|; 0 is pure BC
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
        actor_opt=adam(cfg.actor_lr).init(actor_params),
        critic_opt=adam(cfg.critic_lr).init(critic_params),
        step=jnp.zeros((), jnp.int32),
        action_dim=spec.action_dim,
        max_action=max_action,
    )


def td_target(state: State, batch: Batch, key: jax.Array, cfg: Config) -> jax.Array:
    """y = r + gamma * mask * min_i target-Q_i(s', a'), a' the smoothed target action."""
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
    return jax.lax.stop_gradient(batch.rewards + cfg.discount * batch.masks * target_q)


def critic_loss(critic_params: dict, state: State, batch: Batch, target: jax.Array, cfg: Config):
    _, critic = networks(cfg, state.action_dim, state.max_action)
    q = critic.apply(critic_params, batch.observations, batch.actions)
    loss = ((q - target) ** 2).mean(axis=1).sum()  # each critic's MSE, summed
    return loss, {"critic_loss": loss, "q_mean": q.mean()}


def actor_loss(actor_params: dict, state: State, batch: Batch, cfg: Config):
    actor, critic = networks(cfg, state.action_dim, state.max_action)
    pi = actor.apply(actor_params, batch.observations)
    q1 = first_critic(critic, state.critic, batch.observations, pi)
    bc_loss = ((pi - batch.actions) ** 2).mean()
    lmbda = jax.lax.stop_gradient(cfg.alpha / jnp.abs(q1).mean())
    loss = -lmbda * q1.mean() + bc_loss
    return loss, {"actor_loss": loss, "bc_loss": bc_loss}


def update(state: State, batch: Batch, key: jax.Array, cfg: Config) -> tuple[State, dict]:
    target = td_target(state, batch, key, cfg)
    grads, critic_info = jax.grad(critic_loss, has_aux=True)(state.critic, state, batch, target, cfg)
    critic_params, critic_opt = optimizer_step(adam(cfg.critic_lr), state.critic, grads, state.critic_opt)
    state = state.replace(critic=critic_params, critic_opt=critic_opt, step=state.step + 1)

    def actor_step(state: State) -> tuple[State, dict]:
        grads, info = jax.grad(actor_loss, has_aux=True)(state.actor, state, batch, cfg)
        actor_params, actor_opt = optimizer_step(adam(cfg.actor_lr), state.actor, grads, state.actor_opt)
        return state.replace(
            actor=actor_params,
            actor_opt=actor_opt,
            actor_target=polyak(state.actor_target, actor_params, cfg.tau),
            critic_target=polyak(state.critic_target, state.critic, cfg.tau),
        ), info

    def skip(state: State) -> tuple[State, dict]:  # same metrics, NaN: the engine averages NaN-aware
        _, info = jax.eval_shape(lambda: actor_loss(state.actor, state, batch, cfg))
        return state, jax.tree.map(lambda metric: jnp.full(metric.shape, jnp.nan, metric.dtype), info)

    state, actor_info = jax.lax.cond(state.step % cfg.policy_freq == 0, actor_step, skip, state)
    return state, {**critic_info, **actor_info}


def act(state: State, observations: jax.Array, cfg: Config) -> jax.Array:
    actor, _ = networks(cfg, state.action_dim, state.max_action)
    return actor.apply(state.actor, observations)


ALGORITHM = Algorithm(name=NAME, Config=Config, init=init, update=update, act=act)
