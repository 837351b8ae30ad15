"""Loading a dataset by name: ``dataset_kind``, the one rule that classifies a name (loading and
provisioning share it), and ``load_dataset``, which hands each kind to its loader (``minari_data``,
``d4rl_hdf5``, ``ogbench_data``). All produce the canonical :class:`~offbench.datasets.dataset.Dataset`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from offbench.datasets.d4rl_hdf5 import load_d4rl_hdf5
from offbench.datasets.dataset import DATASET_FILE_SUFFIXES, Dataset, DatasetError
from offbench.datasets.minari_data import load_minari
from offbench.datasets.ogbench_data import OGBENCH_NAME, load_ogbench, load_ogbench_npz

DatasetKind = Literal["npz", "hdf5", "ogbench", "minari"]


def dataset_kind(name: str) -> DatasetKind:
    """What a dataset name is, by the one rule that loading and provisioning share: a path with an OGBench
    npz suffix, a path with a D4RL HDF5 suffix, an OGBench singletask name, or a Minari id."""
    suffix = Path(name).suffix
    if suffix == ".npz":
        return "npz"
    if suffix in DATASET_FILE_SUFFIXES:
        return "hdf5"
    if OGBENCH_NAME.match(name):
        return "ogbench"
    if "/" not in name and not re.search(r"-v\d+$", name):
        raise DatasetError(
            f"{name!r} is neither a dataset file (.hdf5, .h5, .npz), an OGBench dataset name nor a Minari "
            "dataset id (ids look like 'namespace/name-v0', e.g. 'mujoco/hopper/medium-v0')."
        )
    return "minari"


def load_dataset(name: str, *, env_id: str | None = None, download: bool = False) -> Dataset:
    """Load a dataset by Minari id (``mujoco/hopper/medium-v0``), by OGBench singletask name
    (``cube-single-play-singletask-task1-v0``), or by path to a D4RL HDF5 file or an OGBench npz file."""
    kind = dataset_kind(name)
    if kind == "npz":
        return load_ogbench_npz(Path(name).expanduser(), env_id=env_id)
    if kind == "hdf5":
        return load_d4rl_hdf5(Path(name).expanduser(), env_id=env_id)
    if kind == "ogbench":
        return load_ogbench(name, env_id=env_id, download=download)
    return load_minari(name, download=download, env_id=env_id)
