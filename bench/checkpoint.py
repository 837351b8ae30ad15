"""Resumable jobs: the training state of every seed plus the rows so far, saved after each chunk.

``progress.json`` is written (atomically) only after the orbax checkpoint it names is complete, so a
job killed at any moment resumes from the last finished chunk, and never from a half-written one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

PROGRESS_FILE = "progress.json"


def save(directory: Path, step: int, tree: Any, progress: dict[str, Any]) -> None:
    directory = directory.absolute()
    directory.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:010d}"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / name, tree, force=True)
    checkpointer.wait_until_finished()
    temporary = directory / f".{PROGRESS_FILE}.tmp-{os.getpid()}"
    temporary.write_text(json.dumps({"checkpoint": name, **progress}))
    os.replace(temporary, directory / PROGRESS_FILE)
    for old in directory.glob("step_*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def load(directory: Path, template: Any, fingerprint: str) -> tuple[Any, dict[str, Any]] | None:
    """The saved (tree, progress) if ``directory`` holds a checkpoint of the same job, else None."""
    progress_path = directory / PROGRESS_FILE
    if not progress_path.exists():
        return None
    progress = json.loads(progress_path.read_text())
    if progress.get("fingerprint") != fingerprint:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
    tree = ocp.StandardCheckpointer().restore((directory / progress["checkpoint"]).absolute(), abstract)
    return tree, progress


def remove(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
