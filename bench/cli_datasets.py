"""``offbench datasets``: generating, listing and inspecting datasets."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.markup import escape

from offbench.bench.cli_common import console, fail


@dataclasses.dataclass(frozen=True)
class Generation:
    """What ``datasets generate`` asks of the generator behind one ``--env`` name, whichever it is."""

    choices: tuple  # what the generator can be asked for: catalog kinds, PointMaze rewards or OGBench tasks
    exists: Callable[[Any], bool]  # whether a choice's dataset is stored complete
    plan: Callable[[tuple], Any]  # validates a generation (raises DatasetError) before any is run
    generate: Callable[[tuple, Callable[[str], Any]], list[str]]  # writes the datasets, returns their ids
    ids: str  # the ids it writes, shown while it runs


def generation(name: str, tasks: tuple[int, ...], size: int, seed: int, overwrite: bool) -> Generation:
    """The generator behind a known ``--env`` name, with this command's size, seed and overwrite."""
    from offbench.datasets.generate import catalog, ogbench_play, pointmaze, storage

    if name in pointmaze.CLI_ENVS:
        maze = pointmaze.CLI_ENVS[name]
        return Generation(
            choices=pointmaze.REWARDS,
            exists=lambda reward: storage.exists(pointmaze.dataset_id(maze, reward)),
            plan=lambda rewards: pointmaze.plan_generation(maze, rewards, size, overwrite),
            generate=lambda rewards, log: pointmaze.generate_maze(
                maze, rewards, size=size, seed=seed, overwrite=overwrite, log=log
            ),
            ids=f"{pointmaze.NAMESPACE}{maze}*",
        )
    if name in ogbench_play.CLI_ENVS:
        play_env = ogbench_play.CLI_ENVS[name]
        return Generation(
            choices=tasks,
            exists=lambda task: storage.exists(ogbench_play.dataset_id(play_env, task)),
            plan=lambda chosen: ogbench_play.plan_generation(play_env, chosen, size, overwrite),
            generate=lambda chosen, log: ogbench_play.generate_play(
                play_env, chosen, size=size, seed=seed, overwrite=overwrite, log=log
            ),
            ids=f"{ogbench_play.NAMESPACE}{play_env}-*",
        )
    return Generation(
        choices=catalog.KINDS,
        exists=lambda kind: storage.exists(catalog.dataset_id(name, kind)),
        plan=lambda kinds: catalog.plan_generation(name, size=size, overwrite=overwrite, kinds=kinds),
        generate=lambda kinds, log: catalog.generate_env(
            name, size=size, seed=seed, overwrite=overwrite, kinds=kinds, log=log, quality=True
        ),
        ids=f"offbench/{name}/*",
    )


datasets_app = typer.Typer(no_args_is_help=True, help="Generate, list and inspect datasets.")


@datasets_app.command("generate")
def datasets_generate(
    env: Annotated[
        list[str],
        typer.Option(
            help="hopper, halfcheetah, walker2d, ogbench-cube-single (OGBench play data from its scripted "
            "oracle), or pointmaze-{open,umaze,medium,large} (D4RL-style PointMaze data, sparse and dense, "
            "from Minari's waypoint controller); repeatable; default: the three MuJoCo environments."
        ),
    ] = [],  # noqa: B006
    size: Annotated[int, typer.Option(help="Transitions per base dataset.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives identical arrays.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace datasets that already exist.")] = False,
    missing_only: Annotated[
        bool,
        typer.Option(
            "--missing-only",
            help="Keep the datasets that already exist and generate only the missing ones, from the stored "
            "bases, with this --size and --seed (give those the others were made with). Without it or "
            "--overwrite, an existing dataset is refused.",
        ),
    ] = False,
    task: Annotated[
        list[int],
        typer.Option(
            help="OGBench singletask task(s), 1-5, that label the play data (repeatable; default 1)."
        ),
    ] = [],  # noqa: B006
) -> None:
    """Generate offbench/<env>/* datasets from the committed behaviour policies, OGBench play data
    (offbench/ogbench/*) from OGBench's scripted oracle and PointMaze data (offbench/pointmaze/*) from
    Minari's D4RL waypoint controller (no internet)."""
    from offbench.datasets.dataset import DatasetError
    from offbench.datasets.generate import catalog, ogbench_play, pointmaze
    from offbench.hints import suggest

    envs = env or list(catalog.ENVS)
    known = [*catalog.ENVS, *ogbench_play.CLI_ENVS, *pointmaze.CLI_ENVS]
    tasks = tuple(task) or (ogbench_play.DEFAULT_TASK,)
    root = escape(str(catalog.minari_datasets_path()))
    log = lambda line: console.print(line, markup=False, highlight=False)  # noqa: E731
    try:
        unknown = [name for name in envs if name not in known]
        if unknown:
            raise DatasetError(
                f"unknown environment {unknown[0]!r}.{suggest(unknown[0], known)} "
                f"Choose from {', '.join(known)}."
            )
        if task and not any(name in ogbench_play.CLI_ENVS for name in envs):
            raise DatasetError("--task labels OGBench play data: use it with --env ogbench-cube-single.")
        if missing_only and overwrite:
            raise DatasetError(
                "--missing-only keeps the datasets that exist and --overwrite replaces them: pass one of the "
                "two."
            )
        generations = {name: generation(name, tasks, size, seed, overwrite) for name in envs}
        wanted = {
            name: tuple(c for c in g.choices if not (missing_only and g.exists(c)))
            for name, g in generations.items()
        }
        for name in envs:  # every environment is checked (policies included) before any is generated
            if wanted[name]:
                generations[name].plan(wanted[name])
        for name in envs:
            if not wanted[name]:
                console.print(f"{name}: every dataset already exists under {root}; nothing to generate.")
                continue
            with console.status(f"generating {generations[name].ids}"):
                written = generations[name].generate(wanted[name], log)
            console.print(f"{name}: {len(written)} datasets written under {root}")
    except (DatasetError, ValueError, FileNotFoundError) as error:
        fail(str(error))


@datasets_app.command("list")
def datasets_list() -> None:
    """List local Minari datasets with their size and reference scores."""
    import minari

    from offbench.datasets.minari_data import minari_datasets_path

    local = minari.list_local_datasets()
    if not local:
        console.print(
            f"no datasets under {escape(str(minari_datasets_path()))} ($MINARI_DATASETS_PATH). Generate "
            "offbench's own with `offbench datasets generate`, or fetch a Minari id with `offbench datasets "
            "info <id> --download` (needs internet).",
            soft_wrap=True,
        )
        return
    for dataset_id, metadata in sorted(local.items()):
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
    env: Annotated[str | None, typer.Option(help="Evaluation env id, when the dataset names none.")] = None,
    download: Annotated[
        bool, typer.Option(help="Download a missing Minari or OGBench dataset (needs internet).")
    ] = False,
) -> None:
    """Print a dataset's return statistics and quality metrics (TQ, SACo)."""
    from offbench.datasets import quality
    from offbench.datasets.dataset import DatasetError
    from offbench.datasets.generate import catalog
    from offbench.datasets.generate.storage import read_generation_record
    from offbench.datasets.sources import load_dataset

    try:
        data = load_dataset(dataset, env_id=env, download=download)
    except DatasetError as error:
        fail(str(error))
    catalog.complete_quality(dataset)  # generated data whose metrics a killed generation never wrote
    for key, value in {**data.summary(), **(quality.read_quality(dataset) or {})}.items():
        print(f"{key:28s} {value}")
    generation = read_generation_record(dataset)
    if generation is not None:
        print("generated with")
        for key, value in generation.items():
            print(f"  {key:26s} {value}")
