"""``offbench perf``: how fast the engine runs, and how close it is to the machine's limit.

For each algorithm and seed count: updates per second per seed (the median of timed chunks after a
warm-up), compile seconds, FLOPs per update from XLA's cost analysis of one compiled update, and the
fraction of a matrix-multiply roofline measured in the same process (a scan of dependent matmuls of
the network's hidden shape at the same effective batch). Also evaluation env steps per second against
bare environment stepping. Rows go to ``results/perf/<device>.parquet`` and to a table on stdout.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from offbench.algorithms import get_algorithm, sampling
from offbench.bench import results
from offbench.bench.train import init_states, make_train_chunk, seed_keys, shared_arrays
from offbench.datasets.dataset import Dataset, DatasetSpec, build_dataset


def random_dataset(
    size: int, observation_dim: int = 11, action_dim: int = 3, episode_length: int = 1000, seed: int = 0
) -> Dataset:
    """A Hopper-shaped synthetic dataset: throughput does not depend on what the numbers mean."""
    rng = np.random.default_rng(seed)
    timeouts = np.zeros(size, bool)
    timeouts[episode_length - 1 :: episode_length] = True
    spec = DatasetSpec(
        id=f"synthetic-{size}",
        source="perf",
        env_id=None,
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


def matmul_roofline(rows: int, width: int = 256, length: int = 200, repeats: int = 3) -> float:
    """FLOP/s of a scan of dependent ``[rows, width] @ [width, width]`` matmuls (the MLP's hot shape)."""
    weights = jax.random.normal(jax.random.key(0), (width, width)) / np.sqrt(width)

    def chain(x: jax.Array) -> jax.Array:
        return jax.lax.scan(lambda h, _: (jnp.tanh(h @ weights), None), x, None, length=length)[0]

    compiled = jax.jit(chain).lower(jnp.ones((rows, width))).compile()
    x = jnp.ones((rows, width))
    jax.block_until_ready(compiled(x))
    timings = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(compiled(x))
        timings.append(time.perf_counter() - tic)
    return 2.0 * rows * width * width * length / statistics.median(timings)


@dataclasses.dataclass
class Measurement:
    algorithm: str
    seeds: int
    dataset_size: int
    updates_per_second_per_seed: float
    compile_seconds: float
    flops_per_update: float
    achieved_flops_per_second: float
    roofline_flops_per_second: float

    @property
    def roofline_fraction(self) -> float:
        return self.achieved_flops_per_second / self.roofline_flops_per_second


def measure_algorithm(
    name: str,
    dataset: Dataset,
    num_seeds: int,
    chunk: int = 200,
    repeats: int = 3,
    hparams: dict[str, Any] | None = None,
) -> Measurement:
    algorithm = get_algorithm(name)
    cfg = algorithm.Config(**(hparams or {}))
    data = sampling.prepare(dataset, cfg)
    shared = shared_arrays(algorithm, data, cfg)
    init_keys, keys = seed_keys(tuple(range(num_seeds)))
    states = init_states(algorithm, data, cfg, init_keys)
    tic = time.perf_counter()
    train = make_train_chunk(algorithm, cfg, chunk).lower(states, keys, data, shared).compile()
    compile_seconds = time.perf_counter() - tic
    # XLA's cost analysis counts a loop body once, so a one-update program gives FLOPs per update.
    single = make_train_chunk(algorithm, cfg, 1).lower(states, keys, data, shared).compile()
    flops = float(single.cost_analysis().get("flops", float("nan"))) / num_seeds
    states, keys, _, _ = train(states, keys, data, shared)
    jax.block_until_ready(states)
    timings = []
    for _ in range(repeats):
        tic = time.perf_counter()
        states, keys, _, _ = train(states, keys, data, shared)
        jax.block_until_ready(states)
        timings.append(time.perf_counter() - tic)
    rate = chunk / statistics.median(timings)
    hidden = getattr(cfg, "hidden_dims", (256,))
    roofline = matmul_roofline(cfg.batch_size * num_seeds, width=max(hidden))
    return Measurement(
        name, num_seeds, dataset.size, rate, compile_seconds, flops, flops * rate * num_seeds, roofline
    )


def evaluation_throughput(
    env_id: str = "Hopper-v5", environments: int = 30, steps: int = 3000
) -> dict[str, float]:
    """Env steps/s through the batched evaluation loop (zero actions) against bare ``env.step``."""
    import gymnasium as gym

    from offbench.bench.evaluate import Evaluator

    spec = DatasetSpec(
        id="perf",
        source="perf",
        env_id=env_id,
        observation_dim=11,
        action_dim=3,
        action_low=(-1.0,) * 3,
        action_high=(1.0,) * 3,
    )
    evaluator = Evaluator(spec, seeds=tuple(range(environments // 10)), episodes=10)
    policy = jax.jit(lambda observations: jnp.zeros(observations.shape[:-1] + (3,)))
    tic = time.perf_counter()
    while evaluator.env_steps < steps:
        evaluator.run(lambda observations, call: policy(observations))
    evaluation_rate = evaluator.env_steps / (time.perf_counter() - tic)
    env = gym.make(env_id)
    env.reset(seed=0)
    action = np.zeros(3, np.float32)
    tic = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()
    bare_rate = steps / (time.perf_counter() - tic)
    return {
        "evaluation_env_steps_per_second": evaluation_rate,
        "bare_env_steps_per_second": bare_rate,
        "evaluation_overhead_fraction": 1.0 - evaluation_rate / bare_rate,
    }


def run(
    algorithms: Sequence[str],
    seed_counts: Sequence[int] = (1, 4, 16),
    dataset_sizes: Sequence[int] = (200_000,),
    chunk: int = 200,
    out: Path | None = Path("results/perf"),
) -> pd.DataFrame:
    device = jax.devices()[0]
    rows = []
    for size in dataset_sizes:
        dataset = random_dataset(size)
        for name in algorithms:
            for num_seeds in seed_counts:
                m = measure_algorithm(name, dataset, num_seeds, chunk=chunk)
                rows.append({**dataclasses.asdict(m), "roofline_fraction": m.roofline_fraction})
    frame = pd.DataFrame(rows)
    frame["device"] = f"{device.platform}:{device.device_kind}"
    for key, value in evaluation_throughput().items():
        frame[key] = value
    frame["git_sha"] = results.provenance()["git_sha"]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(out / f"{device.platform}.parquet", index=False)
    return frame
