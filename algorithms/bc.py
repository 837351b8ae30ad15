"""Behaviour cloning: a deterministic tanh actor regressed onto dataset actions (MSE).

As in CORL's ``any_percent_bc`` with 100% of the data: a 256x256 ReLU actor, Adam 3e-4, batch 256,
standardised states.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import optax

from offbench.algorithms import Algorithm, optim
from offbench.algorithms.config import BaseConfig, bounded
from offbench.algorithms.nets import DeterministicActor
from offbench.algorithms.sampling import Batch
from offbench.datasets.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    hidden_dims: tuple[int, ...] = bounded((256, 256), ge=1)
    actor_lr: float = bounded(3e-4, gt=0.0)


@flax.struct.dataclass
class State:
    actor: dict
    actor_opt: optax.OptState
    step: jax.Array
    action_dim: int = flax.struct.field(pytree_node=False)
    max_action: float = flax.struct.field(pytree_node=False)


def network(cfg: Config, action_dim: int, max_action: float) -> DeterministicActor:
    return DeterministicActor(cfg.hidden_dims, action_dim, max_action)


def init(key: jax.Array, dataset: Dataset, cfg: Config) -> State:
    spec = dataset.spec
    max_action = float(max(spec.action_high))
    params = network(cfg, spec.action_dim, max_action).init(key, jnp.zeros((1, spec.observation_dim)))
    return State(
        actor=params,
        actor_opt=optim.adam(cfg.actor_lr).init(params),
        step=jnp.zeros((), jnp.int32),
        action_dim=spec.action_dim,
        max_action=max_action,
    )


def loss_fn(params: dict, state: State, batch: Batch, cfg: Config):
    actions = network(cfg, state.action_dim, state.max_action).apply(params, batch.observations)
    loss = ((actions - batch.actions) ** 2).mean()
    return loss, {"bc_loss": loss}


def update(state: State, batch: Batch, key: jax.Array, cfg: Config) -> tuple[State, dict]:
    grads, info = jax.grad(loss_fn, has_aux=True)(state.actor, state, batch, cfg)
    actor, actor_opt = optim.step(optim.adam(cfg.actor_lr), state.actor, grads, state.actor_opt)
    return state.replace(actor=actor, actor_opt=actor_opt, step=state.step + 1), info


def act(state: State, observations: jax.Array, cfg: Config) -> jax.Array:
    return network(cfg, state.action_dim, state.max_action).apply(state.actor, observations)


ALGORITHM = Algorithm(name="bc", Config=Config, init=init, update=update, act=act)
