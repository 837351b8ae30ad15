"""A dataset's content fingerprint: a digest of the canonical arrays and of what evaluates them.

The digest covers what training and scoring read: every transition array of the canonical
:class:`~offbench.datasets.dataset.Dataset` (after the loader's semantics, so two files that load to
the same transitions share it) and the spec's evaluation environment, reference scores and observation
layout. Regenerating a dataset with the same seed gives the same fingerprint; changing one value of it,
or replacing its file, gives another.

Computing it means loading the dataset, so it is cached beside the dataset's files (a Minari dataset's
folder, or a hidden file beside an HDF5/npz file) together with the size, modification time, inode and
status-change time of every file it was computed from. The cache is used only while all of them are
unchanged, so a file replaced by another of the same size with its modification time preserved is
fingerprinted again. Where the
folder is not writable the fingerprint is computed again on each use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from offbench.datasets.dataset import Dataset, DatasetSpec, spec_from_dict
from offbench.files import write_text_atomic

# Bump when the digest covers something new: cached fingerprints of another version are recomputed.
FINGERPRINT_VERSION = 1
CACHE_NAME = "offbench-fingerprint.json"
ARRAYS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


def content_digest(dataset: Dataset) -> str:
    """sha256 over the transition arrays (dtype, shape and bytes) and the spec fields that score them."""
    digest = hashlib.sha256(f"offbench-dataset-v{FINGERPRINT_VERSION}".encode())
    for name in ARRAYS:
        array = np.ascontiguousarray(np.asarray(getattr(dataset, name)))
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    spec = dataset.spec
    evaluation = {
        "env_id": spec.env_id,
        "eval_env_spec": spec.eval_env_spec,
        "observation_keys": spec.observation_keys,
        "ref_min_score": spec.ref_min_score,
        "ref_max_score": spec.ref_max_score,
    }
    digest.update(json.dumps(evaluation, sort_keys=True).encode())
    return digest.hexdigest()


def source_files(name: str) -> list[Path]:
    """The files a dataset name is read from (empty when they do not exist yet)."""
    from offbench.datasets import minari_data, ogbench_data

    path = Path(name).expanduser()
    if path.suffix in {".hdf5", ".h5", ".npz"} or path.is_file():
        return [path] if path.is_file() else []
    if ogbench_data.OGBENCH_NAME.match(name):
        data_name, _ = ogbench_data.resolve_ogbench_name(name)
        file = ogbench_data.ogbench_data_dir() / f"{data_name}.npz"
        return [file] if file.is_file() else []
    folder = minari_data.minari_datasets_path() / name / "data"
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


def cache_file(name: str) -> Path:
    from offbench.datasets import minari_data, ogbench_data

    path = Path(name).expanduser()
    if path.suffix in {".hdf5", ".h5", ".npz"} or path.is_file():
        return path.with_name(f".{path.name}.{CACHE_NAME}")
    if ogbench_data.OGBENCH_NAME.match(name):
        data_name, _ = ogbench_data.resolve_ogbench_name(name)
        return ogbench_data.ogbench_data_dir() / f".{data_name}.{CACHE_NAME}"
    return minari_data.minari_datasets_path() / name / CACHE_NAME


def _stats(files: list[Path]) -> dict[str, list[int]]:
    """What a replacement of each file cannot keep: besides size and modification time (which ``cp -p``,
    ``rsync -a`` and archive extraction preserve), the inode and the status-change time, which the
    kernel sets on every write, rename or new file and no user call can set back."""
    stats = {}
    for path in files:
        info = path.stat()
        stats[str(path.resolve())] = [info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns]
    return stats


def _cache_key(name: str, env_id: str | None) -> str:
    # One file can hold several datasets (an OGBench npz relabelled per task; --env on an HDF5 file).
    return f"v{FINGERPRINT_VERSION}|{name}|{env_id or ''}"


def _read_cache(path: Path) -> dict:
    try:
        cached = json.loads(path.read_text())
        return cached if isinstance(cached, dict) else {}
    except (OSError, ValueError):
        return {}


def describe(
    name: str, *, env_id: str | None = None, dataset: Dataset | None = None
) -> tuple[str, DatasetSpec]:
    """The content fingerprint and the spec of the dataset ``name`` (``load_dataset``'s argument), from
    the cache while its files are unchanged; otherwise computed from ``dataset`` (or by loading it) and
    cached. The spec lets a sweep check every dataset against its environment without loading it."""
    files = source_files(name)
    path, key = cache_file(name), _cache_key(name, env_id)
    stats = _stats(files) if files else None
    entry = _read_cache(path).get(key) if stats else None
    if entry and entry.get("files") == stats and "spec" in entry:
        return entry["fingerprint"], spec_from_dict(entry["spec"])
    if dataset is None:
        from offbench.datasets.sources import load_dataset

        dataset = load_dataset(name, env_id=env_id)
    digest = content_digest(dataset)
    if stats:
        cached = _read_cache(path)
        cached[key] = {"files": stats, "fingerprint": digest, "spec": dataclasses.asdict(dataset.spec)}
        # A read-only folder: no cache, the digest is still right.
        with contextlib.suppress(OSError):
            write_text_atomic(path, json.dumps(cached, indent=1))
    return digest, dataset.spec


def fingerprint(name: str, *, env_id: str | None = None, dataset: Dataset | None = None) -> str:
    """The content fingerprint of the dataset ``name`` (see :func:`describe`)."""
    return describe(name, env_id=env_id, dataset=dataset)[0]
