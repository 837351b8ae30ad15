"""``offbench perf --gpu-check``: what a short loan of one accelerator should measure, in one command.

Four tables, written as parquet under ``results/perf/<device>-gpu-check/`` and printed on stdout:

- ``updates``: TD3+BC, IQL and A2PR on one synthetic 1M-transition dataset at 1, 16 and 64 vmapped seeds:
  updates per second per seed, compile seconds, FLOPs per update, the per-shape matmul roofline of
  ``offbench perf`` and the memory the update chunk needs (see ``memory`` below).
- ``roofline``: the device's matmul roofline, the FLOP/s of one large float32 ``[n, n] @ [n, n]`` at the
  default precision (what the updates use), with nothing else in the program.
- ``evaluation_share``: a short TD3+BC run through the training engine with real Hopper-v5 evaluation:
  the share of its wall time spent evaluating, beside training and compiling.
- ``memory``: the dataset's bytes on the device and the device's peak bytes in use over the whole check.

Memory per update chunk comes from XLA's analysis of the compiled chunk (``Compiled.memory_analysis``):
argument bytes (the dataset arrays the algorithm reads, shared arrays, every seed's state and key),
output bytes that are not donated arguments, and temporaries. The dataset is an argument of the chunk
that ``vmap`` leaves unbatched, so it is counted once whatever the seed count; the rest grows with the
seeds. The device's own peak (``Device.memory_stats()['peak_bytes_in_use']``) is reported where the
backend keeps one (GPU, TPU); the CPU backend keeps none, and the column is empty there.

On a GPU the full check should take a few minutes, compiles first (an estimate: no GPU has run it yet).
``--quick`` shrinks it to 1 and 2 seeds, a small roofline and a tiny run, so that it also runs on a CPU,
where it is tested.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import pandas as pd
from rich.table import Table

from offbench.bench.perf.measure import device_description, device_peak_bytes, seconds_per_call
from offbench.bench.perf.output import new_table, write_frames
from offbench.bench.perf.updates import Measurement, measure_cells, random_dataset, with_td3bc_cost
from offbench.bench.train import Job, identify, run_job
from offbench.datasets.dataset import Dataset

ALGORITHMS = ("td3bc", "iql", "a2pr")
DATASET_SIZE = 1_000_000
EVALUATION_ENV_ID = "Hopper-v5"


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much the check measures; ``FULL`` fits a short GPU loan, ``QUICK`` a CPU test."""

    seed_counts: tuple[int, ...]
    dataset_size: int
    chunk: int  # updates per jitted call
    repeats: int
    min_seconds: float  # least seconds per timed repeat
    matmul_size: int  # n of the roofline's [n, n] @ [n, n]
    run_seeds: int  # the evaluation-share run: seeds, updates, evaluation interval and episodes
    run_steps: int
    run_eval_every: int
    run_episodes: int


FULL = Settings(
    seed_counts=(1, 16, 64),
    dataset_size=DATASET_SIZE,
    chunk=100,
    repeats=3,
    min_seconds=1.0,
    matmul_size=8192,
    run_seeds=16,
    run_steps=10_000,
    run_eval_every=5_000,
    run_episodes=10,
)
QUICK = Settings(
    seed_counts=(1, 2),
    dataset_size=DATASET_SIZE,
    chunk=10,
    repeats=2,
    min_seconds=0.2,
    matmul_size=1024,
    run_seeds=2,
    run_steps=100,
    run_eval_every=50,
    run_episodes=1,
)


# --------------------------------------------------------------------------------------------------
# Measurements


def measure_updates(
    dataset: Dataset,
    settings: Settings,
    algorithms: Sequence[str] = ALGORITHMS,
    log: Callable[[str], Any] | None = None,
) -> pd.DataFrame:
    """Every algorithm x seed count of ``settings`` on ``dataset``; FLOPs counted once per algorithm."""

    def log_cell(m: Measurement) -> None:
        log(f"{m.algorithm}, {m.seeds} seeds: {m.progress()}, chunk {m.chunk_peak_bytes / 2**20:,.0f} MiB")

    measurements = measure_cells(
        algorithms,
        dataset,
        settings.seed_counts,
        None if log is None else log_cell,
        chunk=settings.chunk,
        repeats=settings.repeats,
        min_seconds=settings.min_seconds,
    )
    return with_td3bc_cost(pd.DataFrame([m.row() for m in measurements]))


def matmul_roofline(size: int, repeats: int = 5, min_seconds: float = 0.5) -> pd.DataFrame:
    """FLOP/s of one float32 ``[size, size] @ [size, size]`` at the default precision, the fastest of
    ``repeats`` (see ``updates.matmul_roofline`` for why the fastest)."""
    a_key, b_key = jax.random.split(jax.random.key(0))
    a, b = jax.random.normal(a_key, (size, size)), jax.random.normal(b_key, (size, size))
    compiled = jax.jit(jnp.matmul).lower(a, b).compile()
    seconds = min(seconds_per_call(lambda: compiled(a, b), min_seconds, repeats))
    return pd.DataFrame(
        [
            {
                "shape": f"{size}x{size} @ {size}x{size}",
                "dtype": "float32",
                "precision": str(jax.config.jax_default_matmul_precision or "default"),
                "seconds": seconds,
                "flops_per_second": 2.0 * size**3 / seconds,
            }
        ]
    )


def evaluation_share(dataset: Dataset, settings: Settings) -> pd.DataFrame:
    """A short TD3+BC run with evaluation in ``dataset``'s environment: where its wall time goes."""
    job = Job(
        "td3bc",
        dataset.spec.id,
        seeds=tuple(range(settings.run_seeds)),
        steps=settings.run_steps,
        eval_every=settings.run_eval_every,
        eval_episodes=settings.run_episodes,
        final_k=1,
        suite="gpu-check",
    )
    # The synthetic dataset has no files to fingerprint; its id names it within this run.
    identity = identify(job, dataset_fingerprint=dataset.spec.id)
    runs = run_job(job, dataset=dataset, identity=identity, log=lambda _: None).runs
    train, compile_, evaluate = (
        float(runs[column].iloc[0]) for column in ("train_seconds", "compile_seconds", "eval_seconds")
    )
    return pd.DataFrame(
        [
            {
                "algorithm": "td3bc",
                "env": dataset.spec.env_id,
                "seeds": settings.run_seeds,
                "updates": settings.run_steps,
                "evaluations": job.evaluations,
                "episodes_per_seed": settings.run_episodes,
                "train_seconds": train,
                "compile_seconds": compile_,
                "eval_seconds": evaluate,
                "evaluation_share": evaluate / (train + compile_ + evaluate),
                "evaluation_share_without_compile": evaluate / (train + evaluate),
            }
        ]
    )


@dataclasses.dataclass
class GpuCheckTables:
    device: str
    updates: pd.DataFrame
    roofline: pd.DataFrame
    evaluation_share: pd.DataFrame
    memory: pd.DataFrame

    def frames(self) -> dict[str, pd.DataFrame]:
        return {
            "updates": self.updates,
            "roofline": self.roofline,
            "evaluation_share": self.evaluation_share,
            "memory": self.memory,
        }


def run(
    settings: Settings = FULL,
    algorithms: Sequence[str] = ALGORITHMS,
    log: Callable[[str], Any] | None = None,
) -> GpuCheckTables:
    """The whole check: updates, roofline, evaluation share, memory."""
    device = device_description()
    dataset = random_dataset(settings.dataset_size, env_id=EVALUATION_ENV_ID)
    updates = measure_updates(dataset, settings, algorithms, log)
    roofline = matmul_roofline(settings.matmul_size, min_seconds=settings.min_seconds)
    if log is not None:
        log(f"matmul roofline: {roofline.flops_per_second.iloc[0] / 1e12:.3f} TFLOP/s")
    share = evaluation_share(dataset, settings)
    if log is not None:
        log(f"evaluation share of a short run: {share.evaluation_share.iloc[0]:.0%}")
    memory = pd.DataFrame(
        [
            {
                "dataset_transitions": dataset.size,
                "dataset_bytes": int(updates.dataset_bytes.max()),
                "largest_chunk_peak_bytes": int(updates.chunk_peak_bytes.max()),
                "device_peak_bytes": device_peak_bytes(),
            }
        ]
    )
    return GpuCheckTables(device, updates, roofline, share, memory)


def write(tables: GpuCheckTables, directory: Path) -> list[Path]:
    """One parquet file per table under ``directory``, each row stamped with the device and provenance."""
    return write_frames(tables.device, tables.frames(), directory)


# --------------------------------------------------------------------------------------------------
# Rendering


def mebibytes(value: float) -> str:
    """Bytes as whole MiB; empty where the backend keeps no count (NaN)."""
    return "" if math.isnan(value) else f"{value / 2**20:,.0f}"


def render(tables: GpuCheckTables) -> list[Table]:
    """The tables ``offbench perf --gpu-check`` prints."""
    updates = new_table(
        f"gpu check: updates on {tables.device}",
        (
            "algorithm", "seeds", "updates/s/seed", "updates/s", "× td3bc cost", "compile s", "GFLOP/s",
            "% roofline", "dataset MiB", "state MiB", "chunk peak MiB", "device peak MiB",
        ),
        left=("algorithm",),
    )  # fmt: skip
    for r in tables.updates.itertuples():
        updates.add_row(
            r.algorithm,
            str(r.seeds),
            f"{r.updates_per_second_per_seed:,.1f}",
            f"{r.updates_per_second_per_seed * r.seeds:,.0f}",
            "" if math.isnan(r.cost_vs_td3bc) else f"{r.cost_vs_td3bc:.2f}",
            f"{r.compile_seconds:.1f}",
            f"{r.achieved_flops_per_second / 1e9:,.1f}",
            f"{100 * r.roofline_fraction:.0f}",
            mebibytes(r.dataset_bytes),
            mebibytes(r.state_bytes),
            mebibytes(r.chunk_peak_bytes),
            mebibytes(r.device_peak_bytes),
        )
    columns = ("shape", "dtype", "precision", "TFLOP/s")
    roofline = new_table("matmul roofline", columns, left=columns)
    for r in tables.roofline.itertuples():
        roofline.add_row(r.shape, r.dtype, r.precision, f"{r.flops_per_second / 1e12:.3f}")
    share = new_table(
        "evaluation share of a short run",
        ("run", "train s", "compile s", "eval s", "eval share", "eval share (no compile)"),
        left=("run",),
    )
    for r in tables.evaluation_share.itertuples():
        share.add_row(
            f"{r.algorithm}, {r.seeds} seeds, {r.updates:,} updates, {r.evaluations} x {r.episodes_per_seed} "
            f"episodes of {r.env}",
            f"{r.train_seconds:.1f}",
            f"{r.compile_seconds:.1f}",
            f"{r.eval_seconds:.1f}",
            f"{r.evaluation_share:.0%}",
            f"{r.evaluation_share_without_compile:.0%}",
        )
    memory = new_table(
        "memory",
        ("dataset transitions", "dataset MiB", "largest chunk peak MiB", "device peak MiB"),
        left=(),
    )
    for r in tables.memory.itertuples():
        memory.add_row(
            f"{r.dataset_transitions:,}",
            mebibytes(r.dataset_bytes),
            mebibytes(r.largest_chunk_peak_bytes),
            mebibytes(r.device_peak_bytes) or "not kept by this backend",
        )
    return [updates, roofline, share, memory]
