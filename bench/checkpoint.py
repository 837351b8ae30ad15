"""Resumable jobs: the training state of every seed plus the rows so far, saved after each chunk.

``progress.json`` is written (atomically) only after the orbax checkpoint and the arrays file it names
are complete, so a job killed at any moment resumes from the last finished chunk, and never from a
half-written one. A checkpoint records the key of what wrote it (the job identity and the code
version); :func:`load` resumes only a checkpoint of the same key and discards any other.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from offbench.files import atomic_path, write_text_atomic

PROGRESS_FILE = "progress.json"


def save(
    directory: Path,
    step: int,
    tree: Any,
    progress: dict[str, Any],
    key: str,
    arrays: dict[str, np.ndarray] | None = None,
) -> None:
    """Save ``tree`` (orbax), ``arrays`` (npz) and then ``progress`` (JSON, naming both) under ``key``."""
    directory = directory.absolute()
    directory.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:010d}"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / name, tree, force=True)
    checkpointer.wait_until_finished()
    arrays_name = f"arrays_{step:010d}.npz"
    with atomic_path(directory / arrays_name, suffix=".npz") as temporary:
        np.savez(temporary, **(arrays or {}))
    record = {"key": key, "checkpoint": name, "arrays": arrays_name, **progress}
    write_text_atomic(directory / PROGRESS_FILE, json.dumps(record))
    for old in [*directory.glob("step_*"), *directory.glob("arrays_*.npz")]:
        if old.name not in (name, arrays_name):
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)


def read_progress(directory: Path) -> dict[str, Any] | None:
    """The progress record of a checkpoint directory, or None when it has none (or an unreadable one)."""
    try:
        progress = json.loads((directory / PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return progress if isinstance(progress, dict) else None


def load(
    directory: Path, template: Any, key: str, log: Callable[[str], None] = print
) -> tuple[Any, dict[str, Any], dict[str, np.ndarray]] | None:
    """The saved (tree, progress, arrays) if ``directory`` holds a checkpoint written under ``key``.

    A checkpoint written under another key (another job identity, or other code) is removed, with one
    line to ``log`` saying why; so is one whose files cannot be read.
    """
    if not directory.exists():
        return None
    progress = read_progress(directory)
    if progress is None or progress.get("key") != key:
        found = None if progress is None else progress.get("key")
        why = "it is unreadable" if progress is None else describe_mismatch(found, key)
        log(f"discarding checkpoint {directory}: {why}; the job starts from update 0.")
        remove(directory)
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    try:
        tree = ocp.StandardCheckpointer().restore((directory / progress["checkpoint"]).absolute(), abstract)
        with np.load(directory / progress["arrays"]) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except (OSError, ValueError, KeyError) as error:
        log(f"discarding checkpoint {directory}: it cannot be read ({error}); the job starts from update 0.")
        remove(directory)
        return None
    return tree, progress, arrays


def describe_mismatch(found: str | None, expected: str) -> str:
    """Why a checkpoint key (``<job_id>@<code_version>``) does not match, in words."""
    if not found or "@" not in found:
        return "it was written by an older offbench"
    found_job, _, found_code = found.partition("@")
    job, _, code = expected.partition("@")
    if found_job != job:
        return "it belongs to another version of this job (its settings or dataset contents changed)"
    return f"it was written by other code ({found_code}, this is {code})"


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
