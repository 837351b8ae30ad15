"""The conformance check: does an algorithm keep the contract the engine relies on?

``offbench algorithms check PATH|MODULE|NAME`` runs :func:`check`; a sweep runs :func:`check_cheap` on
every plug-in while it plans, before any dataset is generated. Each rule that fails gives one
:class:`Failure`: the rule's name, what was found and the fix.

The cheap rules read the declaration and trace ``init``, ``update`` and ``act`` abstractly
(``jax.eval_shape``) on a small spec, compiling nothing. The full check then trains a few updates on a
tiny generated dataset (8 episodes of 40 random steps, no environment): the update compiles once
(``chex.assert_max_traces``), vmapped seeds match single-seed runs, the same key gives the same state,
the parameters stay finite, and ``act`` is deterministic and inside the action bounds.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from offbench.algorithms import Algorithm
from offbench.algorithms.config import BaseConfig, check_ranges, config_fields, resolve_config
from offbench.algorithms.registry import NAME, AlgorithmSource, load
from offbench.datasets.dataset import Dataset, DatasetSpec, build_dataset

OBSERVATION_DIM, ACTION_DIM = 5, 2
EPISODES, EPISODE_LENGTH = 8, 40
UPDATES = 3  # per run of the full check: enough for a delayed actor step and a target update
SEEDS = (0, 1)
# Vmapped and single-seed runs agree to float rounding, not bit for bit: XLA computes a vmapped batch of
# seeds' matrix products with other kernels than one seed's (the engine's tests use the same bound).
VMAP_RTOL, VMAP_ATOL = 1e-4, 1e-5


@dataclasses.dataclass(frozen=True)
class Failure:
    rule: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.problem}. Fix: {self.fix}"


@dataclasses.dataclass
class Report:
    name: str
    origin: str
    rules: list[str]  # every rule that ran, in order
    failures: list[Failure]
    seconds: float

    @property
    def passed(self) -> bool:
        return not self.failures


def check_spec() -> DatasetSpec:
    return DatasetSpec(
        id="offbench-check",
        source="offbench algorithms check",
        env_id=None,
        observation_dim=OBSERVATION_DIM,
        action_dim=ACTION_DIM,
        action_low=(-1.0,) * ACTION_DIM,
        action_high=(1.0,) * ACTION_DIM,
    )


def check_dataset() -> Dataset:
    """Random transitions in episodes that end alternately by a terminal and a timeout."""
    rng = np.random.default_rng(0)
    n = EPISODES * EPISODE_LENGTH
    ends = np.arange(EPISODE_LENGTH - 1, n, EPISODE_LENGTH)
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    terminals[ends[::2]], timeouts[ends[1::2]] = True, True
    return build_dataset(
        check_spec(),
        observations=rng.normal(size=(n, OBSERVATION_DIM)),
        actions=rng.uniform(-1, 1, (n, ACTION_DIM)),
        rewards=rng.normal(size=n),
        next_observations=rng.normal(size=(n, OBSERVATION_DIM)),
        terminals=terminals,
        timeouts=timeouts,
    )


# ---- the declaration (no JAX) ----


def declaration_failures(algorithm: Algorithm) -> list[Failure]:
    rule = "declaration"
    found = []
    if not isinstance(algorithm.name, str) or not NAME.match(algorithm.name):
        found.append(
            Failure(rule, f"name {algorithm.name!r} is not a plain name", "use letters, digits, _ . -")
        )
    for field in ("init", "update", "act"):
        if not callable(getattr(algorithm, field)):
            found.append(Failure(rule, f"{field} is not callable", f"pass the module's {field} function"))
    for field in ("shared_arrays", "batch_horizon"):
        value = getattr(algorithm, field)
        if value is not None and not callable(value):
            found.append(Failure(rule, f"{field} is a {type(value).__name__}", "pass a function or None"))
    if not isinstance(algorithm.act_needs_key, bool):
        found.append(Failure(rule, "act_needs_key is not a bool", "set act_needs_key=True or False"))
    return found


def config_failures(config_type: Any) -> list[Failure]:
    rule = "config"
    if not (isinstance(config_type, type) and dataclasses.is_dataclass(config_type)):
        return [
            Failure(rule, "Config is not a dataclass", "decorate it with @dataclasses.dataclass(frozen=True)")
        ]
    found = []
    if not issubclass(config_type, BaseConfig):
        found.append(
            Failure(
                rule,
                "Config does not subclass BaseConfig",
                "class Config(BaseConfig), from offbench.algorithms",
            )
        )
    if not config_type.__dataclass_params__.frozen:
        found.append(
            Failure(
                rule,
                "Config is not frozen (jit needs it hashable)",
                "use @dataclasses.dataclass(frozen=True)",
            )
        )
    try:
        typing.get_type_hints(config_type)
        check_ranges(config_type, {})
        config_type()
    except TypeError as error:  # a numeric field without a range, or a field without a default
        found.append(
            Failure(rule, str(error).rstrip("."), "give every field a default, numbers with bounded()")
        )
    except ValueError as error:
        found.append(
            Failure(rule, f"a default is out of range ({error})", "fix the default or its bounded() range")
        )
    return found


def overrides_failures(algorithm: Algorithm) -> list[Failure]:
    rule = "dataset_overrides"
    found = []
    fields = config_fields(algorithm.Config)
    try:
        entries = list(algorithm.dataset_overrides)
    except TypeError:
        return [Failure(rule, "dataset_overrides is not a sequence", "use ((glob, {field: value}), ...)")]
    for entry in entries:
        if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)):
            found.append(Failure(rule, f"entry {entry!r} is not (glob, {{field: value}})", "fix the entry"))
            continue
        pattern, values = entry
        unknown = sorted(set(values) - set(fields))
        if unknown:
            found.append(
                Failure(rule, f"{pattern!r} names unknown fields {unknown}", "name fields of Config")
            )
            continue
        try:
            resolve_config(algorithm.Config, pattern, algorithm.dataset_overrides)
        except (TypeError, ValueError) as error:
            found.append(Failure(rule, f"{pattern!r}: {error}", "fix the published value"))
    return found


# ---- abstract tracing: shapes and dtypes, nothing compiled ----


def leaf_signature(tree: Any) -> list[tuple[str, tuple[int, ...], Any, bool]]:
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [
        (jax.tree_util.keystr(path), tuple(leaf.shape), leaf.dtype, bool(getattr(leaf, "weak_type", False)))
        for path, leaf in paths
    ]


def state_failures(state: Any) -> list[Failure]:
    rule = "state"
    step = getattr(state, "step", None)
    if step is None:
        return [
            Failure(rule, "the state has no step field", "add step: jax.Array (an int32 scalar) to the state")
        ]
    if not hasattr(state, "replace"):
        return [Failure(rule, "the state has no replace()", "make the state a @flax.struct.dataclass")]
    if tuple(step.shape) != () or not jnp.issubdtype(step.dtype, jnp.integer):
        return [
            Failure(
                rule,
                f"step is {step.dtype}{list(step.shape)}, not an integer scalar",
                "init step with jnp.zeros((), jnp.int32)",
            )
        ]
    return []


def update_failures(before: Any, after: Any, metrics: Any) -> list[Failure]:
    found = []
    old, new = leaf_signature(before), leaf_signature(after)
    if jax.tree.structure(before) != jax.tree.structure(after):
        found.append(
            Failure(
                "update-shapes",
                "update returns a state of another tree structure",
                "return state.replace(...) of the same fields",
            )
        )
    else:
        for (path, shape, dtype, weak), (_, shape2, dtype2, weak2) in zip(old, new, strict=True):
            if (shape, dtype) != (shape2, dtype2) or weak != weak2:
                change = f"{dtype}{list(shape)}" + (" weak" if weak else "")
                to = f"{dtype2}{list(shape2)}" + (" weak" if weak2 else "")
                found.append(
                    Failure(
                        "update-shapes",
                        f"update changes leaf state{path} from {change} to {to} (the chunk would recompile)",
                        "give the leaf its final dtype and shape in init (e.g. jnp.asarray(x, jnp.float32))",
                    )
                )
    if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
        found.append(
            Failure("metrics", "update's metrics are not a dict of names", "return (state, {name: scalar})")
        )
    else:
        for name, value in metrics.items():
            if tuple(value.shape) != () or not jnp.issubdtype(value.dtype, jnp.floating):
                found.append(
                    Failure(
                        "metrics",
                        f"metric {name!r} is {value.dtype}{list(value.shape)}, not a float scalar",
                        "reduce it, e.g. .mean()",
                    )
                )
    return found


def act_shape_failures(actions: Any, batch: int) -> list[Failure]:
    """One action per observation row, [B, act], or one open-loop chunk per row, [B, H, act]."""
    shape = tuple(getattr(actions, "shape", ()))
    fits = len(shape) in (2, 3) and shape[0] == batch and shape[-1] == ACTION_DIM and shape[1] >= 1
    if fits and jnp.issubdtype(actions.dtype, jnp.floating):
        return []
    found = f"{getattr(actions, 'dtype', type(actions))}{list(shape)}"
    problem = f"act returns {found} for {batch} observations, expected float [{batch}, {ACTION_DIM}]"
    return [Failure("act", problem, "return one action (or one action chunk) per observation row")]


def _extra(algorithm: Algorithm, shared: Any) -> dict[str, Any]:
    return {} if algorithm.shared_arrays is None else {"shared": shared}


def _act(algorithm: Algorithm, state: Any, observations: jax.Array, cfg: Any, key: jax.Array) -> jax.Array:
    if algorithm.act_needs_key:
        return algorithm.act(state, observations, cfg, key)
    return algorithm.act(state, observations, cfg)


def abstract_failures(algorithm: Algorithm, cfg: Any, data: Any, shared: Any) -> list[Failure]:
    """init/update/act traced on the spec; each stage stops the check at its first failure."""
    from offbench.algorithms import sampling

    key = jax.random.key(0)
    try:
        state = jax.eval_shape(lambda k: algorithm.init(k, data.dataset, cfg), key)
    except Exception as error:
        return [
            Failure(
                "init",
                f"init fails: {type(error).__name__}: {error}",
                "init(key, dataset, cfg) must build the state",
            )
        ]
    found = state_failures(state)
    if found:
        return found
    try:
        batch = jax.eval_shape(lambda k: sampling.draw(data, k, cfg), key)
        after, metrics = jax.eval_shape(
            lambda s, b, k: algorithm.update(s, b, k, cfg, **_extra(algorithm, shared)), state, batch, key
        )
    except Exception as error:
        return [
            Failure(
                "update",
                f"update fails: {type(error).__name__}: {error}",
                "update(state, batch, key, cfg) must run",
            )
        ]
    found = update_failures(state, after, metrics)
    try:
        observations = jax.ShapeDtypeStruct((4, OBSERVATION_DIM), jnp.float32)
        actions = jax.eval_shape(lambda s, o, k: _act(algorithm, s, o, cfg, k), state, observations, key)
    except Exception as error:
        return [
            *found,
            Failure(
                "act", f"act fails: {type(error).__name__}: {error}", "act(state, observations, cfg) must run"
            ),
        ]
    return found + act_shape_failures(actions, 4)


def cheap_rules(
    algorithm: Algorithm, overrides: dict[str, Any] | None
) -> tuple[list[Failure], Any, Any, Any]:
    """The declaration and abstract rules; returns (failures, cfg, training data, shared arrays)."""
    from offbench.bench.engine import shared_arrays, training_data

    found = declaration_failures(algorithm) + config_failures(algorithm.Config)
    if found:
        return found, None, None, None
    found = overrides_failures(algorithm)
    try:
        cfg = resolve_config(algorithm.Config, "offbench-check", (), {"total_steps": 10, **(overrides or {})})
        data = training_data(algorithm, check_dataset(), cfg)
        shared = None if algorithm.shared_arrays is None else shared_arrays(algorithm, data, cfg)
    except Exception as error:
        return (
            [
                *found,
                Failure(
                    "data",
                    f"preparing the data fails: {type(error).__name__}: {error}",
                    "check batch_horizon and shared_arrays",
                ),
            ],
            None,
            None,
            None,
        )
    return found + abstract_failures(algorithm, cfg, data, shared), cfg, data, shared


def check_cheap(source: AlgorithmSource) -> list[Failure]:
    """The rules a sweep checks while planning: the declaration and the abstract traces."""
    return cheap_rules(load(source), None)[0]


# ---- a few real updates on the tiny dataset ----


def run_failures(algorithm: Algorithm, cfg: Any, data: Any, shared: Any) -> list[Failure]:
    """Seeds 0 and 1 trained together through the engine's vmapped chunk, then each alone through one
    jitted update with the engine's key schedule, then seed 0 alone again; and ``act`` on the result."""
    from offbench.algorithms import sampling
    from offbench.bench.engine import init_states, make_train_chunk, seed_keys, state_axes

    extra = _extra(algorithm, shared)
    chex.clear_trace_counter()  # chex counts traces by the function's source: one count per check

    @chex.assert_max_traces(n=1)
    def one_update(state: Any, key: jax.Array) -> tuple[Any, jax.Array]:
        key, sample_key, update_key = jax.random.split(key, 3)  # as the engine's chunk splits it
        batch = sampling.draw(data, sample_key, cfg)
        return algorithm.update(state, batch, update_key, cfg, **extra)[0], key

    update = jax.jit(one_update)
    init_keys, keys = seed_keys(SEEDS)
    starts = init_states(algorithm, data, cfg, init_keys)
    axes = state_axes(starts)

    def seed_state(states: Any, index: int) -> Any:
        return jax.tree.map(
            lambda leaf, axis: leaf if axis is None else leaf[index],
            states,
            axes,
            is_leaf=lambda x: x is None,
        )

    def alone(index: int) -> Any:
        state, key = seed_state(starts, index), keys[index]
        for _ in range(UPDATES):
            state, key = update(state, key)
        return state

    found = []
    try:
        singles = [alone(index) for index in range(len(SEEDS))]
    except AssertionError as error:
        if "trace" not in str(error).lower():
            raise
        problem = "update was traced again for the state it returned (every chunk would recompile)"
        return [Failure("compile-once", problem, "keep every leaf's dtype, shape and weak type in update")]
    first_step, state = int(starts.step), singles[0]
    if int(state.step) != first_step + UPDATES:
        problem = f"step went from {first_step} to {int(state.step)} in {UPDATES} updates"
        found.append(Failure("step", problem, "add 1 to state.step in every update"))
    try:
        chex.assert_tree_all_finite(state)
    except AssertionError:
        problem = f"parameters are not finite after {UPDATES} updates"
        found.append(Failure("finite", problem, "check the losses and learning rates"))
    if not all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(alone(0)), strict=True)
    ):
        problem = "the same keys gave two different states"
        found.append(Failure("same-key", problem, "draw all randomness from the keys update receives"))

    together = make_train_chunk(algorithm, cfg, UPDATES)(starts, keys, data, shared)[0]
    for index, seed in enumerate(SEEDS):
        mine = seed_state(together, index)
        if not all(
            np.allclose(a, b, rtol=VMAP_RTOL, atol=VMAP_ATOL)
            for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(singles[index]), strict=True)
        ):
            other = SEEDS[1 - index]
            found.append(
                Failure(
                    "vmap",
                    f"seed {seed} trained beside seed {other} differs from seed {seed} trained alone",
                    "use only this seed's state and key in update (no reduction over seeds, no Python state)",
                )
            )
            break

    observations = data.dataset.observations[:16]
    act = jax.jit(lambda s, o, k: _act(algorithm, s, o, cfg, k))
    actions = np.asarray(act(state, observations, jax.random.key(1)))
    low, high = np.asarray(data.dataset.spec.action_low), np.asarray(data.dataset.spec.action_high)
    if not (np.isfinite(actions).all() and (actions >= low).all() and (actions <= high).all()):
        problem = "act returns actions outside the spec's bounds"
        found.append(Failure("act-bounds", problem, "squash (tanh * max_action) or clip the actions"))
    if not algorithm.act_needs_key and not np.array_equal(
        actions, np.asarray(act(state, observations, jax.random.key(2)))
    ):
        problem = "act gave two answers for the same state and observations"
        found.append(
            Failure("act-deterministic", problem, "make act deterministic, or declare act_needs_key=True")
        )
    return found


RULES = (
    "declaration",
    "config",
    "dataset_overrides",
    "init",
    "state",
    "update",
    "update-shapes",
    "metrics",
    "act",
    "compile-once",
    "step",
    "finite",
    "same-key",
    "vmap",
    "act-bounds",
    "act-deterministic",
)


def check(source: AlgorithmSource, overrides: dict[str, Any] | None = None) -> Report:
    """Every rule on the algorithm ``source`` names; ``overrides`` set config fields (small networks in
    tests). Stops after the abstract rules when one of them fails: running would only fail later."""
    tic = time.perf_counter()
    algorithm = load(source)
    found, cfg, data, shared = cheap_rules(algorithm, overrides)
    if not found:
        found = run_failures(algorithm, cfg, data, shared)
    return Report(source.name, source.origin, list(RULES), found, time.perf_counter() - tic)


def format_report(report: Report) -> list[str]:
    if report.passed:
        return [
            f"{report.name} ({report.origin}): all {len(report.rules)} rules hold "
            f"({', '.join(report.rules)}); {report.seconds:.1f} s"
        ]
    return [f"{report.name}: {failure}" for failure in report.failures]
