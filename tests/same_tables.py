"""Two results directories hold the same rows: every table equal apart from timings, the same policies."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from offbench.bench import results

TIMING = {"wall_time_s", "train_seconds", "compile_seconds", "eval_seconds", "updates_per_second_per_seed"}


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    drop = [c for c in frame.columns if c in TIMING or c == "written_at"]
    keys = ["job", "seed", *(c for c in ("step", "name") if c in frame)]
    return frame.drop(columns=drop).sort_values(keys).reset_index(drop=True)


def assert_same_tables(out: Path, reference: Path) -> None:
    for table in results.TABLES:
        pd.testing.assert_frame_equal(
            comparable(pd.read_parquet(out / table)), comparable(pd.read_parquet(reference / table))
        )
    assert sorted(p.name for p in (out / "policies").iterdir()) == sorted(
        p.name for p in (reference / "policies").iterdir()
    )
