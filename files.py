"""Writing files so that a reader, or a process killed at any instant, never sees a partial one; clearing
what killed writers left; refusing an output folder that cannot take the files before work starts."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# The temporary name atomic_path gives: ``.<name>.tmp-<pid>[suffix]``.
TEMPORARY = re.compile(r"\.tmp-(\d+)")


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "", durable: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write to, renamed over ``path`` when the block succeeds.

    A rename within one directory is atomic: readers see the old file or the new one. A failed write (a
    full disk, an exception) leaves neither a partial file nor the temporary one; a killed writer leaves
    ``.<name>.tmp-<pid>``, which :func:`remove_stale_temporaries` recognises. ``suffix`` keeps the
    extension that some writers insist on (``np.savez`` appends ``.npz``). ``durable`` also flushes the
    file and the rename to disk before returning (for checkpoints of long runs that a power cut must not
    take back).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")
    try:
        yield temporary
        if durable:
            _fsync(temporary)
        os.replace(temporary, path)
        if durable:
            _fsync(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_text_atomic(path: Path, text: str, durable: bool = False) -> Path:
    with atomic_path(path, durable=durable) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def write_bytes_atomic(path: Path, data: bytes, durable: bool = False) -> Path:
    with atomic_path(path, durable=durable) as temporary:
        temporary.write_bytes(data)
    return path


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a stale temporary's writer does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(out_dir: Path) -> None:
    """Refuse an output directory that cannot be written (read-only file system, no permission), before
    any training: a file is created and removed in it, or in its nearest existing parent."""
    folder = nearest_existing(out_dir.absolute())
    try:
        handle, name = tempfile.mkstemp(dir=folder, prefix=".offbench-write-test-")
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise ValueError(
            f"cannot write to {folder} ({error.strerror or error}): the results of {out_dir} could not be "
            "saved. Choose a writable --out."
        ) from error


def check_free_space(out_dir: Path, needed_bytes: int) -> None:
    """Refuse to start when the output's file system has less free space than ``needed_bytes``."""
    folder = nearest_existing(out_dir.absolute())
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise ValueError(
            f"not enough free space for {out_dir}: its jobs need about {needed_bytes / 1e6:,.0f} MB "
            f"(checkpoints, policies, rows) and {folder} has {free / 1e6:,.0f} MB free. Free some space "
            "or choose another --out."
        )


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Delete what killed writers left in ``out_dir``: ``*.tmp-<pid>`` files and folders whose process no
    longer runs, and orbax's unfinished checkpoint folders. Returns what was removed."""
    removed = []
    for path in sorted(out_dir.rglob("*")) if out_dir.is_dir() else []:
        if not path.exists():
            continue  # inside a folder removed above
        match = TEMPORARY.search(path.name)
        stale = (match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1)))) or (
            "orbax-checkpoint-tmp" in path.name
        )
        if stale:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed
