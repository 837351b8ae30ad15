"""Writing files so that a reader, or a process killed at any instant, never sees a partial one."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path, suffix: str = "", durable: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write to, renamed over ``path`` when the block succeeds.

    A rename within one directory is atomic: readers see the old file or the new one. A failed write (a
    full disk, an exception) leaves neither a partial file nor the temporary one; a killed writer leaves
    ``.<name>.tmp-<pid>``, which ``results.remove_stale_temporaries`` recognises. ``suffix`` keeps the
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
        temporary.write_text(text)
    return path


def write_bytes_atomic(path: Path, data: bytes, durable: bool = False) -> Path:
    with atomic_path(path, durable=durable) as temporary:
        temporary.write_bytes(data)
    return path
