"""Making a suite's datasets available before any training starts: each name is classified by
``sources.dataset_kind`` (the rule loading uses too), then checked, generated or downloaded by kind."""

from __future__ import annotations

from pathlib import Path

from offbench.datasets.dataset import DatasetError
from offbench.datasets.minari_data import check_readable, download_minari_dataset
from offbench.datasets.ogbench_data import import_ogbench, ogbench_data_dir, resolve_ogbench_name
from offbench.datasets.sources import dataset_kind
from offbench.hints import suggest


def available_dataset_ids() -> list[str]:
    """Local Minari ids plus the ids offbench can generate on demand."""
    import minari

    ids = set(minari.list_local_datasets())
    try:
        from offbench.datasets.generate import catalog
    except ImportError:
        return sorted(ids)
    return sorted(ids | set(catalog.generatable_ids()))


def ensure_datasets(
    dataset_ids: list[str], available: list[str], download: bool = False, npz_named_by_task: bool = True
) -> None:
    """Make sure every dataset can be loaded before any training starts, by kind:

    - a D4RL HDF5 or OGBench npz path: the file exists. With ``npz_named_by_task`` (a suite, which gives
      no evaluation environment) an npz file is named after the OGBench singletask dataset it holds
      (``cube-single-play-singletask-task1-v0.npz``): that name says which task relabels and evaluates it;
    - an OGBench dataset name (``cube-single-play-singletask-task1-v0``): its file is in the OGBench data
      folder, or with ``download`` is fetched by ``ogbench.download_datasets``;
    - a local Minari id: nothing to do; an id offbench can generate (``offbench/hopper/...``,
      ``offbench/ogbench/...``): generated now;
    - any other id: with ``download``, fetched from the Minari server (``mujoco/hopper/medium-v0``).
    """
    import minari

    local = set(minari.list_local_datasets())
    for dataset_id in dataset_ids:
        kind = dataset_kind(dataset_id)
        if kind in ("npz", "hdf5"):
            check_dataset_file(dataset_id, npz_named_by_task)
        elif kind == "ogbench":
            ensure_ogbench(dataset_id, available, download)
        else:
            ensure_minari(dataset_id, local, available, download)


def ensure_minari(dataset_id: str, local: set[str], available: list[str], download: bool) -> None:
    """A Minari id is local, generated now, or downloaded (see :func:`ensure_datasets`)."""
    if dataset_id in local:
        if dataset_id in available:
            from offbench.datasets.generate import catalog

            catalog.check_recipe(dataset_id)
            catalog.complete_quality(dataset_id)  # a generation killed before writing them
    elif dataset_id in available:
        from offbench.datasets.generate import catalog

        catalog.generate(dataset_id)
    elif download:
        download_minari_dataset(dataset_id)
    else:
        check_readable(dataset_id, local)  # a folder Minari cannot read is not an unknown id
        raise DatasetError(
            f"unknown dataset {dataset_id!r}: not a local Minari dataset, not one offbench can generate, "
            "not an OGBench dataset name and not a dataset file. If it is a remote Minari id, rerun with "
            f"--download (needs internet).{suggest(dataset_id, available)}"
        )


def check_dataset_file(dataset_id: str, npz_named_by_task: bool = True) -> None:
    """A D4RL HDF5 or OGBench npz path exists, and (``npz_named_by_task``) an npz file's name says its
    task."""
    path = Path(dataset_id).expanduser()
    if not path.is_file():
        raise DatasetError(
            f"dataset file {dataset_id} does not exist (relative paths are resolved from {Path.cwd()})."
        )
    if path.suffix != ".npz" or not npz_named_by_task:
        return
    try:
        resolve_ogbench_name(path.name.removesuffix(".npz").removesuffix("-val"))
    except DatasetError as error:
        raise DatasetError(
            f"{dataset_id}: a suite's npz file must be named after the OGBench singletask dataset it holds "
            "(e.g. cube-single-play-singletask-task1-v0.npz), which names the task that relabels and "
            f"evaluates it. Rename the file. ({error})"
        ) from error


def ensure_ogbench(name: str, available: list[str], download: bool) -> None:
    """An OGBench dataset name's file is in the OGBench data folder, downloaded there if asked."""
    data_name, _ = resolve_ogbench_name(name)
    folder = ogbench_data_dir()
    if (folder / f"{data_name}.npz").exists():
        return
    generated = f"offbench/ogbench/{name}"
    hint = (
        f" Or use {generated!r}, the play data offbench generates locally." if generated in available else ""
    )
    if not download:
        raise DatasetError(
            f"OGBench dataset {name!r} needs the file {folder / data_name}.npz, which is missing: rerun with "
            "--download (needs internet) to fetch it with ogbench.download_datasets, or copy it there (the "
            f"folder is $OGBENCH_DATA_DIR, default ~/.ogbench/data).{hint}"
        )
    ogbench = import_ogbench()
    try:
        ogbench.download_datasets([data_name], dataset_dir=str(folder))
    except OSError as error:  # urllib's URLError and HTTPError are OSErrors
        raise DatasetError(
            f"downloading OGBench dataset {data_name!r} failed ({error}). It needs internet access to "
            f"{ogbench.utils.DATASET_URL}; offline, copy {data_name}.npz into {folder} by hand.{hint}"
        ) from error
