"""Networks and small pure helpers shared by every algorithm.

Only the truly generic lives here: MLPs with the initialisations the reference implementations use,
critic ensembles, the actor heads, Polyak averaging and the tanh-Gaussian log-probability. Losses and
update rules stay in each algorithm's own file.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

Initialisation = Literal["torch", "orthogonal", "variance_scaling"]


def _uniform(bound: float) -> Callable:
    def init(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def linear(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel``; on the CPU backend through :func:`linear_with_transposed_kernel`.

    The backend is read when the function is traced, so a jitted program holds one form. Only the CPU
    was measured to gain from the rewrite; elsewhere autodiff's own backward pass stays.
    """
    if jax.default_backend() == "cpu":
        return linear_with_transposed_kernel(x, kernel)
    return x @ kernel


@jax.custom_vjp
def linear_with_transposed_kernel(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` whose backward pass multiplies the gradient by a materialised ``kernel.T``.

    XLA's CPU backend runs a dot with a transposed operand much slower than the same dot after an
    explicit transpose, and autodiff writes the input gradient ``g @ W.T`` as such a dot. Measured on
    this project's 2-core CPU: 256 x 256 x 256, 277 us against 214 us; through a 3-unit output layer,
    [256, 3] @ [3, 256], 71 us against 6 us. The optimisation barrier keeps XLA from folding the
    transpose back into the dot. The kernel gradient keeps autodiff's form: a barrier there costs a
    transpose of the activations, which outweighs its gain once seeds are vmapped. Not measured on an
    accelerator, where the barrier would only cost a copy of the kernel.
    """
    return x @ kernel


def _linear_forward(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return x @ kernel, (x, kernel)


def _linear_backward(residuals: tuple[jax.Array, jax.Array], grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    grad_x = grad @ jax.lax.optimization_barrier(kernel.T)
    grad_kernel = x.reshape(-1, x.shape[-1]).T @ grad.reshape(-1, grad.shape[-1])
    return grad_x, grad_kernel


linear_with_transposed_kernel.defvjp(_linear_forward, _linear_backward)


class Dense(nn.Module):
    """A linear layer whose initialisation can follow PyTorch or the JAX reference code.

    - ``torch``: ``nn.Linear``'s default, kernel and bias ~ U(±1/sqrt(fan_in)). TD3+BC, A2PR, PRDC
      and CQL's official code are PyTorch, so their networks start from this.
    - ``orthogonal``: orthogonal(scale) kernel and zero bias, as in jaxrl / official IQL.
    - ``variance_scaling``: fan_avg uniform and zero bias, as in OGBench / DQC.
    """

    features: int
    initialization: Initialisation = "torch"
    scale: float = math.sqrt(2.0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        if self.initialization == "torch":
            bound = 1.0 / math.sqrt(fan_in)
            kernel_init, bias_init = _uniform(bound), _uniform(bound)
        elif self.initialization == "orthogonal":
            kernel_init, bias_init = nn.initializers.orthogonal(self.scale), nn.initializers.zeros
        else:
            kernel_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")
            bias_init = nn.initializers.zeros
        kernel = self.param("kernel", kernel_init, (fan_in, self.features))
        bias = self.param("bias", bias_init, (self.features,))
        return linear(x, kernel) + bias


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "tanh": jnp.tanh,
}


class MLP(nn.Module):
    """Hidden layers Dense -> activation (-> LayerNorm) (-> dropout), then a linear output layer.

    LayerNorm, when on, follows the activation: the order of OGBench's and DQC's official MLP. Dropout
    follows the activation as in jaxrl's MLP (official IQL); it acts only with ``training=True``, which
    needs a ``"dropout"`` rng in ``apply``.
    """

    hidden_dims: Sequence[int]
    output_dim: int
    activation: str = "relu"
    layer_norm: bool = False
    initialization: Initialisation = "torch"
    output_scale: float = math.sqrt(2.0)
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, training: bool = False) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for width in self.hidden_dims:
            x = act(Dense(width, initialization=self.initialization)(x))
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            if self.dropout_rate > 0:
                x = nn.Dropout(self.dropout_rate)(x, deterministic=not training)
        return Dense(self.output_dim, initialization=self.initialization, scale=self.output_scale)(x)


class DeterministicActor(nn.Module):
    """``max_action * tanh(MLP(s))``: the TD3 actor."""

    hidden_dims: Sequence[int]
    action_dim: int
    max_action: float = 1.0
    initialization: Initialisation = "torch"

    @nn.compact
    def __call__(self, observations: jax.Array) -> jax.Array:
        mlp = MLP(self.hidden_dims, self.action_dim, initialization=self.initialization)
        return self.max_action * jnp.tanh(mlp(observations))


class ValueNetwork(nn.Module):
    """V(s) -> scalar."""

    hidden_dims: Sequence[int]
    activation: str = "relu"
    layer_norm: bool = False
    initialization: Initialisation = "torch"

    @nn.compact
    def __call__(self, observations: jax.Array) -> jax.Array:
        mlp = MLP(self.hidden_dims, 1, self.activation, self.layer_norm, self.initialization)
        return mlp(observations).squeeze(-1)


class CriticEnsemble(nn.Module):
    """``num_critics`` independent Q(s, a) networks evaluated as one batched program.

    Returns shape ``[num_critics, *batch]``. Member 0 is TD3's Q1.
    """

    hidden_dims: Sequence[int]
    num_critics: int = 2
    activation: str = "relu"
    layer_norm: bool = False
    initialization: Initialisation = "torch"

    @nn.compact
    def __call__(self, observations: jax.Array, actions: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            MLP,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_critics,
        )
        inputs = jnp.concatenate([observations, actions], axis=-1)
        return ensemble(self.hidden_dims, 1, self.activation, self.layer_norm, self.initialization)(
            inputs
        ).squeeze(-1)


ENSEMBLE_PARAMS = "VmapMLP_0"  # flax's name for CriticEnsemble's vmapped MLP, the parent of every member


def first_critic(
    critic: CriticEnsemble, params: dict, observations: jax.Array, actions: jax.Array
) -> jax.Array:
    """Member 0 of ``critic`` alone (TD3's Q1), equal to ``critic.apply(params, s, a)[0]``.

    Actor losses that read only Q1 call this: the ensemble's batched program would compute (and
    differentiate) every member and discard the others, 6-8% of a TD3+BC update's FLOPs.
    """
    member = jax.tree.map(lambda leaf: leaf[0], params["params"][ENSEMBLE_PARAMS])
    mlp = MLP(critic.hidden_dims, 1, critic.activation, critic.layer_norm, critic.initialization)
    return mlp.apply({"params": member}, jnp.concatenate([observations, actions], axis=-1)).squeeze(-1)


class GaussianPolicy(nn.Module):
    """IQL's policy: N(tanh(mean(s)), exp(log_std)) with a state-independent, clipped log-std.

    Matches jaxrl's ``NormalTanhPolicy(state_dependent_std=False, tanh_squash_distribution=False,
    log_std_min=-5)`` used by the official IQL code for locomotion.
    """

    hidden_dims: Sequence[int]
    action_dim: int
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    initialization: Initialisation = "orthogonal"
    dropout_rate: float = 0.0  # after every hidden activation, with ``training=True`` only

    @nn.compact
    def __call__(self, observations: jax.Array, training: bool = False) -> tuple[jax.Array, jax.Array]:
        trunk = MLP(
            self.hidden_dims[:-1],
            self.hidden_dims[-1],
            initialization=self.initialization,
            dropout_rate=self.dropout_rate,
        )
        features = nn.relu(trunk(observations, training))
        if self.dropout_rate > 0:
            features = nn.Dropout(self.dropout_rate)(features, deterministic=not training)
        mean = jnp.tanh(Dense(self.action_dim, initialization=self.initialization)(features))
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        log_std = jnp.clip(log_std, self.log_std_min, self.log_std_max)
        return mean, jnp.broadcast_to(log_std, mean.shape)


class TanhGaussianActor(nn.Module):
    """SAC's actor: a state-dependent Gaussian squashed by tanh. Returns (mean, log_std) pre-squash."""

    hidden_dims: Sequence[int]
    action_dim: int
    log_std_min: float = -20.0
    log_std_max: float = 2.0
    initialization: Initialisation = "torch"

    @nn.compact
    def __call__(self, observations: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = MLP(self.hidden_dims, 2 * self.action_dim, initialization=self.initialization)(observations)
        mean, log_std = jnp.split(out, 2, axis=-1)
        return mean, jnp.clip(log_std, self.log_std_min, self.log_std_max)


def gaussian_log_prob(mean: jax.Array, log_std: jax.Array, x: jax.Array) -> jax.Array:
    """Log-density of a diagonal Gaussian, summed over the last axis."""
    z = (x - mean) * jnp.exp(-log_std)
    return jnp.sum(-0.5 * z**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi), axis=-1)


def sample_tanh_gaussian(key: jax.Array, mean: jax.Array, log_std: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reparameterised tanh-Gaussian sample and its log-probability (with the tanh Jacobian)."""
    pre_tanh = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape)
    action = jnp.tanh(pre_tanh)
    # log(1 - tanh(x)^2) written stably: 2 * (log 2 - x - softplus(-2x)).
    log_det = jnp.sum(2.0 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2.0 * pre_tanh)), axis=-1)
    return action, gaussian_log_prob(mean, log_std, pre_tanh) - log_det


def polyak(target: dict, online: dict, tau: float) -> dict:
    """target <- tau * online + (1 - tau) * target."""
    return jax.tree.map(lambda t, o: (1.0 - tau) * t + tau * o, target, online)
