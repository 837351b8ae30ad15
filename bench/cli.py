"""The ``offbench`` command."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="offbench: JAX offline-RL benchmarks with vmapped seeds and tidy parquet results.",
)
console = Console(stderr=True)


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0-4' -> (0,1,2,3,4); '0,2,5' -> (0,2,5); '3' -> (3,). Ranges and lists may be mixed."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise typer.BadParameter(
                f"cannot parse {text!r}: use a range '0-4', a list '0,2,5' or a single seed '3' "
                "(non-negative integers)."
            )
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise typer.BadParameter(f"empty seed range {part!r}: write the smaller seed first, e.g. '0-4'.")
        seeds.extend(range(low, high + 1))
    if len(set(seeds)) != len(seeds):
        raise typer.BadParameter(f"seeds {text!r} repeat a seed.")
    return tuple(seeds)


def parse_hparams(items: list[str]) -> tuple[tuple[str, str], ...]:
    parsed = []
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"hyper-parameter {item!r} must look like name=value, e.g. alpha=2.5.")
        name, value = item.split("=", 1)
        parsed.append((name.strip(), value.strip()))
    return tuple(parsed)


def fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


@app.command()
def run(
    algorithm: Annotated[str, typer.Option(help="Algorithm name, e.g. td3bc, iql, bc.")],
    dataset: Annotated[
        str,
        typer.Option(
            help="Minari dataset id, OGBench singletask name, or path to a D4RL-format .hdf5 or OGBench "
            ".npz file."
        ),
    ],
    seeds: Annotated[
        str, typer.Option(help="Seeds trained together (vmapped): '0-4', '0,2,5' or '3'.")
    ] = "0-2",
    steps: Annotated[int, typer.Option(help="Gradient updates per seed.")] = 10_000,
    eval_every: Annotated[int, typer.Option(help="Updates between evaluations.")] = 2_000,
    eval_episodes: Annotated[int, typer.Option(help="Episodes per seed at each evaluation.")] = 10,
    final_k: Annotated[int, typer.Option(help="Final score = mean of the last k evaluations.")] = 3,
    out: Annotated[Path, typer.Option(help="Output directory for evals/ and runs/ parquet files.")] = Path(
        "runs"
    ),
    hparam: Annotated[
        list[str], typer.Option("--hparam", "-p", help="Override a hyper-parameter: name=value (repeatable).")
    ] = [],  # noqa: B006
    env: Annotated[str | None, typer.Option(help="Evaluation env id, when the dataset names none.")] = None,
    download: Annotated[
        bool, typer.Option(help="Download a missing Minari or OGBench dataset (needs internet).")
    ] = False,
) -> None:
    """Train and evaluate one algorithm on one dataset, several seeds at once."""
    from offbench.algorithms import UnknownAlgorithmError, get_algorithm
    from offbench.bench import results
    from offbench.bench.train import Job, job_name, resolve, run_job
    from offbench.datasets.dataset import DatasetError
    from offbench.datasets.sources import load_dataset

    seed_values = parse_seeds(seeds)
    try:
        get_algorithm(algorithm)
        results.check_output_dir(out)
        job = Job(
            algorithm=algorithm,
            dataset=dataset,
            seeds=seed_values,
            steps=steps,
            eval_every=eval_every,
            eval_episodes=eval_episodes,
            hparams=parse_hparams(hparam),
            final_k=final_k,
            env_id=env,
            download=download,
        )
        resolve(job)  # validates the hyper-parameters before the (slower) dataset load
        with console.status(f"loading {dataset}"):
            data = load_dataset(dataset, env_id=env, download=download)
    except (UnknownAlgorithmError, DatasetError, ValueError) as error:
        fail(str(error))

    console.print(
        f"[bold]{algorithm}[/] on [bold]{data.spec.id}[/]: {data.size:,} transitions, "
        f"{data.num_episodes:,} episodes, seeds {list(seed_values)}, {steps:,} updates each"
    )
    if not data.spec.has_reference_scores:
        console.print(
            "[yellow]no reference scores for this dataset: normalized_score will be null; raw "
            "returns are recorded.[/]"
        )
    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[score]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("updates", total=steps, rate="compiling…", score="")

        def report(chunk) -> None:
            score = (
                f"score {chunk.normalized_score:.1f}"
                if chunk.normalized_score is not None
                else f"return {chunk.return_mean:.1f}"
            )
            progress.update(
                task, completed=chunk.step, score=score, rate=f"{chunk.updates_per_second:,.0f} upd/s/seed"
            )

        try:
            evals, runs = run_job(job, dataset=data, on_chunk=report)
        except ValueError as error:
            fail(str(error))
    name = job_name(job)
    evals_path, runs_path = results.write_job(out, name, evals, runs)
    columns = ["seed", "final_score", "final_return", "status"]
    if runs["final_success_rate"].notna().any():  # environments that report success (OGBench)
        columns.insert(3, "final_success_rate")
    summary = runs[columns].to_string(index=False)
    console.print(summary)
    print(f"evals: {evals_path}\nruns:  {runs_path}")


@app.command()
def sweep(
    suite: Annotated[
        str, typer.Argument(help="Built-in suite name (default, ci, ...) or a suite TOML file.")
    ],
    out: Annotated[Path | None, typer.Option(help="Output directory (default: results/<suite>).")] = None,
    executor: Annotated[str, typer.Option(help="local, or ray for one Ray task per job.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (with --executor ray).")] = None,
    download: Annotated[
        bool, typer.Option("--download", help="Fetch the suite's missing remote Minari ids (needs internet).")
    ] = False,
) -> None:
    """Run every job of a suite (seeds vmapped inside each job); reruns skip finished jobs."""
    from offbench.bench.suite import SuiteError, load_suite
    from offbench.bench.sweep import plan, run_local, run_ray

    try:
        suite_spec = load_suite(suite)
        out = out or Path("results") / suite_spec.name
        with console.status("validating the suite and preparing datasets"):
            todo, done = plan(suite_spec, out, download)
    except (SuiteError, ValueError) as error:
        fail(str(error))
    console.print(
        f"suite [bold]{suite_spec.name}[/]: {len(todo) + len(done)} jobs, {len(done)} already "
        f"finished, seeds {list(suite_spec.seeds)} per job, output {out}"
    )
    if executor == "ray":
        finished, failed = run_ray(todo, out, address)
    elif executor == "local":
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[detail]}"),
        ]
        with Progress(*columns, console=console) as progress:
            finished, failed = run_local(todo, out, progress)
    else:
        fail(f"unknown executor {executor!r}: use 'local' or 'ray'.")
    console.print(f"finished {len(finished)} jobs, skipped {len(done)}, failed {len(failed)}")
    for name, message in failed.items():
        console.print(f"[red]failed[/] {name}: {message} (details in {out / 'failures' / (name + '.json')})")
    print(f"results: {out}")
    if failed:
        raise typer.Exit(code=1)


@app.command()
def report(
    results_dir: Annotated[Path, typer.Argument(help="Results directory holding runs/ and evals/.")],
    out: Annotated[
        Path | None, typer.Option(help="Where to write the report (default: the results directory).")
    ] = None,
    reps: Annotated[
        int, typer.Option(help="Bootstrap resamples for the per-dataset and aggregate intervals.")
    ] = 50_000,
    profile_reps: Annotated[
        int, typer.Option(help="Bootstrap resamples for performance-profile and learning-curve bands.")
    ] = 2_000,
    seed: Annotated[int, typer.Option(help="Seed of every bootstrap (same seed, same report).")] = 0,
) -> None:
    """Write LEADERBOARD.md, leaderboard.html and PNG plots for a results directory."""
    from offbench.bench.report import ReportError, write_report

    try:
        with console.status(f"reporting {results_dir}"):
            paths = write_report(results_dir, out, reps=reps, profile_reps=profile_reps, seed=seed)
    except ReportError as error:
        fail(str(error))
    print("\n".join(str(path) for path in paths))


@app.command()
def check(
    results: Annotated[Path, typer.Option(help="Results directory whose runs/ are checked.")],
    baseline: Annotated[Path, typer.Option(help="Baseline runs parquet, e.g. results/ci/baseline.parquet.")],
    write_baseline: Annotated[
        bool,
        typer.Option("--write-baseline", help="Write BASELINE from the results' runs instead of checking."),
    ] = False,
    alpha: Annotated[float, typer.Option(help="One-sided test level per pair.")] = 0.05,
    abs_tol: Annotated[float, typer.Option(help="Smallest allowed drop, in score (or return) units.")] = 1.0,
    rel_tol: Annotated[
        float, typer.Option(help="Smallest allowed drop, as a fraction of the baseline mean.")
    ] = 0.02,
) -> None:
    """Fail (exit 1) when final scores regress beyond seed noise relative to a baseline."""
    from rich.console import Console as StdoutConsole

    from offbench.bench import check as checking

    try:
        if write_baseline:
            print(f"baseline: {checking.write_baseline(results, baseline)}")
            return
        pairs = checking.compare(
            checking.read_results_runs(results),
            checking.read_runs(baseline, "baseline"),
            alpha=alpha,
            abs_tol=abs_tol,
            rel_tol=rel_tol,
        )
    except checking.CheckError as error:
        fail(str(error))
    # The verdict table is the command's output, so it goes to stdout (CI logs), wide enough not to wrap.
    StdoutConsole(width=160, highlight=False).print(checking.verdict_table(pairs))
    failures = [pair for pair in pairs if pair.failed]
    for pair in failures:
        console.print(f"[red]✗[/] {pair.explanation()}", highlight=False)
    if failures:
        console.print(f"[bold red]check failed:[/] {len(failures)} of {len(pairs)} pairs.")
        raise typer.Exit(code=1)
    console.print(f"[green]check passed:[/] {len(pairs)} pairs.")


datasets_app = typer.Typer(no_args_is_help=True, help="Generate, list and inspect datasets.")
app.add_typer(datasets_app, name="datasets")


@datasets_app.command("generate")
def datasets_generate(
    env: Annotated[
        list[str],
        typer.Option(
            help="hopper, halfcheetah, walker2d, or ogbench-cube-single (OGBench play data from its scripted "
            "oracle); repeatable; default: the three MuJoCo environments."
        ),
    ] = [],  # noqa: B006
    size: Annotated[int, typer.Option(help="Transitions per base dataset.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives identical arrays.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace datasets that already exist.")] = False,
    task: Annotated[
        list[int],
        typer.Option(
            help="OGBench singletask task(s), 1-5, that label the play data (repeatable; default 1)."
        ),
    ] = [],  # noqa: B006
) -> None:
    """Generate offbench/<env>/* datasets from the committed behaviour policies, and OGBench play data
    (offbench/ogbench/*) from OGBench's scripted oracle (no internet)."""
    from offbench.datasets.dataset import DatasetError, suggest
    from offbench.datasets.generate import catalog, ogbench_play

    envs = env or list(catalog.ENVS)
    known = [*catalog.ENVS, *ogbench_play.CLI_ENVS]
    tasks = tuple(task) or (ogbench_play.DEFAULT_TASK,)
    try:
        unknown = [name for name in envs if name not in known]
        if unknown:
            raise DatasetError(
                f"unknown environment {unknown[0]!r}.{suggest(unknown[0], known)} "
                f"Choose from {', '.join(known)}."
            )
        if task and not any(name in ogbench_play.CLI_ENVS for name in envs):
            raise DatasetError("--task labels OGBench play data: use it with --env ogbench-cube-single.")
        for name in envs:  # every environment is checked (policies included) before any is generated
            if name in ogbench_play.CLI_ENVS:
                ogbench_play.plan_generation(ogbench_play.CLI_ENVS[name], tasks, size, overwrite)
            else:
                catalog.plan_generation(name, size=size, overwrite=overwrite)
        for name in envs:
            if name in ogbench_play.CLI_ENVS:
                with console.status(f"generating {ogbench_play.NAMESPACE}{ogbench_play.CLI_ENVS[name]}-*"):
                    written = ogbench_play.generate_play(
                        ogbench_play.CLI_ENVS[name],
                        tasks,
                        size=size,
                        seed=seed,
                        overwrite=overwrite,
                        log=console.print,
                    )
            else:
                with console.status(f"generating offbench/{name}/*"):
                    written = catalog.generate_env(
                        name, size=size, seed=seed, overwrite=overwrite, log=console.print, quality=True
                    )
            console.print(f"{name}: {len(written)} datasets written under {catalog.minari_datasets_path()}")
    except (DatasetError, ValueError, FileNotFoundError) as error:
        fail(str(error))


@datasets_app.command("list")
def datasets_list() -> None:
    """List local Minari datasets with their size and reference scores."""
    import minari

    for dataset_id, metadata in sorted(minari.list_local_datasets().items()):
        refs = (
            f"refs [{metadata['ref_min_score']:.1f}, {metadata['ref_max_score']:.1f}]"
            if "ref_max_score" in metadata
            else "no reference scores"
        )
        print(
            f"{dataset_id:48s} {metadata.get('total_steps', 0):>9,} steps "
            f"{metadata.get('total_episodes', 0):>6,} episodes  {refs}"
        )


@datasets_app.command("info")
def datasets_info(
    dataset: Annotated[str, typer.Argument(help="Minari id, OGBench singletask name, or HDF5/npz path.")],
) -> None:
    """Print a dataset's return statistics and quality metrics (TQ, SACo)."""
    from offbench.datasets.dataset import DatasetError
    from offbench.datasets.generate import catalog
    from offbench.datasets.sources import load_dataset

    try:
        data = load_dataset(dataset)
    except DatasetError as error:
        fail(str(error))
    for key, value in {**data.summary(), **(catalog.read_quality(dataset) or {})}.items():
        print(f"{key:28s} {value}")


@app.command(epilog="See bench/perf.py for what each column measures and how the roofline is built.")
def perf(
    algorithm: Annotated[
        list[str], typer.Option("--algorithm", "-a", help="Algorithm to measure (repeatable; default all).")
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
    out: Annotated[
        Path, typer.Option(help="Parent directory of the <device>/ folder of parquet files.")
    ] = Path("results/perf"),
) -> None:
    """Measure training and evaluation speed against the machine's matmul roofline (issue #7).

    Per algorithm, dataset size and vmapped seed count: updates/s per seed, compile seconds, XLA FLOPs
    per update, the fraction of a matmul roofline of the network's shapes measured in the same run, and
    the cost relative to TD3+BC. Then evaluation env steps/s, dataset load and generation seconds, and
    the targets with pass/fail. Tables go to stdout and to OUT/<device>/*.parquet.

    Full table (every algorithm; seeds 1,4,16; 200k and 1M transitions; roughly 30-40 minutes on a
    2-core CPU, most of it CQL, DQC and A2PR at 16 seeds): offbench perf

    Quick look (seeds 1,4; 200k transitions; 0.5 s timed repeats; about 10 minutes on one CPU core):
    offbench perf --quick

    PRDC beside TD3+BC on 200k and 1M transitions (issue #4):
    offbench perf -a td3bc -a prdc --size 200000,1000000 --no-evaluation --no-datasets
    """
    from rich.console import Console as StdoutConsole

    from offbench.algorithms import UnknownAlgorithmError, available_algorithms, get_algorithm
    from offbench.bench import perf as perf_module

    def positive_ints(text: str, option: str) -> list[int]:
        try:
            values = [int(part) for part in text.split(",")]
        except ValueError:
            values = []
        if not values or min(values) <= 0:
            raise typer.BadParameter(f"{option} takes positive integers separated by commas, got {text!r}.")
        return values

    try:
        algorithms = [get_algorithm(name).name for name in algorithm] or available_algorithms()
    except UnknownAlgorithmError as error:
        fail(str(error))
    seed_counts = positive_ints(seeds or ("1,4" if quick else "1,4,16"), "--seeds")
    sizes = positive_ints(size or ("200000" if quick else "200000,1000000"), "--size")
    tables = perf_module.run(
        algorithms,
        seed_counts,
        sizes,
        chunk=chunk,
        repeats=repeats,
        min_seconds=seconds or (0.5 if quick else 2.0),
        evaluation_seeds=5 if evaluation else None,
        generate_size=10_000 if datasets else None,
        prdc_dataset=perf_module.PRDC_DATASET if prdc_data else None,
        log=console.print,
    )
    stdout = StdoutConsole(width=180, highlight=False)
    for table in perf_module.render(tables):
        stdout.print(table)
    folder = perf_module.device_slug(tables.device) + ("-quick" if quick else "")
    for path in perf_module.write(tables, out / folder):
        print(f"written: {path}")


@app.command("algorithms")
def list_algorithms() -> None:
    """List the registered algorithms."""
    from offbench.algorithms import available_algorithms

    for name in available_algorithms():
        print(name)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted; finished jobs are on disk, unfinished ones left no partial files.")
        sys.exit(130)


if __name__ == "__main__":
    main()
