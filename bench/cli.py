"""The ``offbench`` command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from offbench.bench import cli_algorithms, cli_perf
from offbench.bench.cli_common import console, fail
from offbench.bench.cli_datasets import datasets_app

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="offbench: JAX offline-RL benchmarks with vmapped seeds and tidy parquet results.",
)


def show_version(value: bool) -> None:
    """``--version``: the package version, and the code version that rows written now record."""
    if not value:
        return
    from offbench.bench.provenance import code_version

    code = code_version()
    if code["git_sha"] is None:
        origin = "installed package, no git checkout"
    else:
        origin = f"git {code['git_sha']}" + (", uncommitted changes" if code["git_dirty"] else "")
    print(f"offbench {code['offbench_version']}")
    print(f"code version {code['code_version']} ({origin})")
    raise typer.Exit()


@app.callback()
def offbench(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=show_version,
            is_eager=True,
            help="Print the package version and the code version results rows record, and exit.",
        ),
    ] = False,
) -> None:
    """The options given before a command (``--version``)."""


def parse_seeds(text: str) -> tuple[int, ...]:
    """'0-4' -> (0,1,2,3,4); '0,2,5' -> (0,2,5); '3' -> (3,). Ranges and lists may be mixed."""
    from offbench.bench.suite import seed_list

    try:
        return seed_list(text)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error


def parse_hparams(items: list[str]) -> tuple[tuple[str, str], ...]:
    parsed = []
    for item in items:
        if "=" not in item:
            raise typer.BadParameter(f"hyper-parameter {item!r} must look like name=value, e.g. alpha=2.5.")
        name, value = item.split("=", 1)
        parsed.append((name.strip(), value.strip()))
    return tuple(parsed)


# Where `run` and `sweep` write without --out: a folder of the working directory that git ignores, not
# results/, which holds only the committed reference runs (a suite swept there by default would skip, or with
# --on-code-change move, their rows). Not build/ either: a sweep's rows can cost hours, and build/ is what
# `python -m build`, `make test` and `make bench` treat as disposable.
LOCAL_RUNS = Path("runs")

CODE_CHANGE_HELP = (
    "What to do with finished jobs in the output directory written by other code: refuse (stop and say "
    "so), rerun (redo them; their old rows move to superseded/) or keep (leave them beside the new rows)."
)


def progress_columns(*fields: str) -> list:
    return [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *(TextColumn(f"{{task.fields[{name}]}}") for name in fields),
    ]


def interrupted(out: Path, names: list[str], command: str) -> None:
    """Ctrl-C: say what is on disk and how to carry on, then exit 130."""
    kept = [name for name in names if (out / "runs" / f"{name}.parquet").exists()]
    resumable = [name for name in names if (out / "checkpoints" / name / "progress.json").exists()]
    console.print(
        f"interrupted: {len(kept)} finished job(s) in {out}, {len(resumable)} with a checkpoint to resume; "
        f"no partial rows were written. Resume with: {command}",
        highlight=False,
        markup=False,
    )
    raise typer.Exit(code=130)


@app.command()
def run(
    algorithm: Annotated[
        str,
        typer.Option(
            help="Algorithm: a built-in (td3bc, iql, bc, ...), an installed plug-in's name, a path to a .py "
            "file declaring ALGORITHM, or a module (my_package.awr)."
        ),
    ],
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
    eval_every: Annotated[
        int | None, typer.Option(help="Updates between evaluations (default 2000, or --steps if fewer).")
    ] = None,
    eval_episodes: Annotated[int, typer.Option(help="Episodes per seed at each evaluation.")] = 10,
    final_k: Annotated[
        int | None,
        typer.Option(help="Final score = mean of the last k evaluations (default 3, or all if fewer)."),
    ] = None,
    sampler: Annotated[
        str | None,
        typer.Option(
            help="Batch sampler: uniform, rw (return-weighted), aw (advantage-weighted) or topk (best "
            "trajectories); default: the algorithm's (uniform)."
        ),
    ] = None,
    label: Annotated[
        str | None, typer.Option(help="Method name in the results (default: the algorithm's name).")
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Results directory (evals/, runs/, metrics/, policies/).")
    ] = LOCAL_RUNS / "adhoc",
    hparam: Annotated[
        list[str], typer.Option("--hparam", "-p", help="Override a hyper-parameter: name=value (repeatable).")
    ] = [],  # noqa: B006
    env: Annotated[str | None, typer.Option(help="Evaluation env id, when the dataset names none.")] = None,
    download: Annotated[
        bool, typer.Option(help="Download a missing Minari or OGBench dataset (needs internet).")
    ] = False,
    log_every: Annotated[int, typer.Option(help="Updates per row of the metrics table.")] = 100,
    save_policy: Annotated[
        bool, typer.Option(help="Save every seed's final policy under OUT/policies/<job>/.")
    ] = True,
    on_code_change: Annotated[str, typer.Option(help=CODE_CHANGE_HELP)] = "refuse",
) -> None:
    """Train and evaluate one algorithm on one dataset, several seeds at once: a one-job sweep (same
    job identity, checkpoints, resume and tables). Rerunning the same command skips a finished job and
    resumes an interrupted one; a new run of the same method on the same dataset replaces the old rows
    (moved to OUT/superseded/)."""
    import pandas as pd

    from offbench.algorithms.registry import UnknownAlgorithmError, resolve
    from offbench.bench import results
    from offbench.bench.suite import LABEL, SuiteError
    from offbench.bench.sweep import OutputError, check_plugins, plan_jobs, run_and_write, same_slot
    from offbench.bench.train import Job
    from offbench.bench.train import resolve as resolve_job
    from offbench.datasets import provision
    from offbench.datasets.dataset import DatasetError
    from offbench.datasets.sources import load_dataset

    seed_values = parse_seeds(seeds)
    overrides = parse_hparams(hparam)
    if sampler is not None:
        overrides = (*[item for item in overrides if item[0] != "sampler"], ("sampler", sampler))
    try:
        declared, origin = resolve(algorithm)
        if label is not None and not LABEL.match(label):
            raise ValueError(f"label {label!r} must be letters, digits, '_', '.' or '-', starting with one.")
        results.check_output_dir(out)
        if eval_every is None:
            eval_every = min(2_000, steps) if steps > 0 else 2_000
        if final_k is None:
            final_k = min(3, -(-steps // eval_every)) if steps > 0 and eval_every > 0 else 3
        job = Job(
            algorithm=declared.name,
            dataset=dataset,
            seeds=seed_values,
            steps=steps,
            eval_every=eval_every,
            eval_episodes=eval_episodes,
            hparams=overrides,
            final_k=final_k,
            env_id=env,
            download=download,
            label=label,
            log_every=log_every,
            plugin=None if origin.kind == "builtin" else origin,
        )
        check_plugins([job])
        resolve_job(job)  # validates the hyper-parameters before the (slower) dataset load
        # As a sweep does: a missing id offbench can generate is generated, a remote one downloaded
        # with --download. An npz file's task may come from --env here, which the loader checks.
        with console.status(f"preparing {escape(dataset)}"):
            available = provision.available_dataset_ids()
            provision.ensure_datasets([dataset], available, download, npz_named_by_task=False)
        with console.status(f"loading {escape(dataset)}"):
            data = load_dataset(dataset, env_id=env, download=download)
            planned = plan_jobs([job], out, same_slot(job), on_code_change, datasets={dataset: data})
    except (UnknownAlgorithmError, DatasetError, SuiteError, ValueError) as error:
        fail(str(error))
    for message in planned.messages:
        console.print(message, highlight=False, markup=False)
    (planned_job,) = planned.todo or planned.done
    name = planned_job.identity.name
    if planned.done:
        console.print(f"already finished: {name} (rows in {out}); nothing to run.", markup=False)
    else:
        console.print(
            f"[bold]{escape(declared.name)}[/] on [bold]{escape(data.spec.id)}[/]: "
            f"{data.size:,} transitions, {data.num_episodes:,} episodes, seeds {list(seed_values)}, "
            f"{steps:,} updates each"
        )
        if not data.spec.has_reference_scores:
            console.print(
                "[yellow]no reference scores for this dataset: normalized_score will be null; raw "
                "returns are recorded.[/]"
            )
        with Progress(*progress_columns("rate", "score"), console=console, transient=False) as progress:
            task = progress.add_task("updates", total=steps, rate="compiling…", score="")

            def report(chunk) -> None:
                score = (
                    f"score {chunk.normalized_score:.1f}"
                    if chunk.normalized_score is not None
                    else f"return {chunk.return_mean:.1f}"
                )
                rate = f"{chunk.updates_per_second:,.0f} upd/s/seed"
                progress.update(task, completed=chunk.step, score=score, rate=rate)

            try:
                run_and_write(
                    planned_job,
                    out,
                    dataset=data,
                    on_chunk=report,
                    log=lambda line: console.print(line, markup=False),
                    save_policy=save_policy,
                )
            except KeyboardInterrupt:
                progress.stop()
                interrupted(out, [name], "the same command")
            except OutputError as error:
                progress.stop()
                console.print(f"[bold red]error:[/] {escape(str(error))}")
                raise typer.Exit(code=1) from None
            except ValueError as error:
                fail(str(error))
    runs = pd.read_parquet(out / "runs" / f"{name}.parquet")
    columns = ["seed", "final_score", "final_return", "status"]
    if runs["final_success_rate"].notna().any():  # environments that report success (OGBench)
        columns.insert(3, "final_success_rate")
    console.print(runs[columns].to_string(index=False), markup=False, highlight=False)
    paths = [results.table_path(out, table, name) for table in results.TABLES]
    if (out / "policies" / name).is_dir():
        paths.append(out / "policies" / name)
    print("\n".join(f"{path.parent.name + ':':9s}{path}" for path in paths))


def job_threads(threads_per_worker: int | None) -> int | None:
    """``--threads-per-worker``: as given, or on a CPU the fixed default that makes rows independent of the
    worker count (:data:`offbench.bench.workers.DEFAULT_JOB_THREADS`); None on an accelerator, where the
    jobs run one after another in this process by default."""
    from offbench.bench import provenance
    from offbench.bench.workers import DEFAULT_JOB_THREADS

    if threads_per_worker is not None or provenance.device()["device_platform"] != "cpu":
        return threads_per_worker
    return DEFAULT_JOB_THREADS


@app.command()
def sweep(
    suite: Annotated[
        str, typer.Argument(help="Built-in suite name (default, ci, ...) or a suite TOML file.")
    ],
    out: Annotated[Path | None, typer.Option(help="Output directory (default: runs/<suite>).")] = None,
    executor: Annotated[str, typer.Option(help="local, or ray for one Ray task per job.")] = "local",
    address: Annotated[str | None, typer.Option(help="Ray cluster address (with --executor ray).")] = None,
    download: Annotated[
        bool, typer.Option("--download", help="Fetch the suite's missing remote Minari ids (needs internet).")
    ] = False,
    on_code_change: Annotated[str, typer.Option(help=CODE_CHANGE_HELP)] = "refuse",
    workers: Annotated[
        int | None,
        typer.Option(
            help="Local executor: jobs run at once, each in its own process (default: one per core on a CPU, "
            "one on a GPU; 1 runs them one after another)."
        ),
    ] = None,
    threads_per_worker: Annotated[
        int | None,
        typer.Option(
            help="Local executor: XLA CPU threads each job trains with (default on a CPU: 1, whatever "
            "--workers is). XLA splits some operations by its thread count, so rows are identical between "
            "sweeps, and machines, only at the same count; rows record it (xla_cpu_threads)."
        ),
    ] = None,
    cpus_per_job: Annotated[
        float, typer.Option(help="Ray executor: CPUs each job's task asks for (XLA's threads follow it).")
    ] = 1.0,
    gpus_per_job: Annotated[
        float,
        typer.Option(
            help="Ray executor: GPUs each job's task asks for; a fraction shares one GPU between jobs (0.5: "
            "two per GPU). The workers need offbench\\[cuda12] (pip install 'offbench\\[cuda12]')."
        ),
    ] = 0.0,
) -> None:
    """Run every job of a suite (seeds vmapped inside each job). Reruns skip finished jobs, resume
    interrupted ones, and rerun exactly the jobs a changed suite changed."""
    from offbench.bench.ray_executor import Resources
    from offbench.bench.suite import SuiteError, load_suite
    from offbench.bench.sweep import SweepStopped, check_executor, execute, plan

    try:
        check_executor(executor)
        resources = Resources(cpus_per_job, gpus_per_job)
        if executor == "local" and (cpus_per_job != 1.0 or gpus_per_job != 0.0):
            raise SuiteError(
                "--cpus-per-job and --gpus-per-job are Ray task requests: use them with --executor ray "
                "(the local executor splits the cores by --workers)."
            )
        if workers is not None and workers < 1:
            raise SuiteError(f"--workers must be at least 1, got {workers}.")
        if threads_per_worker is not None and threads_per_worker < 1:
            raise SuiteError(f"--threads-per-worker must be at least 1, got {threads_per_worker}.")
        if workers is not None and executor != "local":
            raise SuiteError("--workers is for the local executor; Ray runs one task per job on its own.")
        suite_spec = load_suite(suite)
        out = out or LOCAL_RUNS / suite_spec.name
        with console.status("validating the suite and preparing datasets"):
            planned = plan(suite_spec, out, download, on_code_change)
    except (SuiteError, ValueError) as error:
        fail(str(error))
    for message in planned.messages:
        console.print(message, highlight=False, markup=False)
    console.print(
        f"suite [bold]{escape(suite_spec.name)}[/]: {len(planned.todo) + len(planned.done)} jobs, "
        f"{len(planned.done)} already finished, seeds {list(suite_spec.seeds)} per job, "
        f"output {escape(str(out))}"
    )
    log = lambda line: console.print(line, markup=False, highlight=False)  # noqa: E731
    try:
        if executor == "local":
            with Progress(*progress_columns("detail"), console=console) as progress:
                summary = execute(
                    planned,
                    out,
                    executor,
                    address,
                    progress,
                    log,
                    workers,
                    threads_per_worker=job_threads(threads_per_worker),
                )
        else:
            summary = execute(planned, out, executor, address, None, log, None, resources, download)
            for name, placed in summary.placements.items():
                resumed = placed["resumed_from"]
                log(
                    f"{name}: ran on node {placed['node']}"
                    + (f", resumed from update {resumed:,}" if resumed else "")
                    + (f", device {placed['device']}" if placed.get("device") else "")
                )
    except KeyboardInterrupt:
        options = [f"--workers {workers}"] if workers else []
        options += [f"--threads-per-worker {threads_per_worker}"] if threads_per_worker else []
        if executor == "ray":
            options += ["--executor ray", *([f"--address {address}"] if address else [])]
            options += [f"--cpus-per-job {cpus_per_job:g}", f"--gpus-per-job {gpus_per_job:g}"]
        options += ["--download"] if download else []
        again = " ".join([f"offbench sweep {suite} --out {out}", *options])
        interrupted(out, [p.identity.name for p in planned.todo], again)
    except SweepStopped as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}")
        raise typer.Exit(code=1) from None
    except SuiteError as error:  # the Ray executor refuses what it cannot send to its workers
        fail(str(error))
    console.print(
        f"finished {len(summary.finished)} jobs, skipped {summary.skipped}, failed {len(summary.failed)}"
    )
    for name, message in summary.failed.items():
        console.print(
            f"failed {name}: {message} (details in {out / 'failures' / (name + '.json')})", markup=False
        )
    print(f"results: {out}")
    if summary.failed:
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
    from offbench.bench.leaderboard import ReportError, write_report

    try:
        with console.status(f"reporting {escape(str(results_dir))}"):
            paths = write_report(results_dir, out, reps=reps, profile_reps=profile_reps, seed=seed)
    except ReportError as error:
        fail(str(error))
    print("\n".join(str(path) for path in paths))


@app.command()
def evaluate(
    policy_dir: Annotated[Path, typer.Argument(help="A saved policy: <results>/policies/<job>.")],
    episodes: Annotated[
        int | None, typer.Option(help="Episodes per seed (default: the job's evaluation episodes).")
    ] = None,
    seed: Annotated[
        str | None, typer.Option(help="Trained seeds to evaluate: '0-2', '0,2' or '1' (default: all).")
    ] = None,
) -> None:
    """Re-evaluate a saved policy. With the job's seeds and episodes it reproduces the job's last
    evaluation exactly: same reset seeds, same policy keys, same returns."""
    import numpy as np

    from offbench.bench.policy import PolicyError, evaluate_saved, read_policy
    from offbench.datasets.dataset import DatasetError

    if episodes is not None and episodes <= 0:
        fail(f"--episodes must be positive, got {episodes}.")
    try:
        saved = read_policy(policy_dir)
        with console.status(f"evaluating {escape(saved.record['job'])}"):
            returns = evaluate_saved(saved, episodes, None if seed is None else parse_seeds(seed))
    except (PolicyError, DatasetError) as error:
        fail(str(error))
    recorded = dict(zip(saved.seeds, saved.record["last_return_mean"], strict=True))
    count = len(next(iter(returns.values())))
    print(f"{saved.record['job']} after {saved.step:,} updates, {count} episodes per seed")
    print(f"{'seed':>6} {'return_mean':>12} {'return_std':>11} {'job last eval':>14}")
    for seed_value, values in returns.items():
        job_value = recorded[seed_value]
        shown = "diverged" if job_value is None else f"{job_value:.4f}"
        mean, std = (float("nan"), float("nan")) if np.isnan(values).all() else (values.mean(), values.std())
        print(f"{seed_value:>6} {mean:>12.4f} {std:>11.4f} {shown:>14}")


@app.command()
def check(
    results: Annotated[Path, typer.Option(help="Results directory whose runs/ are checked.")],
    baseline: Annotated[Path, typer.Option(help="Baseline runs parquet, e.g. results/ci/baseline.parquet.")],
    write_baseline: Annotated[
        bool,
        typer.Option("--write-baseline", help="Write BASELINE from the results' runs instead of checking."),
    ] = False,
    alpha: Annotated[
        float, typer.Option(help="False-alarm rate of the whole verdict (Holm's step-down over the pairs).")
    ] = 0.05,
    abs_tol: Annotated[float, typer.Option(help="Smallest allowed drop, in score (or return) units.")] = 1.0,
    rel_tol: Annotated[
        float, typer.Option(help="Smallest allowed drop, as a fraction of the baseline mean.")
    ] = 0.02,
    require_same_data: Annotated[
        bool,
        typer.Option(
            "--require-same-data",
            help="Also fail when a dataset's contents (fingerprint) differ from the baseline's, naming the "
            "recorded facts that differ: a fresh machine must regenerate the baseline's data.",
        ),
    ] = False,
) -> None:
    """Fail (exit 1) when final scores regress beyond seed noise relative to a baseline."""
    from rich.console import Console as StdoutConsole

    from offbench.bench import check as checking

    try:
        if write_baseline:
            print(f"baseline: {checking.write_baseline(results, baseline)}")
            return
        current, reference = checking.read_results_runs(results), checking.read_runs(baseline, "baseline")
        pairs = checking.compare(current, reference, alpha=alpha, abs_tol=abs_tol, rel_tol=rel_tol)
        notes = checking.provenance_notes(current, reference)
    except checking.CheckError as error:
        fail(str(error))
    # The verdict table is the command's output, so it goes to stdout (CI logs), wide enough not to wrap.
    stdout = StdoutConsole(width=160, highlight=False)
    stdout.print(checking.verdict_table(pairs))
    for note in [*notes, checking.family_note(pairs, alpha)]:
        stdout.print(note, markup=False)
    failures = [pair for pair in pairs if pair.failed]
    for pair in failures:
        console.print(f"[red]✗[/] {escape(pair.explanation())}", highlight=False)
    other_data = checking.compare_fingerprints(current, reference)[1] if require_same_data else []
    for dataset in other_data:
        console.print(
            f"[red]✗[/] {escape(dataset)}: other contents than the baseline's "
            f"({escape(checking.generation_difference(dataset, current, reference))}).",
            highlight=False,
        )
    if failures or other_data:
        data = f", {len(other_data)} dataset(s) with other contents" if other_data else ""
        console.print(f"[bold red]check failed:[/] {len(failures)} of {len(pairs)} pairs{data}.")
        raise typer.Exit(code=1)
    console.print(f"[green]check passed:[/] {len(pairs)} pairs.")


@app.command()
def upgrade(
    results_dir: Annotated[Path, typer.Argument(help="A results directory written by an older offbench.")],
) -> None:
    """Rewrite an older results directory in this version's table layout, in place, so that every file
    of a table has the same columns (older evals' metric_* columns become rows of metrics/)."""
    from offbench.bench import results

    if not (results_dir / "runs").is_dir():
        fail(f"{results_dir} has no runs/ folder: point at a results directory.")
    written = results.upgrade_directory(results_dir)
    print(
        f"{len(written)} files rewritten under {results_dir}" if written else f"{results_dir} is up to date"
    )


cli_perf.register(app)
app.add_typer(cli_algorithms.algorithms_app, name="algorithms")


app.add_typer(datasets_app, name="datasets")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        console.print("interrupted; finished jobs are on disk, unfinished ones left no partial files.")
        sys.exit(130)


if __name__ == "__main__":
    main()
