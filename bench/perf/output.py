"""What every perf table is written and shown with: parquet files stamped with the device and the code's
provenance, and rich tables."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import jax
import pandas as pd
import pyarrow as pa
from rich.table import Table

from offbench.bench import provenance, results


def write_frames(device: str, frames: dict[str, pd.DataFrame], directory: Path) -> list[Path]:
    """``directory/<name>.parquet`` per frame, each row stamped with ``device`` and provenance."""
    stamp = {
        "device": device,
        "git_sha": provenance.code_version()["git_sha"],
        "code_version": provenance.code_version()["code_version"],
        "jax_version": jax.__version__,
        "timestamp": pd.Timestamp.now(tz="UTC").isoformat(),
    }
    return [
        results.write_atomic(
            pa.Table.from_pandas(frame.assign(**stamp), preserve_index=False), directory / f"{name}.parquet"
        )
        for name, frame in frames.items()
    ]


def new_table(title: str, columns: Sequence[str], left: Collection[str]) -> Table:
    """A table whose ``left`` columns are left-justified (names, text) and the others right-justified
    (numbers, so that digits line up)."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in left else "right")
    return table
