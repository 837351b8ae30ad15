"""TD3+BC (Fujimoto & Gu, 2021): TD3 whose actor loss adds a behaviour-cloning term.

Follows the official code (sfujim/TD3_BC): twin critics, target-policy smoothing, delayed actor and
target updates (``td3.py``), lambda = alpha / mean|Q1(s, pi(s))| with the normaliser detached, BC as
MSE to the dataset action, states standardised with the dataset statistics.
"""

from __future__ import annotations

import dataclasses

import jax

from offbench.algorithms import Algorithm, td3
from offbench.algorithms.config import bounded
from offbench.algorithms.nets import CriticEnsemble, DeterministicActor, first_critic
from offbench.algorithms.sampling import Batch
from offbench.datasets.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class Config(td3.Config):
    hidden_dims: tuple[int, ...] = bounded((256, 256), ge=1)


# No DATASET_OVERRIDES: the official code and the paper (sfujim/TD3_BC) publish one setting (alpha 2.5)
# for the locomotion datasets and nothing for AntMaze, Adroit, Kitchen or the mazes, which run it too.

State = td3.State  # the actor, the twin critics, their targets and Adam states


def networks(cfg: Config, action_dim: int, max_action: float) -> tuple[DeterministicActor, CriticEnsemble]:
    return DeterministicActor(cfg.hidden_dims, action_dim, max_action), CriticEnsemble(cfg.hidden_dims)


def init(key: jax.Array, dataset: Dataset, cfg: Config) -> State:
    spec = dataset.spec
    max_action = float(max(spec.action_high))
    actor, critic = networks(cfg, spec.action_dim, max_action)
    return td3.init(key, actor, critic, spec, max_action, cfg)


def actor_loss(actor_params: dict, state: State, batch: Batch, cfg: Config) -> tuple[jax.Array, dict]:
    actor, critic = networks(cfg, state.action_dim, state.max_action)
    pi = actor.apply(actor_params, batch.observations)
    q1 = first_critic(critic, state.critic, batch.observations, pi)
    bc_loss = ((pi - batch.actions) ** 2).mean()
    loss = td3.q_objective(q1, cfg.alpha) + bc_loss
    return loss, {"actor_loss": loss, "bc_loss": bc_loss}


def update(state: State, batch: Batch, key: jax.Array, cfg: Config) -> tuple[State, dict]:
    actor, critic = networks(cfg, state.action_dim, state.max_action)
    target, _ = td3.td_target(actor, critic, state, batch, key, cfg)
    state, critic_info = td3.critic_step(state, critic, batch, target, cfg)
    state, actor_info = td3.delayed_actor_step(
        state, lambda actor_params, state: actor_loss(actor_params, state, batch, cfg), cfg
    )
    return state, {**critic_info, **actor_info}


def act(state: State, observations: jax.Array, cfg: Config) -> jax.Array:
    actor, _ = networks(cfg, state.action_dim, state.max_action)
    return actor.apply(state.actor, observations)


ALGORITHM = Algorithm(name="td3bc", Config=Config, init=init, update=update, act=act)
