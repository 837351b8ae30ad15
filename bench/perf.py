"""``offbench perf``: how fast the engine runs, and how close it gets to the machine's limit.

Four tables, written as parquet under ``results/perf/<device>/`` and printed on stdout:

- ``updates``: per algorithm, synthetic dataset size and number of vmapped seeds: updates per second per
  seed (the median of timed repeats, each at least ``min_seconds`` of back-to-back jitted chunks, after a
  warm-up chunk); compile seconds of the chunk; FLOPs per update per seed from XLA's cost analysis; the
  matrix-multiply roofline measured in the same process; the fraction of it the update reaches; and the
  cost of an update relative to TD3+BC's on the same dataset and seed count; and the memory the update
  chunk needs (see ``ChunkMemory``).
- ``evaluation``: env steps per second of offbench's evaluator and of two vector backends (Gymnasium's
  ``SyncVectorEnv`` and envpool), each with the fraction of its time spent outside environment stepping.
- ``datasets``: seconds to load a stored Minari dataset and to generate a small one.
- ``targets``: the performance targets below, one row per checked cell, with pass/fail.

The roofline is a chain of dependent ``[seeds, batch, width] @ [seeds, width, width]`` matmuls (ReLU
between), the shape the vmapped update's hidden layers have: each seed multiplies its own weights, so
``S`` seeds are a batched matmul of ``S`` problems of ``batch`` rows, not one matmul of ``S * batch``
rows. It is measured at every seed count, because a device that a 256-row problem leaves idle
(a GPU) reaches more FLOP/s with more seeds in flight, and the update should be judged against what its
own shapes can reach. ``width`` is the algorithm's widest hidden layer and ``batch`` its batch size.
The roofline is not exact for every algorithm: backward passes also multiply ``[width, batch] @ [batch,
width]``, CQL's critic scores ``31 * batch`` rows (30 sampled actions per state), and A2PR mixes 256-wide
critics with a 750-wide VAE; the fraction is a guide, not a bound.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pyarrow as pa
from rich.table import Table

from offbench.algorithms import Algorithm, get_algorithm, sampling
from offbench.bench import provenance, results
from offbench.bench.engine import init_states, make_train_chunk, seed_keys, shared_arrays, training_data
from offbench.datasets.dataset import Dataset, DatasetError, DatasetSpec, build_dataset

ROOFLINE_ALGORITHMS = ("bc", "td3bc", "iql", "a2pr")
# PRDC's cost target is judged where PRDC runs: on real data (Hopper medium-expert, 202,260 transitions,
# generated locally on first use) with actors trained for a while. Synthetic keys are i.i.d. Gaussian in
# 14 dimensions, the worst case of any exact space-partitioning search (no structure to exploit), and an
# untrained actor queries far from every row; both make the search visit many leaves. The synthetic cells
# still report PRDC's cost beside TD3+BC's.
PRDC_DATASET = "offbench/hopper/medium-expert-v0"
PRDC_WARMUP_UPDATES = 2_000
SCALING_SEEDS = 16
EVALUATION_ENV = "hopper"
EVALUATOR_BACKEND = "offbench evaluator (gymnasium)"
LOAD_DATASET = "offbench/hopper/medium-v0"


# --------------------------------------------------------------------------------------------------
# The machine


def device_description() -> str:
    """The device the updates run on, e.g. 'gpu: NVIDIA H100 80GB HBM3' or 'cpu: <model> (2 cores)'."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        return f"{device.platform}: {device.device_kind}"
    model = platform.processor()
    with contextlib.suppress(OSError):
        names = re.findall(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        model = names[0] if names else model
    # The cores this process may use (taskset), which is what XLA's CPU thread pool gets.
    return f"cpu: {model or 'unknown'} ({len(os.sched_getaffinity(0))} cores)"


def device_slug(description: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", description.lower()).strip("-")


# --------------------------------------------------------------------------------------------------
# Timing


def seconds_per_call(call: Callable[[], Any], min_seconds: float, repeats: int) -> list[float]:
    """Seconds per ``call()``, one figure per repeat, each repeat ``min_seconds`` or more of calls.

    The first call warms up (allocation, autotuning, caches) and sizes the repeats; its one-time costs
    can only make the repeats shorter, never below one call. Calls run back to back and synchronise once
    per repeat, so the host dispatches the next call while the device runs the last one, as in training.
    """
    tic = time.perf_counter()
    jax.block_until_ready(call())
    calls = max(1, math.ceil(min_seconds / (time.perf_counter() - tic)))
    timings = []
    for _ in range(repeats):
        tic = time.perf_counter()
        for _ in range(calls):
            output = call()
        jax.block_until_ready(output)
        timings.append((time.perf_counter() - tic) / calls)
    return timings


@dataclasses.dataclass
class Stopwatch:
    """Accumulates the seconds spent inside ``running()`` blocks."""

    seconds: float = 0.0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        tic = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - tic


# --------------------------------------------------------------------------------------------------
# Memory


def tree_bytes(tree: Any) -> int:
    """Bytes of every array leaf of ``tree`` (a PRNG key counts its key data)."""
    def nbytes(leaf: Any) -> int:
        is_key = jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        return int((jax.random.key_data(leaf) if is_key else leaf).nbytes)

    return sum(nbytes(leaf) for leaf in jax.tree.leaves(tree) if hasattr(leaf, "dtype"))


@dataclasses.dataclass(frozen=True)
class ChunkMemory:
    """XLA's memory analysis of a compiled update chunk (``Compiled.memory_analysis()``), in bytes.

    The dataset is an argument of the chunk that ``vmap`` leaves unbatched: it is counted once in
    ``arguments`` whatever the number of seeds, while every seed adds its state and key. This is the
    figure on every backend; the CPU backend keeps no peak of its own (see :func:`device_peak_bytes`).
    """

    arguments: int  # dataset, shared arrays, every seed's state and key
    outputs: int  # new states and keys, metrics
    aliased: int  # output bytes written into the donated states and keys
    temporaries: int

    @property
    def peak(self) -> int:
        """Arguments, outputs not written in place, and temporaries, as if all were live at once."""
        return self.arguments + self.outputs - self.aliased + self.temporaries


def chunk_memory(compiled: Any) -> ChunkMemory:
    analysis = compiled.memory_analysis()
    return ChunkMemory(
        arguments=int(analysis.argument_size_in_bytes),
        outputs=int(analysis.output_size_in_bytes),
        aliased=int(analysis.alias_size_in_bytes),
        temporaries=int(analysis.temp_size_in_bytes),
    )


def device_peak_bytes() -> float:
    """The default device's peak bytes in use since the process started, NaN where the backend keeps
    no such count: a GPU's allocator does, the CPU backend's ``memory_stats()`` is None."""
    stats = jax.devices()[0].memory_stats() or {}
    return float(stats.get("peak_bytes_in_use", math.nan))


# --------------------------------------------------------------------------------------------------
# Updates


def random_dataset(
    size: int,
    observation_dim: int = 11,
    action_dim: int = 3,
    episode_length: int = 1000,
    seed: int = 0,
    env_id: str | None = None,
) -> Dataset:
    """A Hopper-shaped synthetic dataset: throughput does not depend on what the numbers mean."""
    rng = np.random.default_rng(seed)
    timeouts = np.zeros(size, bool)
    timeouts[episode_length - 1 :: episode_length] = True
    spec = DatasetSpec(
        id=f"synthetic-{size}",
        source="perf",
        env_id=env_id,
        observation_dim=observation_dim,
        action_dim=action_dim,
        action_low=(-1.0,) * action_dim,
        action_high=(1.0,) * action_dim,
    )
    return build_dataset(
        spec,
        observations=rng.normal(size=(size, observation_dim)),
        actions=rng.uniform(-1, 1, (size, action_dim)),
        rewards=rng.normal(size=size),
        next_observations=rng.normal(size=(size, observation_dim)),
        terminals=np.zeros(size, bool),
        timeouts=timeouts,
    )


def matmul_roofline(
    seeds: int, rows: int, width: int, length: int = 64, min_seconds: float = 0.5, repeats: int = 5
) -> float:
    """FLOP/s of ``length`` dependent ``[seeds, rows, width] @ [seeds, width, width]`` matmuls, ReLU
    between, in one jitted scan: the vmapped MLP's hidden layer, with nothing else around it."""
    chain = roofline_chain(seeds, rows, width, length)
    # The fastest repeat, not the median: a ceiling is what the machine reaches when nothing else runs,
    # and on a shared machine the slower repeats measure the neighbours.
    seconds = min(seconds_per_call(chain, min_seconds, repeats))
    return 2.0 * seeds * rows * width * width * length / seconds


@functools.cache
def roofline_chain(seeds: int, rows: int, width: int, length: int) -> Callable[[], jax.Array]:
    """The compiled matmul chain of :func:`matmul_roofline` with its inputs, compiled once per shape."""
    weights_key, inputs_key = jax.random.split(jax.random.key(0))
    # He scaling keeps the activations' magnitude steady along the chain (no overflow, no denormals).
    weights = jax.random.normal(weights_key, (seeds, width, width)) * np.sqrt(2.0 / width)
    inputs = jax.random.normal(inputs_key, (seeds, rows, width))

    def chain(inputs: jax.Array, weights: jax.Array) -> jax.Array:
        def layer(hidden: jax.Array, _: None) -> tuple[jax.Array, None]:
            return jax.nn.relu(jnp.einsum("srw,swv->srv", hidden, weights)), None

        return jax.lax.scan(layer, inputs, None, length=length)[0]

    compiled = jax.jit(chain).lower(inputs, weights).compile()
    return lambda: compiled(inputs, weights)


def network_width(cfg: Any) -> int:
    """The widest hidden layer among the config's ``*hidden_dims`` fields."""
    return max(
        width
        for field in dataclasses.fields(cfg)
        if field.name.endswith("hidden_dims")
        for width in getattr(cfg, field.name)
    )


@dataclasses.dataclass(frozen=True)
class UpdateFlops:
    per_update: float  # per seed
    complete: bool  # False: the update loops inside, and XLA counted each loop body once (a lower bound)


def contains_loop(jaxpr: Any) -> bool:
    """Whether a jaxpr runs a loop of more than one iteration: a while, or a scan longer than 1."""
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "while" or (name == "scan" and eqn.params["length"] > 1):
            return True
        for value in eqn.params.values():
            for inner in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(inner, "jaxpr", inner)  # a ClosedJaxpr holds its Jaxpr
                if hasattr(inner, "eqns") and contains_loop(inner):
                    return True
    return False


def update_flops(
    algorithm: Algorithm, cfg: Any, states: Any, keys: jax.Array, data: sampling.TrainingData, shared: Any
) -> UpdateFlops:
    """FLOPs of one seed's update (sampling included), from XLA's cost analysis of the compiled update.

    TD3-style updates step the actor every ``policy_freq`` updates under a ``lax.cond`` on the step, and
    the cost analysis of a conditional counts its costliest branch. So the program runs ``policy_freq``
    updates unrolled from a constant step, which lets XLA resolve every branch, and the count is their
    average. The cost analysis also counts a loop's body once, whatever the trip count: an update that
    loops inside (PRDC's nearest-neighbour search) gets a lower bound, marked ``complete=False``.
    """
    period = getattr(cfg, "policy_freq", 1)
    num_seeds = keys.shape[0]
    one_update = make_train_chunk(algorithm, cfg, 1)

    def updates(states: Any, keys: jax.Array, data: sampling.TrainingData, shared: Any) -> Any:
        states = states.replace(step=jnp.zeros_like(states.step))
        for _ in range(period):
            states, keys, _, _ = one_update(states, keys, data, shared)
        return states

    traced = jax.jit(updates).trace(states, keys, data, shared)
    flops = float(traced.lower().compile().cost_analysis()["flops"])
    return UpdateFlops(flops / period / num_seeds, complete=not contains_loop(traced.jaxpr))


@dataclasses.dataclass
class Measurement:
    algorithm: str
    dataset: str  # the dataset's id: synthetic-<size> or a real one
    dataset_size: int
    warmup_updates: int  # updates trained before timing (0: timed from the initial parameters)
    seeds: int
    chunk: int
    batch_size: int
    updates_per_second_per_seed: float
    compile_seconds: float
    setup_seconds: float  # preprocessing, shared arrays (PRDC's search table), init and its compile
    flops_per_update: float  # per seed
    flops_complete: bool
    roofline_shape: str  # seeds x rows x width of the roofline's matmuls
    roofline_flops_per_second: float
    dataset_bytes: int = 0  # the prepared training data on the device, shared by every seed
    state_bytes: int = 0  # every seed's parameters, optimiser states and key
    chunk_peak_bytes: int = 0  # ChunkMemory.peak of the compiled chunk
    device_peak_bytes: float = math.nan  # the device's peak bytes in use so far; NaN on CPU

    @property
    def achieved_flops_per_second(self) -> float:
        return self.flops_per_update * self.updates_per_second_per_seed * self.seeds

    @property
    def roofline_fraction(self) -> float:
        return self.achieved_flops_per_second / self.roofline_flops_per_second

    def row(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "achieved_flops_per_second": self.achieved_flops_per_second,
            "roofline_fraction": self.roofline_fraction,
        }


def measure_algorithm(
    name: str,
    dataset: Dataset,
    num_seeds: int,
    chunk: int = 10,
    repeats: int = 3,
    min_seconds: float = 2.0,
    hparams: dict[str, Any] | None = None,
    flops: UpdateFlops | None = None,
    roofline: Callable[[int, int, int], float] = matmul_roofline,
    warmup_updates: int = 0,
) -> Measurement:
    """Time ``num_seeds`` vmapped seeds of ``name`` on ``dataset`` through the training engine.

    ``flops`` reuses a count made at another seed count (FLOPs per seed do not depend on it);
    ``roofline(seeds, rows, width)`` gives the roofline for the update's shape; ``warmup_updates`` (a
    multiple of ``chunk``) are trained, untimed, before the timing.
    """
    algorithm = get_algorithm(name)
    cfg = algorithm.Config(**(hparams or {}))
    tic = time.perf_counter()
    data = training_data(algorithm, dataset, cfg)
    shared = shared_arrays(algorithm, data, cfg)
    init_keys, keys = seed_keys(tuple(range(num_seeds)))
    states = init_states(algorithm, data, cfg, init_keys)
    jax.block_until_ready((data, shared, states))
    setup_seconds = time.perf_counter() - tic
    if flops is None:
        flops = update_flops(algorithm, cfg, states, keys, data, shared)
    tic = time.perf_counter()
    train = make_train_chunk(algorithm, cfg, chunk).lower(states, keys, data, shared).compile()
    compile_seconds = time.perf_counter() - tic
    state_bytes = tree_bytes((states, keys))  # before the first call donates them

    def train_chunk() -> Any:
        nonlocal states, keys
        states, keys, _, _ = train(states, keys, data, shared)  # donates the previous states and keys
        return states

    for _ in range(-(-warmup_updates // chunk)):
        train_chunk()
    jax.block_until_ready(states)
    seconds = statistics.median(seconds_per_call(train_chunk, min_seconds, repeats))
    shape = (num_seeds, cfg.batch_size, network_width(cfg))
    return Measurement(
        algorithm=name,
        dataset=dataset.spec.id,
        dataset_size=dataset.size,
        warmup_updates=-(-warmup_updates // chunk) * chunk,
        seeds=num_seeds,
        chunk=chunk,
        batch_size=cfg.batch_size,
        updates_per_second_per_seed=chunk / seconds,
        compile_seconds=compile_seconds,
        setup_seconds=setup_seconds,
        flops_per_update=flops.per_update,
        flops_complete=flops.complete,
        roofline_shape="x".join(map(str, shape)),
        roofline_flops_per_second=roofline(*shape),
        dataset_bytes=tree_bytes(data),
        state_bytes=state_bytes,
        chunk_peak_bytes=chunk_memory(train).peak,
        device_peak_bytes=device_peak_bytes(),
    )


def with_td3bc_cost(updates: pd.DataFrame) -> pd.DataFrame:
    """Add TD3+BC's rate on the same dataset, warm-up and seed count, and the cost of an update relative
    to TD3+BC's (``td3bc rate / rate``: 2 means twice as slow); NaN where TD3+BC was not measured."""
    cell = ["dataset", "warmup_updates", "seeds"]
    td3bc = updates.loc[updates.algorithm == "td3bc", [*cell, "updates_per_second_per_seed"]]
    td3bc = td3bc.rename(columns={"updates_per_second_per_seed": "td3bc_updates_per_second_per_seed"})
    merged = updates.merge(td3bc, on=cell, how="left")
    merged["cost_vs_td3bc"] = merged.td3bc_updates_per_second_per_seed / merged.updates_per_second_per_seed
    return merged


def measure_cells(
    algorithms: Sequence[str],
    dataset: Dataset,
    seed_counts: Sequence[int],
    where: str,
    log: Callable[[str], Any] | None = None,
    **measure: Any,
) -> list[Measurement]:
    """Every algorithm x seed count on ``dataset`` (``measure`` goes to ``measure_algorithm``). FLOPs are
    counted once per algorithm, on the first seed count: per seed they do not depend on it."""
    measurements = []
    for name in algorithms:
        flops = None
        for num_seeds in seed_counts:
            m = measure_algorithm(name, dataset, num_seeds, flops=flops, **measure)
            flops = UpdateFlops(m.flops_per_update, m.flops_complete)
            measurements.append(m)
            if log is not None:
                log(
                    f"{name}, {where}, {num_seeds} seeds: "
                    f"{m.updates_per_second_per_seed:,.1f} updates/s/seed, compile {m.compile_seconds:.1f}s"
                )
    return measurements


def measure_updates(
    algorithms: Sequence[str],
    seed_counts: Sequence[int],
    dataset_sizes: Sequence[int],
    chunk: int = 10,
    repeats: int = 3,
    min_seconds: float = 2.0,
    log: Callable[[str], Any] | None = None,
) -> pd.DataFrame:
    """The updates table: every algorithm x dataset size x seed count."""
    ceilings: dict[str, float] = {}

    def roofline(*shape: int) -> float:
        # Measured beside every cell, and every cell is judged against the best measurement of its shape
        # in the whole run: on a shared machine, one measurement may fall while the neighbours are busy.
        key = "x".join(map(str, shape))
        ceilings[key] = max(ceilings.get(key, 0.0), matmul_roofline(*shape))
        return ceilings[key]

    measurements = []
    for size in dataset_sizes:
        measurements += measure_cells(
            algorithms,
            random_dataset(size),
            seed_counts,
            f"{size:,} transitions",
            log,
            chunk=chunk,
            repeats=repeats,
            min_seconds=min_seconds,
            roofline=roofline,
        )
    for m in measurements:
        m.roofline_flops_per_second = ceilings[m.roofline_shape]
    rows = [m.row() for m in measurements]
    return with_td3bc_cost(pd.DataFrame(rows))


def measure_in_training(
    dataset_id: str = PRDC_DATASET,
    algorithms: Sequence[str] = ("td3bc", "prdc"),
    seed_counts: Sequence[int] = (1,),
    warmup_updates: int = PRDC_WARMUP_UPDATES,
    chunk: int = 10,
    repeats: int = 3,
    min_seconds: float = 2.0,
    log: Callable[[str], Any] | None = None,
) -> pd.DataFrame:
    """Rows of the updates table on a real dataset after ``warmup_updates`` of training (see
    ``PRDC_DATASET``). An ``offbench/...`` dataset that is missing is generated first (about a minute)."""
    from offbench.datasets.generate import catalog
    from offbench.datasets.sources import load_dataset

    if dataset_id.startswith("offbench/"):
        catalog.generate(dataset_id)  # nothing is done when it exists
    measurements = measure_cells(
        algorithms,
        load_dataset(dataset_id),
        seed_counts,
        f"{dataset_id} after {warmup_updates:,} updates",
        log,
        chunk=chunk,
        repeats=repeats,
        min_seconds=min_seconds,
        warmup_updates=warmup_updates,
    )
    return with_td3bc_cost(pd.DataFrame([m.row() for m in measurements]))


# --------------------------------------------------------------------------------------------------
# Evaluation


class ClockedEnv(gym.Wrapper):
    """Adds the seconds spent in the wrapped environment's ``step`` and ``reset`` to a stopwatch."""

    def __init__(self, env: gym.Env, stopwatch: Stopwatch) -> None:
        super().__init__(env)
        self.stopwatch = stopwatch

    def step(self, action: Any) -> Any:
        with self.stopwatch.running():
            return self.env.step(action)

    def reset(self, **kwargs: Any) -> Any:
        with self.stopwatch.running():
            return self.env.reset(**kwargs)


def expert_policy(env: str = EVALUATION_ENV) -> Callable[[np.ndarray], jax.Array]:
    """The committed expert behaviour policy, deterministic, jitted: its episodes run the full 1000
    steps, as a trained agent's do, so every environment stays busy until the end."""
    from offbench.datasets.generate import policies, sac

    params = policies.load_policy(env, "expert").params
    return jax.jit(lambda observations: sac.act(params, observations, None, deterministic=True))


def vector_stepping(env: Any, num_envs: int, policy: Callable, steps: int) -> tuple[float, float]:
    """(total seconds, seconds inside ``env.step``) of ``steps`` env steps of a batched policy loop."""
    observations, _ = env.reset()
    stepping = Stopwatch()
    done = 0
    tic = time.perf_counter()
    while done < steps:
        actions = np.asarray(policy(np.asarray(observations, np.float32)), np.float64)
        with stepping.running():
            observations, *_ = env.step(actions)
        done += num_envs
    return time.perf_counter() - tic, stepping.seconds


def evaluation_row(
    backend: str, environments: int, steps: int, seconds: float, env_seconds: float
) -> dict[str, Any]:
    return {
        "backend": backend,
        "environments": environments,
        "env_steps": steps,
        "seconds": seconds,
        "env_steps_per_second": steps / seconds,
        "stepping_only_env_steps_per_second": steps / env_seconds,
        "overhead_fraction": 1.0 - env_seconds / seconds,
        "status": "ok",
    }


def evaluation_throughput(seeds: int = 5, episodes: int = 10, threads: int | None = None) -> pd.DataFrame:
    """Env steps/s of Hopper-v5 evaluation through offbench's evaluator and two vector backends.

    Every backend runs ``seeds * episodes`` environments with the expert behaviour policy for the same
    number of steps (one full evaluation of the evaluator). ``overhead_fraction`` is the share of the time
    spent outside environment stepping (the policy call, Python, copies). envpool runs ``threads`` worker
    threads (default: the usable cores); its row says why when it is not installed.
    """
    from offbench.datasets.evaluate import Evaluator
    from offbench.datasets.generate.catalog import ACTION_DIMS, ENVS
    from offbench.datasets.sources import make_env

    env_id, action_dim = ENVS[EVALUATION_ENV], ACTION_DIMS[EVALUATION_ENV]
    environments = seeds * episodes
    policy = expert_policy()
    spec = DatasetSpec(
        id="perf",
        source="perf",
        env_id=env_id,
        observation_dim=11,
        action_dim=action_dim,
        action_low=(-1.0,) * action_dim,
        action_high=(1.0,) * action_dim,
    )
    stepping = Stopwatch()
    evaluator = Evaluator(
        spec, tuple(range(seeds)), episodes, env_factory=lambda: ClockedEnv(make_env(spec), stepping)
    )
    policy(np.zeros((seeds, episodes, 11), np.float32)).block_until_ready()  # compile outside the clock
    tic = time.perf_counter()
    evaluator.run(lambda observations, call: policy(observations))
    seconds = time.perf_counter() - tic
    evaluator.close()
    steps = evaluator.env_steps
    rows = [evaluation_row(EVALUATOR_BACKEND, environments, steps, seconds, stepping.seconds)]

    env = gym.make_vec(env_id, num_envs=environments, vectorization_mode="sync")
    policy(np.zeros((environments, 11), np.float32)).block_until_ready()
    rows.append(
        evaluation_row(
            "gymnasium SyncVectorEnv", environments, steps, *vector_stepping(env, environments, policy, steps)
        )
    )
    env.close()

    try:
        import envpool
    except ImportError as error:
        rows.append(
            {
                "backend": "envpool",
                "environments": environments,
                "status": f"not measured: envpool is not installed ({error}); `pip install envpool` "
                "(1.x registers the MuJoCo v5 environments; it needs Python >= 3.11)",
            }
        )
    else:
        threads = threads or len(os.sched_getaffinity(0))
        env = envpool.make_gymnasium(env_id, num_envs=environments, num_threads=threads, seed=0)
        backend = f"envpool {envpool.__version__} ({threads} threads)"
        rows.append(
            evaluation_row(backend, environments, steps, *vector_stepping(env, environments, policy, steps))
        )
        env.close()
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# Datasets


def dataset_timings(load_id: str = LOAD_DATASET, generate_size: int = 10_000) -> pd.DataFrame:
    """Seconds to load ``load_id`` from the local Minari store into a Dataset, and to generate an
    ``offbench/hopper/medium-v0`` of ``generate_size`` transitions (reference episodes included) into a
    temporary Minari root, which leaves the user's datasets alone."""
    from offbench.datasets.generate import catalog
    from offbench.datasets.sources import load_dataset

    rows = []
    tic = time.perf_counter()
    try:
        transitions = load_dataset(load_id).size
        rows.append(dataset_row("load", load_id, transitions, time.perf_counter() - tic))
    except DatasetError as error:
        rows.append(dataset_row("load", load_id, status=f"not measured: {error}"))

    generated = catalog.dataset_id(EVALUATION_ENV, "medium")
    with tempfile.TemporaryDirectory() as root, mock.patch.dict(os.environ, {"MINARI_DATASETS_PATH": root}):
        tic = time.perf_counter()
        catalog.generate_env(EVALUATION_ENV, size=generate_size, kinds=("medium",), workers=1)
        seconds = time.perf_counter() - tic
        rows.append(dataset_row("generate", generated, load_dataset(generated).size, seconds))
    return pd.DataFrame(rows)


def dataset_row(
    operation: str, dataset: str, transitions: int = 0, seconds: float = math.nan, status: str = "ok"
) -> dict[str, Any]:
    return {
        "operation": operation,
        "dataset": dataset,
        "transitions": transitions,
        "seconds": seconds,
        "transitions_per_second": transitions / seconds,
        "status": status,
    }


# --------------------------------------------------------------------------------------------------
# Targets


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    threshold: float
    at_least: bool  # pass when value >= threshold; else when value <= threshold

    def passed(self, value: float) -> bool | None:
        if math.isnan(value):
            return None
        return bool(value >= self.threshold if self.at_least else value <= self.threshold)

    def describe(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.threshold:g}"


ROOFLINE_TARGET = Target(f"roofline fraction ({', '.join(ROOFLINE_ALGORITHMS)})", 0.70, at_least=True)
PRDC_TARGET = Target(f"prdc cost / td3bc cost on {PRDC_DATASET}, trained", 2.0, at_least=False)
SCALING_TARGET = Target(f"td3bc per-seed rate, {SCALING_SEEDS} seeds / 1 seed", 0.9, at_least=True)
COMPILE_TARGET = Target("compile seconds of an update chunk", 20.0, at_least=False)
OVERHEAD_TARGET = Target("evaluator time outside env stepping", 0.25, at_least=False)
TARGETS = (ROOFLINE_TARGET, PRDC_TARGET, SCALING_TARGET, COMPILE_TARGET, OVERHEAD_TARGET)


def check_targets(updates: pd.DataFrame, evaluation: pd.DataFrame | None) -> pd.DataFrame:
    """One row per checked cell of each target. A target nothing was measured for gets
    one row with a NaN value and ``passed`` None (shown as "not measured")."""
    rows: list[dict[str, Any]] = []

    def check(target: Target, cells: list[tuple[float, dict[str, Any]]]) -> None:
        for value, where in cells or [(math.nan, {})]:
            rows.append(
                {
                    "target": target.name,
                    "algorithm": where.get("algorithm"),
                    "seeds": where.get("seeds"),
                    "dataset_size": where.get("dataset_size"),
                    "value": float(value),
                    "threshold": target.threshold,
                    "comparison": ">=" if target.at_least else "<=",
                    "passed": target.passed(float(value)),
                }
            )

    def cell(row: Any) -> dict[str, Any]:
        return {"algorithm": row.algorithm, "seeds": row.seeds, "dataset_size": row.dataset_size}

    measured = list(updates.itertuples())
    check(
        ROOFLINE_TARGET,
        [(r.roofline_fraction, cell(r)) for r in measured if r.algorithm in ROOFLINE_ALGORITHMS],
    )
    check(
        PRDC_TARGET,
        [
            (r.cost_vs_td3bc, cell(r))
            for r in measured
            if r.algorithm == "prdc" and r.dataset == PRDC_DATASET and not math.isnan(r.cost_vs_td3bc)
        ],
    )
    td3bc = {
        (r.dataset_size, r.seeds): r.updates_per_second_per_seed
        for r in measured
        if r.algorithm == "td3bc" and r.warmup_updates == 0
    }
    check(
        SCALING_TARGET,
        [
            (
                td3bc[size, SCALING_SEEDS] / td3bc[size, 1],
                {"algorithm": "td3bc", "seeds": SCALING_SEEDS, "dataset_size": size},
            )
            for size in sorted({size for size, _ in td3bc})
            if (size, 1) in td3bc and (size, SCALING_SEEDS) in td3bc
        ],
    )
    check(COMPILE_TARGET, [(r.compile_seconds, cell(r)) for r in measured])
    evaluator = [] if evaluation is None else evaluation[evaluation.backend == EVALUATOR_BACKEND].itertuples()
    check(OVERHEAD_TARGET, [(r.overhead_fraction, {}) for r in evaluator])
    return pd.DataFrame(rows).astype({"seeds": "Int64", "dataset_size": "Int64"})


# --------------------------------------------------------------------------------------------------
# The whole benchmark


@dataclasses.dataclass
class PerfTables:
    device: str
    updates: pd.DataFrame
    evaluation: pd.DataFrame | None  # None: not measured
    datasets: pd.DataFrame | None
    targets: pd.DataFrame

    def frames(self) -> dict[str, pd.DataFrame]:
        named = {"updates": self.updates, "evaluation": self.evaluation, "datasets": self.datasets}
        return {
            name: frame for name, frame in {**named, "targets": self.targets}.items() if frame is not None
        }


def run(
    algorithms: Sequence[str],
    seed_counts: Sequence[int] = (1, 4, 16),
    dataset_sizes: Sequence[int] = (200_000, 1_000_000),
    chunk: int = 10,
    repeats: int = 3,
    min_seconds: float = 2.0,
    evaluation_seeds: int | None = 5,
    generate_size: int | None = 10_000,
    prdc_dataset: str | None = PRDC_DATASET,
    log: Callable[[str], Any] | None = None,
) -> PerfTables:
    """Measure everything; ``evaluation_seeds`` / ``generate_size`` / ``prdc_dataset`` None skips that
    part (the last only runs when PRDC is among ``algorithms``)."""
    device = device_description()
    updates = measure_updates(algorithms, seed_counts, dataset_sizes, chunk, repeats, min_seconds, log)
    if prdc_dataset is not None and "prdc" in algorithms:
        in_training = measure_in_training(
            prdc_dataset, chunk=chunk, repeats=repeats, min_seconds=min_seconds, log=log
        )
        updates = pd.concat([updates, in_training], ignore_index=True)
    evaluation = None if evaluation_seeds is None else evaluation_throughput(evaluation_seeds)
    datasets = None if generate_size is None else dataset_timings(generate_size=generate_size)
    return PerfTables(device, updates, evaluation, datasets, check_targets(updates, evaluation))


def write(tables: PerfTables, directory: Path) -> list[Path]:
    """One parquet file per table under ``directory``, each row stamped with the device and provenance."""
    return write_frames(tables.device, tables.frames(), directory)


def write_frames(device: str, frames: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
    """``directory/<name>.parquet`` per frame, each row stamped with ``device`` and provenance."""
    stamp = {
        "device": device,
        "git_sha": provenance.code_version()["git_sha"],
        "code_version": provenance.code_version()["code_version"],
        "jax_version": jax.__version__,
        "timestamp": pd.Timestamp.now(tz="UTC").isoformat(),
    }
    return [
        results.write_atomic(
            pa.Table.from_pandas(frame.assign(**stamp), preserve_index=False), directory / f"{name}.parquet"
        )
        for name, frame in frames.items()
    ]


def render(tables: PerfTables) -> list[Table]:
    """The tables ``offbench perf`` prints, a target's verdict beside each value it applies to, and a
    summary of the targets."""
    updates = Table(title=f"updates on {tables.device}")
    for column in (
        "algorithm", "dataset", "transitions", "seeds", "updates/s/seed", "× td3bc cost", "compile s",
        "GFLOP/update", "GFLOP/s", "roofline GFLOP/s", "roofline shape", "% roofline",
    ):  # fmt: skip
        updates.add_column(column, justify="left" if column == "algorithm" else "right")
    for r in tables.updates.itertuples():
        cost = "" if math.isnan(r.cost_vs_td3bc) else f"{r.cost_vs_td3bc:.2f}"
        if r.algorithm == "prdc" and r.dataset == PRDC_DATASET:
            cost += beside(PRDC_TARGET, r.cost_vs_td3bc)
        fraction = f"{100 * r.roofline_fraction:.0f}"
        if r.algorithm in ROOFLINE_ALGORITHMS:
            fraction += beside(ROOFLINE_TARGET, r.roofline_fraction)
        updates.add_row(
            r.algorithm,
            r.dataset + (f", trained {r.warmup_updates:,} updates" if r.warmup_updates else ""),
            f"{r.dataset_size:,}",
            str(r.seeds),
            f"{r.updates_per_second_per_seed:,.1f}",
            cost,
            f"{r.compile_seconds:.1f}{beside(COMPILE_TARGET, r.compile_seconds)}",
            # A count with loops inside is a lower bound (see update_flops).
            f"{'≥' if not r.flops_complete else ''}{r.flops_per_update / 1e9:.3f}",
            f"{r.achieved_flops_per_second / 1e9:,.1f}",
            f"{r.roofline_flops_per_second / 1e9:,.1f}",
            r.roofline_shape,
            fraction,
        )
    rendered = [updates]
    if tables.evaluation is not None:
        evaluation = Table(title=f"evaluation: Hopper-v5, expert policy, on {tables.device}")
        for column in ("backend", "envs", "env steps/s", "stepping only", "% outside stepping", "status"):
            evaluation.add_column(column, justify="left" if column in ("backend", "status") else "right")
        for r in tables.evaluation.itertuples():
            measured = r.status == "ok"
            overhead = f"{100 * r.overhead_fraction:.0f}" if measured else ""
            if measured and r.backend == EVALUATOR_BACKEND:
                overhead += beside(OVERHEAD_TARGET, r.overhead_fraction)
            evaluation.add_row(
                r.backend,
                str(r.environments),
                f"{r.env_steps_per_second:,.0f}" if measured else "",
                f"{r.stepping_only_env_steps_per_second:,.0f}" if measured else "",
                overhead,
                r.status,
            )
        rendered.append(evaluation)
    if tables.datasets is not None:
        datasets = Table(title="datasets")
        for column in ("operation", "dataset", "transitions", "seconds", "transitions/s", "status"):
            numeric = column in ("transitions", "seconds", "transitions/s")
            datasets.add_column(column, justify="right" if numeric else "left")
        for r in tables.datasets.itertuples():
            measured = r.status == "ok"
            datasets.add_row(
                r.operation,
                r.dataset,
                f"{r.transitions:,}" if measured else "",
                f"{r.seconds:.1f}" if measured else "",
                f"{r.transitions_per_second:,.0f}" if measured else "",
                r.status,
            )
        rendered.append(datasets)
    rendered.append(targets_summary(tables.targets))
    return rendered


def beside(target: Target, value: float) -> str:
    passed = target.passed(value)
    return "" if passed is None else (" ✓" if passed else " ✗")


def targets_summary(targets: pd.DataFrame) -> Table:
    """Per target: how many checked cells pass, and the worst one."""
    summary = Table(title="targets")
    for column in ("target", "threshold", "passed", "worst", "worst cell"):
        summary.add_column(column)
    for target in TARGETS:
        checked = targets[(targets.target == target.name) & targets.passed.notna()]
        if checked.empty:
            summary.add_row(target.name, target.describe(), "not measured", "", "")
            continue
        worst = checked.loc[checked.value.idxmin() if target.at_least else checked.value.idxmax()]
        where = [
            worst.algorithm if pd.notna(worst.algorithm) else None,
            f"{worst.seeds} seeds" if pd.notna(worst.seeds) else None,
            f"{worst.dataset_size:,} transitions" if pd.notna(worst.dataset_size) else None,
        ]
        passed = int(checked.passed.astype(bool).sum())
        summary.add_row(
            target.name,
            target.describe(),
            f"{passed} of {len(checked)}{' ✓' if passed == len(checked) else ' ✗'}",
            f"{worst.value:.3g}",
            ", ".join(text for text in where if text is not None),
        )
    return summary
