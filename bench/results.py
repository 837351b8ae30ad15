"""Tidy parquet results: the schema, atomic writes and readers.

``<out>/evals/<job>.parquet``: one row per (seed, evaluation step).
``<out>/runs/<job>.parquet``: one row per seed, with the final score and provenance.
Both are plain parquet: ``pandas.read_parquet("<out>/evals")`` reads a whole directory without
importing offbench (it takes its columns from one file, so ``metric_*`` columns that only some jobs
have are lost; :func:`read_table` keeps every column). Files are written under a temporary name and
renamed, so a killed run never leaves a partial file behind.

Schema versions: 1, the first; 2 adds the ``label`` key (the method's name, the algorithm's unless a
suite entry names it), ``success_rate`` per evaluation (the fraction of episodes that succeeded, NaN
where the environment reports no success) and ``final_success_rate`` per run (its mean over the last
``final_k`` evaluations, like ``final_return``). :func:`read_table` reads version-1 files as version 2.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from offbench.datasets.dataset import DatasetSpec

SCHEMA_VERSION = 2

KEY_FIELDS = [
    pa.field("suite", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("env", pa.string()),
    pa.field("algorithm", pa.string()),
    pa.field("label", pa.string()),
    pa.field("sampler", pa.string()),
    pa.field("hparams", pa.string()),
    pa.field("hparams_hash", pa.string()),
    pa.field("seed", pa.int64()),
]
EVALS_SCHEMA = pa.schema(
    KEY_FIELDS
    + [
        pa.field("step", pa.int64()),
        pa.field("return_mean", pa.float64()),
        pa.field("return_std", pa.float64()),
        pa.field("episodes", pa.int64()),
        pa.field("normalized_score", pa.float64()),
        pa.field("success_rate", pa.float64()),
        pa.field("wall_time_s", pa.float64()),
        pa.field("status", pa.string()),
    ]
)
RUNS_SCHEMA = pa.schema(
    KEY_FIELDS
    + [
        pa.field("steps", pa.int64()),
        pa.field("final_score", pa.float64()),
        pa.field("final_return", pa.float64()),
        pa.field("final_success_rate", pa.float64()),
        pa.field("best_score", pa.float64()),
        pa.field("best_return", pa.float64()),
        pa.field("final_k", pa.int64()),
        pa.field("train_seconds", pa.float64()),
        pa.field("compile_seconds", pa.float64()),
        pa.field("eval_seconds", pa.float64()),
        pa.field("updates_per_second", pa.float64()),
        pa.field("seeds_in_job", pa.int64()),
        pa.field("diverged_step", pa.int64()),
        pa.field("status", pa.string()),
        pa.field("ref_min_score", pa.float64()),
        pa.field("ref_max_score", pa.float64()),
        pa.field("ref_source", pa.string()),
        pa.field("offbench_version", pa.string()),
        pa.field("git_sha", pa.string()),
        pa.field("jax_version", pa.string()),
        pa.field("device", pa.string()),
        pa.field("schema_version", pa.int64()),
        pa.field("timestamp", pa.string()),
    ]
)


def hparams_json(cfg: Any) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def hparams_hash(cfg: Any) -> str:
    return hashlib.sha256(hparams_json(cfg).encode()).hexdigest()[:12]


DATASET_FILE_SUFFIXES = (".hdf5", ".h5", ".npz")


def dataset_slug(dataset: str) -> str:
    """The dataset's part of a job name: the id with runs of other characters than letters, digits, '.'
    and '-' made '_'; a file's name without its folders, its suffix kept without the dot
    (``data/cube-single-play-singletask-task1-v0.npz`` -> ``cube-single-play-singletask-task1-v0_npz``),
    which keeps it apart from the OGBench dataset of the same name."""
    path = Path(dataset)
    if path.suffix in DATASET_FILE_SUFFIXES:
        dataset = f"{path.stem}_{path.suffix.removeprefix('.')}"
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", dataset).strip("_")


def job_name(algorithm: str, sampler: str, dataset: str, config_hash: str) -> str:
    return f"{algorithm}-{sampler}__{dataset_slug(dataset)}__{config_hash}"


@cache
def provenance() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        offbench_version = version("offbench")
    except PackageNotFoundError:
        offbench_version = "unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = "unknown"
    import jax  # here, not at the top: readers of results (the report, notebooks) need no jax

    device = jax.devices()[0]
    return {
        "offbench_version": offbench_version,
        "git_sha": sha,
        "jax_version": jax.__version__,
        "device": f"{device.platform}:{device.device_kind}",
        "schema_version": SCHEMA_VERSION,
    }


def evals_frame(keys: dict[str, Any], rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame([{**keys, **row} for row in rows])
    metric_columns = sorted(c for c in frame.columns if c.startswith("metric_"))
    return frame[[f.name for f in EVALS_SCHEMA] + metric_columns]


def runs_frame(
    keys: dict[str, Any],
    evals: pd.DataFrame,
    *,
    spec: DatasetSpec,
    final_k: int,
    train_seconds: float,
    compile_seconds: float,
    eval_seconds: float,
    updates_per_second: float,
    steps: int,
    diverged_step: np.ndarray,
) -> pd.DataFrame:
    """One row per seed. The final score is the mean of the last ``final_k`` evaluations."""
    rows = []
    timestamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    seeds = evals["seed"].drop_duplicates().tolist()
    for index, seed in enumerate(seeds):
        seed_evals = evals[evals["seed"] == seed].sort_values("step")
        diverged = int(diverged_step[index]) >= 0
        last = seed_evals.tail(final_k)
        final_return = math.nan if diverged else float(last["return_mean"].mean())
        # A diverged seed's success rates are NaN already; skipna=False keeps "no success signal" NaN.
        final_success_rate = float(last["success_rate"].mean(skipna=False))
        best_return = math.nan if diverged else float(seed_evals["return_mean"].max())
        final_score, best_score = (spec.normalized_score(final_return), spec.normalized_score(best_return))
        rows.append(
            {
                **keys,
                "seed": int(seed),
                "steps": steps,
                "final_score": None if final_score is None or diverged else float(final_score),
                "final_return": final_return,
                "final_success_rate": final_success_rate,
                "best_score": None if best_score is None or diverged else float(best_score),
                "best_return": best_return,
                "final_k": final_k,
                "train_seconds": train_seconds,
                "compile_seconds": compile_seconds,
                "eval_seconds": eval_seconds,
                "updates_per_second": updates_per_second,
                "seeds_in_job": len(seeds),
                "diverged_step": int(diverged_step[index]) if diverged else None,
                "status": "diverged" if diverged else "ok",
                "ref_min_score": spec.ref_min_score,
                "ref_max_score": spec.ref_max_score,
                "ref_source": spec.ref_source,
                **provenance(),
                "timestamp": timestamp,
            }
        )
    return pd.DataFrame(rows)[[f.name for f in RUNS_SCHEMA]]


def to_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Arrow table with the fixed schema (extra ``metric_*`` columns appended as float64)."""
    extra = [pa.field(c, pa.float64()) for c in frame.columns if c not in schema.names]
    full = pa.schema(list(schema) + extra)
    return pa.Table.from_pandas(frame, schema=full, preserve_index=False)


def write_atomic(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_job(out_dir: Path, name: str, evals: pd.DataFrame, runs: pd.DataFrame) -> tuple[Path, Path]:
    """Write a job's two tables. The runs file is written last: its presence marks the job done."""
    evals_path = write_atomic(to_table(evals, EVALS_SCHEMA), out_dir / "evals" / f"{name}.parquet")
    runs_path = write_atomic(to_table(runs, RUNS_SCHEMA), out_dir / "runs" / f"{name}.parquet")
    return evals_path, runs_path


def check_output_dir(out_dir: Path) -> None:
    """Refuse an output path that is a file, or a results directory from another schema version."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} is a file, not a directory. Choose another --out.")
    runs_dir = out_dir / "runs"
    if not runs_dir.is_dir():
        return
    for path in sorted(runs_dir.glob("*.parquet"))[:1]:
        found = pq.read_table(path, columns=["schema_version"]).column("schema_version").to_pylist()
        if found and found[0] != SCHEMA_VERSION:
            raise ValueError(
                f"{out_dir} holds results of schema version {found[0]}, this offbench writes version "
                f"{SCHEMA_VERSION}. Use a fresh --out directory (or move the old results away)."
            )


def upgrade(frame: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """Rows read from an older schema version, with this version's columns of ``schema`` that they lack:
    a version-1 row's label is its algorithm (a missing label, too) and its success rates are NaN (none
    were recorded). ``schema_version`` keeps the version the row was written with."""
    frame = frame.copy()
    if "label" in schema.names and "algorithm" in frame.columns:
        missing = pd.Series(None, index=frame.index, dtype=object)
        frame["label"] = frame.get("label", missing).fillna(frame["algorithm"])
    for column in ("success_rate", "final_success_rate"):
        if column in schema.names and column not in frame.columns:
            frame[column] = math.nan
    return frame


def read_table(directory: str | Path, schema: pa.Schema, columns: list[str] | None = None) -> pd.DataFrame:
    """Every parquet file of ``directory`` as one frame, each file upgraded to this schema version
    (:func:`upgrade`) and the columns of all files kept. ``columns`` selects columns; a file without
    one of them gives nulls there. Raises FileNotFoundError when the directory holds no parquet file."""
    paths = sorted(Path(directory).glob("*.parquet"))
    if not paths:
        raise FileNotFoundError(f"no parquet files in {directory}.")
    frames = []
    for path in paths:
        present = pq.read_schema(path).names
        # "algorithm" too: upgrade() derives a missing label from it
        wanted = (
            None if columns is None else [c for c in dict.fromkeys([*columns, "algorithm"]) if c in present]
        )
        frames.append(upgrade(pd.read_parquet(path, columns=wanted), schema))
    frame = pd.concat(frames, ignore_index=True)
    return frame if columns is None else frame.reindex(columns=columns)


def read_runs(out_dir: str | Path) -> pd.DataFrame:
    return read_table(Path(out_dir) / "runs", RUNS_SCHEMA)


def read_evals(out_dir: str | Path) -> pd.DataFrame:
    return read_table(Path(out_dir) / "evals", EVALS_SCHEMA)
