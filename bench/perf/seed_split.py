"""Should a job's seeds be split across workers on a CPU? Seed-updates per second on the whole machine: one
process training every seed vmapped with XLA's threads on all the cores, against the seeds split between
one-thread processes (one per core) training side by side.

    python -m offbench.bench.perf.seed_split --algorithm td3bc --algorithm prdc --seeds 5 --rounds 2

Each process builds the same synthetic Hopper-shaped dataset as ``offbench perf``, compiles the engine's
chunk and trains one warm-up chunk, then reports ready; when every process of a layout is ready, the
parent sends them one start time, and each counts the chunks it completes in the same window from there.
So compilation never overlaps the timed window, and the split processes are timed while they share the
machine. Layouts alternate (vmapped, split, vmapped, split) so that drift in the machine's speed falls on
both. The table goes to stdout and, with ``--out``, to a CSV file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from offbench.bench.workers import thread_environment, usable_cores

CHUNK = 20


def child(algorithm_name: str, seeds: int, size: int, window_seconds: float) -> None:
    """Train ``seeds`` vmapped seeds; print ``ready``, read the start time, print the window's updates."""
    from offbench.algorithms.registry import get_algorithm
    from offbench.bench.engine import make_train_chunk
    from offbench.bench.perf.updates import random_dataset, training_inputs

    algorithm = get_algorithm(algorithm_name)
    cfg = algorithm.Config()
    data, shared, states, keys = training_inputs(algorithm, random_dataset(size), cfg, seeds)
    train = make_train_chunk(algorithm, cfg, CHUNK).lower(states, keys, data, shared).compile()
    states, keys, _, _ = train(states, keys, data, shared)
    states.step.block_until_ready()
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    while time.time() < start:
        time.sleep(0.001)
    chunks, end = 0, start + window_seconds
    while time.time() < end:
        states, keys, _, _ = train(states, keys, data, shared)
        states.step.block_until_ready()
        chunks += 1
    elapsed = time.time() - start
    print(json.dumps({"seed_updates_per_second": seeds * chunks * CHUNK / elapsed}), flush=True)


def measure_layout(
    algorithm: str, seed_groups: list[int], threads: int, size: int, window_seconds: float
) -> float:
    """Seed-updates/s of every process of one layout together, timed over one shared window."""
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "offbench.bench.perf.seed_split",
                "child",
                algorithm,
                str(seeds),
                str(size),
                str(window_seconds),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=thread_environment(threads),
        )
        for seeds in seed_groups
    ]
    for process in processes:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    start = time.time() + 1.0
    for process in processes:
        assert process.stdin is not None
        process.stdin.write(f"{start}\n")
        process.stdin.flush()
    total = 0.0
    for process in processes:
        output, _ = process.communicate()
        total += json.loads(output.strip().splitlines()[-1])["seed_updates_per_second"]
    return total


def split(seeds: int, parts: int) -> list[int]:
    return [seeds // parts + (1 if i < seeds % parts else 0) for i in range(parts)]


app = typer.Typer(add_completion=False)


@app.command()
def compare(
    algorithm: Annotated[list[str], typer.Option(help="Algorithms (repeatable).")] = ["td3bc", "prdc"],  # noqa: B006
    seeds: Annotated[int, typer.Option(help="Seeds of the job.")] = 5,
    size: Annotated[int, typer.Option(help="Synthetic dataset transitions.")] = 200_000,
    window: Annotated[float, typer.Option(help="Timed seconds per layout and round.")] = 30.0,
    rounds: Annotated[int, typer.Option(help="Vmapped/split pairs per algorithm.")] = 2,
    out: Annotated[Path | None, typer.Option(help="CSV file for the table.")] = None,
) -> None:
    cores = usable_cores()
    rows = []
    for name in algorithm:
        for round_index in range(rounds):
            for layout, groups, threads in (
                (f"{seeds} seeds vmapped, one process, {cores} threads", [seeds], cores),
                (
                    f"split {'+'.join(map(str, split(seeds, cores)))}, {cores} one-thread processes",
                    split(seeds, cores),
                    1,
                ),
            ):
                rate = measure_layout(name, groups, threads, size, window)
                rows.append(
                    {
                        "algorithm": name,
                        "round": round_index,
                        "layout": layout,
                        "seed_updates_per_second": rate,
                        "load_average": os.getloadavg()[0],
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    print(
        table.pivot_table(index=["algorithm", "round"], columns="layout", values="seed_updates_per_second")
        .round(1)
        .to_string()
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    else:
        app()
