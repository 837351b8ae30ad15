"""Where generated datasets live and how they are written: the Minari root, per-part seeds, and an
atomic swap of a finished dataset into place (a killed generation leaves the previous one, or none)."""

from __future__ import annotations

import os
import shutil
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from offbench import files
from offbench.datasets.dataset import DatasetError
from offbench.datasets.generate.rollout import Episode, write_minari
from offbench.datasets.minari_data import minari_datasets_path
from offbench.hints import suggest

STAGING_PREFIX = ".offbench-staging-"


def check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size <= 0:
        raise DatasetError(f"--size must be a positive number of transitions, got {size!r}.")
    return int(size)


def not_generatable(identifier: str, generatable: Sequence[str], detail: str = "") -> DatasetError:
    """The error every generator's ``parse_id`` raises for an id it does not make: the same wording, the
    closest ids it does make, and what its ids look like (``detail``) where the closest say too little."""
    return DatasetError(
        f"{identifier!r} is not a dataset offbench can generate.{suggest(identifier, generatable)}"
        + (f" {detail}" if detail else "")
    )


def exists(identifier: str) -> bool:
    return (minari_datasets_path() / identifier / "data" / "metadata.json").exists()


def kind_seed(seed: int, *parts: str | int) -> int:
    """A seed for one part of a generation, a pure function of (seed, parts); parts are names or ints."""
    words = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return int(np.random.SeedSequence([int(seed), *words]).generate_state(1)[0])


def remove_stale_staging(root: Path | None = None) -> None:
    """Delete staging folders left by generations that were killed (their process no longer runs)."""
    root = root or minari_datasets_path()
    if not root.is_dir():
        return
    for folder in root.glob(f"{STAGING_PREFIX}*"):
        suffix = folder.name[len(STAGING_PREFIX) :]
        if suffix.isdigit() and int(suffix) != os.getpid() and not files.pid_alive(int(suffix)):
            shutil.rmtree(folder, ignore_errors=True)


def write_atomically(
    identifier: str,
    env_id: str,
    episodes: list[Episode],
    refs: tuple[float, float] | None,
    description: str,
    overwrite: bool,
    env_kwargs: dict | None = None,
    eval_env_kwargs: dict | None = None,
) -> None:
    """Write into ``<root>/.offbench-staging-<pid>`` and move the finished dataset into place.

    ``env_id`` is the Gymnasium id of the evaluation environment; ``refs`` (ref_min, ref_max) or None;
    ``env_kwargs`` / ``eval_env_kwargs`` as in :func:`rollout.write_minari`.
    Whatever happens (an error, Ctrl-C), the staging folder is removed and ``<root>/<identifier>`` holds
    either the previous complete dataset or the new complete one.
    """
    root = minari_datasets_path()
    final = root / identifier
    if final.exists() and not overwrite:
        raise DatasetError(
            f"dataset {identifier!r} already exists at {final}; pass --overwrite to replace it."
        )
    staging = root / f"{STAGING_PREFIX}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    previous = os.environ.get("MINARI_DATASETS_PATH")
    try:
        os.environ["MINARI_DATASETS_PATH"] = str(staging)
        try:
            write_minari(
                identifier,
                env_id,
                episodes,
                ref_min_score=None if refs is None else refs[0],
                ref_max_score=None if refs is None else refs[1],
                description=description,
                env_kwargs=env_kwargs,
                eval_env_kwargs=eval_env_kwargs,
            )
        finally:
            if previous is None:
                del os.environ["MINARI_DATASETS_PATH"]
            else:
                os.environ["MINARI_DATASETS_PATH"] = previous
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            os.replace(final, staging / "replaced")  # same file system: the swap is two renames
        os.replace(staging / identifier, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
