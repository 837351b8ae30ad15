"""ReBRAC (Tarasov et al., 2023, "Revisiting the Minimalist Approach to Offline Reinforcement Learning"):
an offbench plug-in written against the public contract only (``offbench.algorithms``).

Run it by path, beside the built-ins::

    offbench algorithms check examples/rebrac.py
    offbench run --algorithm examples/rebrac.py --dataset offbench/hopper/medium-v0
    offbench sweep examples/plugins.toml

It follows the official JAX code, tinkoff-ai/ReBRAC ``src/algorithms/rebrac.py`` and ``src/networks.py``
(referred to as "the code" below):

- TD3+BC's machinery with larger, LayerNorm critics: actor and two critics of 3 x 256 ReLU layers, a
  LayerNorm after every hidden activation of the critics only (``actor_ln: false``, ``critic_ln: true``);
  hidden layers start as PyTorch's ``nn.Linear`` kernels with biases of 0.1 and the output layers from
  U(+-1e-3) (actor) and U(+-3e-3) (critic), the EDAC initialisation of the code's ``networks.py``.
- Batch 1024, Adam 1e-3 for both networks, discount 0.99, tau 5e-3, target-policy noise 0.2 clipped at
  0.5, the actor and both targets updated every second update (``policy_freq: 2``).
- Two behaviour-cloning penalties, each a squared distance summed over the action's dimensions: the
  actor's, ``actor_bc_coef * |pi(s) - a|^2``, beside the Q term normalised by ``1 / mean|Q|`` (the code's
  ``normalize_q``), and the critic's, ``critic_bc_coef * |a' - a'_data|^2`` subtracted from the target's
  Q, where a' is the smoothed target action at s' and a'_data the dataset's next action.
- The actor maximises the minimum of the two critics (TD3+BC uses the first critic only), and its step
  uses the critics just updated in the same call, as the code's ``update_td3`` does.
- No state or reward normalisation for the locomotion datasets (``normalize_states: false``,
  ``normalize_reward: false`` in every locomotion config of the code).

Where this differs from the code, and why:

- The code's delayed step is taken when the update's index within its 1,000-update epoch is even; here
  when the job's update counter is even. Both take the actor step on updates 0, 2, 4, ... of a run.
- The code builds its dataset with D4RL's ``qlearning_dataset``, which drops the last transition of every
  time-limited episode; offbench keeps it (it bootstraps from the time-limit's next observation), and
  there the dataset has no next action: ``Batch.next_actions`` repeats the transition's own action, so
  the critic penalty there measures the distance to it. A terminal's next action never matters (no
  bootstrap).
- The code clips the smoothed target action to [-1, 1]; here to the dataset's action bound
  (``max_action``), which is 1 for every locomotion task, so the same thing.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from offbench.algorithms import (
    Algorithm,
    BaseConfig,
    Batch,
    Dataset,
    adam,
    bounded,
    linear,
    optimizer_step,
    polyak,
)


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    # The code's defaults (its Config and every locomotion config file).
    batch_size: int = 1024
    normalize_observations: bool = False
    actor_lr: float = bounded(1e-3, gt=0.0)
    critic_lr: float = bounded(1e-3, gt=0.0)
    hidden_dims: tuple[int, ...] = bounded((256, 256, 256), ge=1)  # hidden_dim 256, n_hiddens 3
    actor_layer_norm: bool = False
    critic_layer_norm: bool = True
    actor_bc_coef: float = bounded(1.0, ge=0.0)  # beta_1 of the paper; per dataset below
    critic_bc_coef: float = bounded(1.0, ge=0.0)  # beta_2 of the paper; per dataset below
    policy_noise: float = bounded(0.2, ge=0.0)  # times max_action
    noise_clip: float = bounded(0.5, ge=0.0)  # times max_action
    policy_freq: int = bounded(2, ge=1)
    tau: float = bounded(0.005, gt=0.0, le=1.0)
    normalize_q: bool = True  # the actor's Q term divided by mean|Q| (detached)


def _coefficients(actor: float, critic: float) -> dict[str, float]:
    return {"actor_bc_coef": actor, "critic_bc_coef": critic}


# (actor_bc_coef, critic_bc_coef) per locomotion dataset, from the code's configs/rebrac/<env>/<env>_<data>
# .yaml files (the same values as the paper's Table 9). Globs are tried in order, so medium-expert,
# medium-replay and full-replay come before medium and expert.
PUBLISHED = {
    "halfcheetah": {
        "random": (0.001, 0.1),
        "medium": (0.001, 0.01),
        "expert": (0.01, 0.01),
        "medium-expert": (0.01, 0.1),
        "medium-replay": (0.01, 0.001),
        "full-replay": (0.001, 0.1),
    },
    "hopper": {
        "random": (0.001, 0.01),
        "medium": (0.01, 0.01),
        "expert": (0.1, 0.1),
        "medium-expert": (0.1, 0.01),
        "medium-replay": (0.05, 0.5),
        "full-replay": (0.01, 0.01),
    },
    "walker2d": {
        "random": (0.01, 0.0),
        "medium": (0.05, 0.1),
        "expert": (0.01, 0.5),
        "medium-expert": (0.01, 0.01),
        "medium-replay": (0.05, 0.01),
        "full-replay": (0.01, 0.01),
    },
}
ORDER = ("medium-expert", "medium-replay", "full-replay", "medium", "expert", "random")
DATASET_OVERRIDES = tuple(
    (f"*{env}*{data}*", _coefficients(*PUBLISHED[env][data])) for env in PUBLISHED for data in ORDER
)


def _uniform(bound: float) -> Callable:
    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Dense(nn.Module):
    """``x @ kernel + bias`` with the given initialisers (flax's ``nn.Dense`` parameters), multiplied
    through offbench's ``linear``, whose backward pass is faster on a CPU."""

    features: int
    kernel_init: Callable
    bias_init: Callable

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features))
        return linear(x, kernel) + self.param("bias", self.bias_init, (self.features,))


class Trunk(nn.Module):
    """Dense -> ReLU (-> LayerNorm) per hidden layer, with the code's initialisation (``networks.py``):
    kernels from PyTorch's U(+-1/sqrt(fan_in)), biases 0.1."""

    hidden_dims: tuple[int, ...]
    layer_norm: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden_dims:
            bound = 1.0 / math.sqrt(x.shape[-1])
            x = nn.relu(Dense(width, _uniform(bound), nn.initializers.constant(0.1))(x))
            if self.layer_norm:
                x = nn.LayerNorm()(x)
        return x


class Actor(nn.Module):
    hidden_dims: tuple[int, ...]
    action_dim: int
    max_action: float
    layer_norm: bool

    @nn.compact
    def __call__(self, observations: jax.Array) -> jax.Array:
        x = Trunk(self.hidden_dims, self.layer_norm)(observations)
        x = Dense(self.action_dim, _uniform(1e-3), _uniform(1e-3))(x)
        return self.max_action * jnp.tanh(x)


class Critic(nn.Module):
    hidden_dims: tuple[int, ...]
    layer_norm: bool

    @nn.compact
    def __call__(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        x = Trunk(self.hidden_dims, self.layer_norm)(jnp.concatenate([observations, actions], axis=-1))
        return Dense(1, _uniform(3e-3), _uniform(3e-3))(x).squeeze(-1)


class TwinCritic(nn.Module):
    """Two independent critics evaluated together: [2, batch]."""

    hidden_dims: tuple[int, ...]
    layer_norm: bool

    @nn.compact
    def __call__(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=2,
        )
        return ensemble(self.hidden_dims, self.layer_norm)(observations, actions)


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


def networks(cfg: Config, action_dim: int, max_action: float) -> tuple[Actor, TwinCritic]:
    actor = Actor(cfg.hidden_dims, action_dim, max_action, cfg.actor_layer_norm)
    return actor, TwinCritic(cfg.hidden_dims, cfg.critic_layer_norm)


def init(key: jax.Array, dataset: Dataset, cfg: Config) -> State:
    spec = dataset.spec
    max_action = float(max(spec.action_high))
    actor, critic = networks(cfg, spec.action_dim, max_action)
    actor_key, critic_key = jax.random.split(key)
    observation, action = jnp.zeros((1, spec.observation_dim)), jnp.zeros((1, spec.action_dim))
    actor_params = actor.init(actor_key, observation)
    critic_params = critic.init(critic_key, observation, action)
    return State(
        actor=actor_params,
        actor_target=actor_params,  # the code initialises the targets with the same keys: copies
        critic=critic_params,
        critic_target=critic_params,
        actor_opt=adam(cfg.actor_lr).init(actor_params),
        critic_opt=adam(cfg.critic_lr).init(critic_params),
        step=jnp.zeros((), jnp.int32),
        action_dim=spec.action_dim,
        max_action=max_action,
    )


def critic_target(state: State, batch: Batch, key: jax.Array, cfg: Config) -> jax.Array:
    """r + gamma * mask * (min_i target-Q_i(s', a') - critic_bc_coef * |a' - a'_data|^2)."""
    actor, critic = networks(cfg, state.action_dim, state.max_action)
    next_actions = actor.apply(state.actor_target, batch.next_observations)
    noise = jnp.clip(
        cfg.policy_noise * state.max_action * jax.random.normal(key, next_actions.shape),
        -cfg.noise_clip * state.max_action,
        cfg.noise_clip * state.max_action,
    )
    next_actions = jnp.clip(next_actions + noise, -state.max_action, state.max_action)
    bc_penalty = ((next_actions - batch.next_actions) ** 2).sum(-1)
    next_q = critic.apply(state.critic_target, batch.next_observations, next_actions).min(axis=0)
    next_q = next_q - cfg.critic_bc_coef * bc_penalty
    return jax.lax.stop_gradient(batch.rewards + batch.masks * cfg.discount * next_q)


def critic_loss(critic_params: dict, state: State, batch: Batch, target: jax.Array, cfg: Config):
    _, critic = networks(cfg, state.action_dim, state.max_action)
    q = critic.apply(critic_params, batch.observations, batch.actions)
    loss = ((q - target[None]) ** 2).mean(axis=1).sum(axis=0)
    return loss, {"critic_loss": loss, "q_min": q.min(axis=0).mean()}


def actor_loss(actor_params: dict, state: State, batch: Batch, cfg: Config):
    actor, critic = networks(cfg, state.action_dim, state.max_action)
    actions = actor.apply(actor_params, batch.observations)
    bc_penalty = ((actions - batch.actions) ** 2).sum(-1)
    q = critic.apply(state.critic, batch.observations, actions).min(axis=0)
    lmbda = jax.lax.stop_gradient(1.0 / jnp.abs(q).mean()) if cfg.normalize_q else 1.0
    loss = (cfg.actor_bc_coef * bc_penalty - lmbda * q).mean()
    return loss, {
        "actor_loss": loss,
        "bc_mse_policy": bc_penalty.mean(),
        "action_mse": ((actions - batch.actions) ** 2).mean(),
    }


def update(state: State, batch: Batch, key: jax.Array, cfg: Config) -> tuple[State, dict]:
    target = critic_target(state, batch, key, cfg)
    grads, critic_info = jax.grad(critic_loss, has_aux=True)(state.critic, state, batch, target, cfg)
    critic_params, critic_opt = optimizer_step(adam(cfg.critic_lr), state.critic, grads, state.critic_opt)
    updated = state.replace(critic=critic_params, critic_opt=critic_opt)

    def actor_step(state: State) -> tuple[State, dict]:
        grads, info = jax.grad(actor_loss, has_aux=True)(state.actor, state, batch, cfg)
        actor_params, actor_opt = optimizer_step(adam(cfg.actor_lr), state.actor, grads, state.actor_opt)
        return state.replace(
            actor=actor_params,
            actor_opt=actor_opt,
            # The code averages the actor's parameters from before this step into its target.
            actor_target=polyak(state.actor_target, state.actor, cfg.tau),
            critic_target=polyak(state.critic_target, state.critic, cfg.tau),
        ), info

    def skip(state: State) -> tuple[State, dict]:  # the same metrics, NaN: averaged NaN-aware
        _, info = jax.eval_shape(lambda: actor_loss(state.actor, state, batch, cfg))
        return state, jax.tree.map(lambda metric: jnp.full(metric.shape, jnp.nan, metric.dtype), info)

    # The step counter before this update decides, as the code's ``i % policy_freq == 0``.
    updated, actor_info = jax.lax.cond(state.step % cfg.policy_freq == 0, actor_step, skip, updated)
    return updated.replace(step=state.step + 1), {**critic_info, **actor_info}


def act(state: State, observations: jax.Array, cfg: Config) -> jax.Array:
    actor, _ = networks(cfg, state.action_dim, state.max_action)
    return actor.apply(state.actor, observations)


ALGORITHM = Algorithm(
    name="rebrac", Config=Config, init=init, update=update, act=act, dataset_overrides=DATASET_OVERRIDES
)
