"""``offbench perf``: the command that runs the perf benchmark (``bench/perf/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from offbench.bench.cli_common import console, fail


def register(app: typer.Typer) -> None:
    """Add ``perf`` to the ``offbench`` command, where ``offbench --help`` lists it."""
    app.command(epilog=EPILOG)(perf)


EPILOG = (
    "See bench/perf/ (bench/perf/gpu_check.py for --gpu-check) for what each column measures and how the "
    "roofline is built."
)


def perf(
    algorithm: Annotated[
        list[str],
        typer.Option(
            "--algorithm",
            "-a",
            help="Algorithm to measure: a built-in, a plug-in's name, a .py file or a module (repeatable; "
            "default: every built-in).",
        ),
    ] = [],  # noqa: B006
    seeds: Annotated[
        str | None, typer.Option(help="Vmapped seed counts, comma-separated (default 1,4,16; --quick 1,4).")
    ] = None,
    size: Annotated[
        str | None,
        typer.Option(
            help="Synthetic dataset sizes in transitions, comma-separated "
            "(default 200000,1000000; --quick 200000)."
        ),
    ] = None,
    chunk: Annotated[int, typer.Option(help="Updates per jitted call (lax.scan length).")] = 10,
    seconds: Annotated[
        float | None, typer.Option(help="Least seconds per timed repeat (default 2; --quick 0.5).")
    ] = None,
    repeats: Annotated[int, typer.Option(help="Timed repeats per cell; the median is reported.")] = 3,
    evaluation: Annotated[
        bool, typer.Option(help="Measure evaluation env steps/s (offbench evaluator, gymnasium, envpool).")
    ] = True,
    datasets: Annotated[
        bool, typer.Option(help="Measure loading offbench/hopper/medium-v0 and generating a small dataset.")
    ] = True,
    prdc_data: Annotated[
        bool,
        typer.Option(
            help="With PRDC: also time PRDC and TD3+BC on offbench/hopper/medium-expert-v0 (generated if "
            "missing) after 2,000 training updates, the cells PRDC's cost target is judged on."
        ),
    ] = True,
    quick: Annotated[
        bool,
        typer.Option("--quick", help="Seeds 1,4, 200k transitions, shorter repeats; writes <device>-quick/."),
    ] = False,
    gpu_check: Annotated[
        bool,
        typer.Option(
            "--gpu-check",
            help="The accelerator check instead: TD3+BC, IQL and A2PR at 1, 16 and 64 seeds on 1M "
            "transitions, a large-matmul roofline, the evaluation share of a short run, device memory; "
            "writes <device>-gpu-check/. With --quick: 1 and 2 seeds, small enough for a CPU.",
        ),
    ] = False,
    out: Annotated[
        Path, typer.Option(help="Parent directory of the <device>/ folder of parquet files.")
    ] = Path("results/perf"),
) -> None:
    """Measure training and evaluation speed against the machine's matmul roofline.

    Per algorithm, dataset size and vmapped seed count: updates/s per seed, compile seconds, XLA FLOPs
    per update, the fraction of a matmul roofline of the network's shapes measured in the same run, and
    the cost relative to TD3+BC. Then evaluation env steps/s, dataset load and generation seconds, and
    the targets with pass/fail. Tables go to stdout and to OUT/<device>/*.parquet.

    Full table (every algorithm; seeds 1,4,16; 200k and 1M transitions; roughly 30-40 minutes on a
    2-core CPU, most of it CQL, DQC and A2PR at 16 seeds): offbench perf

    Quick look (seeds 1,4; 200k transitions; 0.5 s timed repeats; about 10 minutes on one CPU core):
    offbench perf --quick

    PRDC beside TD3+BC on 200k and 1M transitions:
    offbench perf -a td3bc -a prdc --size 200000,1000000 --no-evaluation --no-datasets

    On a GPU (a few minutes; --quick runs it on a CPU in a few): offbench perf --gpu-check
    """
    from rich.console import Console as StdoutConsole

    from offbench.algorithms.registry import UnknownAlgorithmError, available_algorithms, get_algorithm
    from offbench.bench.perf import benchmark, render
    from offbench.bench.perf.measure import device_slug
    from offbench.bench.perf.updates import PRDC_DATASET

    def positive_ints(text: str, option: str) -> list[int]:
        try:
            values = [int(part) for part in text.split(",")]
        except ValueError:
            values = []
        if not values or min(values) <= 0:
            raise typer.BadParameter(f"{option} takes positive integers separated by commas, got {text!r}.")
        return values

    stdout = StdoutConsole(width=180, highlight=False)
    if gpu_check:
        from offbench.bench.perf import gpu_check as gpu_check_module

        if algorithm or seeds or size:
            fail("--gpu-check measures a fixed plan: drop --algorithm, --seeds and --size, or --gpu-check.")
        checked = gpu_check_module.run(
            gpu_check_module.QUICK if quick else gpu_check_module.FULL, log=console.print
        )
        for table in gpu_check_module.render(checked):
            stdout.print(table)
        folder = device_slug(checked.device) + "-gpu-check" + ("-quick" if quick else "")
        for path in gpu_check_module.write(checked, out / folder):
            print(f"written: {path}")
        return
    try:
        for name in algorithm:  # a built-in, an installed plug-in, a .py file or a module
            get_algorithm(name)
        algorithms = list(algorithm) or available_algorithms()
    except UnknownAlgorithmError as error:
        fail(str(error))
    seed_counts = positive_ints(seeds or ("1,4" if quick else "1,4,16"), "--seeds")
    sizes = positive_ints(size or ("200000" if quick else "200000,1000000"), "--size")
    tables = benchmark.run(
        algorithms,
        seed_counts,
        sizes,
        chunk=chunk,
        repeats=repeats,
        min_seconds=seconds or (0.5 if quick else 2.0),
        evaluation_seeds=5 if evaluation else None,
        generate_size=10_000 if datasets else None,
        prdc_dataset=PRDC_DATASET if prdc_data else None,
        log=console.print,
    )
    for table in render.render(tables):
        stdout.print(table)
    folder = device_slug(tables.device) + ("-quick" if quick else "")
    for path in benchmark.write(tables, out / folder):
        print(f"written: {path}")
