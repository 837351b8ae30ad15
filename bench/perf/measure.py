"""What every perf table measures with: the device's name, wall-clock timing of jitted calls, and the
memory of arrays and compiled programs."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import platform
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

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
    """The folder name of a device's tables under ``results/perf/``."""
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
