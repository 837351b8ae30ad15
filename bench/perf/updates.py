"""The ``updates`` table of ``offbench perf``: per algorithm, dataset and number of vmapped seeds, updates
per second per seed (the median of timed repeats, each at least ``min_seconds`` of back-to-back jitted
chunks, after a warm-up chunk); compile seconds of the chunk; FLOPs per update per seed from XLA's cost
analysis; the matrix-multiply roofline measured in the same process; the fraction of it the update
reaches; the cost of an update relative to TD3+BC's on the same dataset and seed count; and the memory
the update chunk needs (see ``measure.ChunkMemory``).

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

import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from offbench.algorithms import Algorithm, sampling
from offbench.algorithms.registry import get_algorithm
from offbench.bench.engine import init_states, make_train_chunk, seed_keys, shared_arrays, training_data
from offbench.bench.perf.measure import chunk_memory, device_peak_bytes, seconds_per_call, tree_bytes
from offbench.datasets.dataset import Dataset, DatasetSpec, build_dataset

# PRDC's cost target is judged where PRDC runs: on real data (Hopper medium-expert, 202,260 transitions,
# generated locally on first use) with actors trained for a while. Synthetic keys are i.i.d. Gaussian in
# 14 dimensions, the worst case of any exact space-partitioning search (no structure to exploit), and an
# untrained actor queries far from every row; both make the search visit many leaves. The synthetic cells
# still report PRDC's cost beside TD3+BC's.
PRDC_DATASET = "offbench/hopper/medium-expert-v0"
PRDC_WARMUP_UPDATES = 2_000


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

    def progress(self) -> str:
        """The figures a progress line shows: the rate per seed and the compile time."""
        return f"{self.updates_per_second_per_seed:,.1f} updates/s/seed, compile {self.compile_seconds:.1f}s"

    def row(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "achieved_flops_per_second": self.achieved_flops_per_second,
            "roofline_fraction": self.roofline_fraction,
        }


def training_inputs(
    algorithm: Algorithm, dataset: Dataset, cfg: Any, num_seeds: int
) -> tuple[sampling.TrainingData, Any, Any, jax.Array]:
    """What the engine's chunk trains ``num_seeds`` vmapped seeds (0, 1, ...) on: (data, shared arrays,
    initial states, training keys)."""
    data = training_data(algorithm, dataset, cfg)
    shared = shared_arrays(algorithm, data, cfg)
    init_keys, keys = seed_keys(tuple(range(num_seeds)))
    return data, shared, init_states(algorithm, data, cfg, init_keys), keys


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
    data, shared, states, keys = training_inputs(algorithm, dataset, cfg, num_seeds)
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
        algorithm=algorithm.name,
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
    on_measured: Callable[[Measurement], Any] | None = None,
    **measure: Any,
) -> list[Measurement]:
    """Every algorithm x seed count on ``dataset`` (``measure`` goes to ``measure_algorithm``), each
    handed to ``on_measured`` as soon as it is measured. FLOPs are counted once per algorithm, on the
    first seed count: per seed they do not depend on it."""
    measurements = []
    for name in algorithms:
        flops = None
        for num_seeds in seed_counts:
            m = measure_algorithm(name, dataset, num_seeds, flops=flops, **measure)
            flops = UpdateFlops(m.flops_per_update, m.flops_complete)
            measurements.append(m)
            if on_measured is not None:
                on_measured(m)
    return measurements


def log_cells(log: Callable[[str], Any] | None, where: str) -> Callable[[Measurement], Any] | None:
    """``measure_cells``'s ``on_measured`` that logs one line per cell, naming its dataset by ``where``."""
    if log is None:
        return None
    return lambda m: log(f"{m.algorithm}, {where}, {m.seeds} seeds: {m.progress()}")


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
            log_cells(log, f"{size:,} transitions"),
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
        log_cells(log, f"{dataset_id} after {warmup_updates:,} updates"),
        chunk=chunk,
        repeats=repeats,
        min_seconds=min_seconds,
        warmup_updates=warmup_updates,
    )
    return with_td3bc_cost(pd.DataFrame([m.row() for m in measurements]))
