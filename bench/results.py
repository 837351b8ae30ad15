"""Tidy parquet results: the schema, atomic writes and readers.

A results directory holds one table per folder, one parquet file per job (``<job>.parquet``):

- ``evals/``: one row per (seed, evaluation step);
- ``runs/``: one row per seed, with the final score and the job's budget;
- ``metrics/``: training diagnostics as a long table, one row per (seed, step, name), each value the
  mean over the ``log_every`` updates that end at ``step``;
- ``policies/<job>/``: every seed's final parameters, the resolved config and the observation
  normaliser (:mod:`offbench.bench.policy`); ``failures/<job>.json``: jobs that raised;
  ``superseded/``: rows a changed suite replaced, moved out of the tables readers load.

Every file of a table has the same columns, whatever the algorithm, so ``pandas.read_parquet(dir)``,
DuckDB's ``read_parquet('dir/*.parquet')`` and polars read a whole folder with no options. Every row
carries its job's identity (``job``, ``job_id``) and provenance: the code version, library versions,
device, and the dataset's size, content fingerprint and quality metrics. Each column's description is in
the parquet field metadata (``description``) and in :data:`COLUMN_DOCS`. Files are written under a
temporary name and renamed, so a killed run never leaves a partial file behind.

Schema versions: 1, the first; 2 adds ``label``, ``success_rate`` and ``final_success_rate``; 3 adds the
job identity, the budget columns of ``runs``, the ``metrics`` table (the ``metric_*`` columns of
``evals`` are gone) and full provenance, and renames ``updates_per_second`` to
``updates_per_second_per_seed`` and ``timestamp`` to ``written_at``; 4 adds ``dataset_generation``,
``host_cpu_id`` and ``host_cpu_isa``; 5 adds ``algorithm_origin`` and ``algorithm_digest`` (plug-in
algorithms); 6 adds ``xla_cpu_threads``. :func:`read_table` reads older files as this version (columns
they never had are null, and their algorithms are built-ins).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from offbench import files
from offbench.datasets.dataset import DATASET_FILE_SUFFIXES, DatasetSpec
from offbench.files import atomic_path

SCHEMA_VERSION = 6
TABLES = ("evals", "runs", "metrics")

COLUMN_DOCS: dict[str, str] = {
    # keys
    "suite": "Suite name (`adhoc` for `offbench run`).",
    "job": "Job name: the file stem, `<label>-<sampler>__<dataset>__<job_id[:12]>`.",
    "job_id": "Job identity: sha256 (16 hex) of everything that determines the rows (see README).",
    "dataset": "Dataset id or file path.",
    "env": "Evaluation environment id.",
    "algorithm": "Algorithm name: a built-in's, or the name a plug-in declares (`ALGORITHM.name`).",
    "label": "Method name (the algorithm's unless the suite entry names one).",
    "sampler": "Batch sampler: uniform, rw, aw or topk.",
    "hparams": "Resolved hyper-parameters as sorted JSON.",
    "hparams_hash": "sha256 (12 hex) of `hparams`.",
    "seed": "Training seed.",
    # evals
    "step": "Updates done when the row was taken.",
    "return_mean": "Mean undiscounted episode return over the evaluation episodes.",
    "return_std": "Standard deviation of the episode returns (ddof 0).",
    "episodes": "Evaluation episodes per seed.",
    "normalized_score": (
        "D4RL-normalised score x100: 100 (return - ref_min_score) / (ref_max_score - ref_min_score); "
        "null without reference scores."
    ),
    "success_rate": "Fraction of episodes whose last step reported success; NaN without a success signal.",
    "wall_time_s": "Seconds since the job started (compilation and evaluation included).",
    "status": "ok, or diverged (parameters no longer finite).",
    # runs
    "steps": "Updates per seed (the budget).",
    "eval_every": "Updates between evaluations.",
    "eval_episodes": "Evaluation episodes per seed at each evaluation.",
    "final_k": "The final score is the mean of the last `final_k` evaluations.",
    "final_score": "Mean normalised score (x100) of the last `final_k` evaluations; null if diverged.",
    "final_return": "Mean return of the last `final_k` evaluations; NaN if diverged.",
    "final_success_rate": "Mean success rate of the last `final_k` evaluations.",
    "best_score": "Best normalised score (x100) over all evaluations.",
    "best_return": "Best evaluation return.",
    "train_seconds": "Seconds spent in the jitted training chunks (all seeds together).",
    "compile_seconds": "Seconds spent compiling the training chunks.",
    "eval_seconds": "Seconds spent evaluating (all seeds together).",
    "updates_per_second_per_seed": "Updates per second of each seed (seeds train together, vmapped).",
    "seeds_in_job": "Seeds trained together in the job.",
    "diverged_step": "First evaluation step at which the seed's parameters were not finite; null if never.",
    # metrics
    "name": "Training diagnostic name (the algorithm's update metrics, e.g. critic_loss).",
    "value": "Mean of the diagnostic over the `log_every` updates ending at `step` (NaN-aware).",
    # provenance
    "dataset_fingerprint": "sha256 of the dataset's canonical arrays and evaluation spec.",
    "dataset_generation": (
        "For a dataset offbench generated: its recipe (generator, seed, size) and what generated it (code "
        "version, mujoco/gymnasium/numpy/jax versions, CPU and instruction-set level), as sorted JSON; "
        "null otherwise."
    ),
    "dataset_transitions": "Transitions in the dataset.",
    "dataset_episodes": "Episodes in the dataset.",
    "dataset_tq": "Trajectory quality TQ of the dataset, where offbench stored it; null otherwise.",
    "dataset_saco": "State-action coverage SACo of the dataset, where offbench stored it; null otherwise.",
    "ref_min_score": "Return that normalises to 0.",
    "ref_max_score": "Return that normalises to 100.",
    "ref_source": "Where the reference scores come from.",
    "code_version": (
        "Git commit (12 hex), with +dirty.<digest> when the code had uncommitted changes, and for a plug-in "
        "algorithm +<name>.<algorithm_digest[:12]>: the version of all the code that computed the row."
    ),
    "algorithm_origin": (
        "Where the algorithm's code came from: `builtin`, `file:<path>`, `module:<module>` or "
        "`entry_point:<distribution> <version>:<module>`."
    ),
    "algorithm_digest": (
        "sha256 of a plug-in's source: the file's bytes, or a module's package files and version; null for "
        "a built-in (the code version covers it)."
    ),
    "git_sha": "Full git commit of the code; null outside a git checkout.",
    "git_dirty": "Whether the code had uncommitted changes.",
    "offbench_version": "offbench package version.",
    "python_version": "Python version.",
    "jax_version": "jax version.",
    "jaxlib_version": "jaxlib version.",
    "flax_version": "flax version.",
    "optax_version": "optax version.",
    "gymnasium_version": "gymnasium version.",
    "mujoco_version": "mujoco version.",
    "minari_version": "minari version.",
    "device": "The training device, e.g. `cpu: AMD EPYC 7B13 (2 cores)` or `gpu: NVIDIA H200 x1`.",
    "device_platform": "JAX platform: cpu, gpu or tpu.",
    "device_model": "CPU model, or accelerator kind.",
    "device_count": "CPU cores available to the process, or number of accelerators.",
    "host_cpu": "Host CPU model (evaluation runs there).",
    "host_cpu_id": "Host CPU vendor, family, model and stepping (ARM: implementer and part).",
    "host_cpu_isa": "Host CPU instruction-set level: x86-64-v2/v3 (AVX2)/v4 (AVX-512), or aarch64(+sve).",
    "host_cpu_cores": "CPU cores available to the process.",
    "xla_cpu_threads": "XLA's CPU intra-op threads in the training process (`NPROC`, else its cores); a CPU "
    "run's floats depend on it, so rows are identical between runs only at the same count.",
    "schema_version": "Results schema version of the row.",
    "written_at": "UTC time the row was written (ISO 8601).",
}


def _fields(*spec: tuple[str, pa.DataType]) -> list[pa.Field]:
    return [pa.field(name, kind, metadata={"description": COLUMN_DOCS[name]}) for name, kind in spec]


KEY_FIELDS = _fields(
    ("suite", pa.string()),
    ("job", pa.string()),
    ("job_id", pa.string()),
    ("dataset", pa.string()),
    ("env", pa.string()),
    ("algorithm", pa.string()),
    ("label", pa.string()),
    ("sampler", pa.string()),
    ("hparams", pa.string()),
    ("hparams_hash", pa.string()),
    ("seed", pa.int64()),
)
PROVENANCE_FIELDS = _fields(
    ("dataset_fingerprint", pa.string()),
    ("dataset_generation", pa.string()),
    ("dataset_transitions", pa.int64()),
    ("dataset_episodes", pa.int64()),
    ("dataset_tq", pa.float64()),
    ("dataset_saco", pa.float64()),
    ("ref_min_score", pa.float64()),
    ("ref_max_score", pa.float64()),
    ("ref_source", pa.string()),
    ("code_version", pa.string()),
    ("algorithm_origin", pa.string()),
    ("algorithm_digest", pa.string()),
    ("git_sha", pa.string()),
    ("git_dirty", pa.bool_()),
    ("offbench_version", pa.string()),
    ("python_version", pa.string()),
    ("jax_version", pa.string()),
    ("jaxlib_version", pa.string()),
    ("flax_version", pa.string()),
    ("optax_version", pa.string()),
    ("gymnasium_version", pa.string()),
    ("mujoco_version", pa.string()),
    ("minari_version", pa.string()),
    ("device", pa.string()),
    ("device_platform", pa.string()),
    ("device_model", pa.string()),
    ("device_count", pa.int64()),
    ("host_cpu", pa.string()),
    ("host_cpu_id", pa.string()),
    ("host_cpu_isa", pa.string()),
    ("host_cpu_cores", pa.int64()),
    ("xla_cpu_threads", pa.int64()),
    ("schema_version", pa.int64()),
    ("written_at", pa.string()),
)
EVALS_SCHEMA = pa.schema(
    KEY_FIELDS
    + _fields(
        ("step", pa.int64()),
        ("return_mean", pa.float64()),
        ("return_std", pa.float64()),
        ("episodes", pa.int64()),
        ("normalized_score", pa.float64()),
        ("success_rate", pa.float64()),
        ("wall_time_s", pa.float64()),
        ("status", pa.string()),
    )
    + PROVENANCE_FIELDS
)
RUNS_SCHEMA = pa.schema(
    KEY_FIELDS
    + _fields(
        ("steps", pa.int64()),
        ("eval_every", pa.int64()),
        ("eval_episodes", pa.int64()),
        ("final_k", pa.int64()),
        ("final_score", pa.float64()),
        ("final_return", pa.float64()),
        ("final_success_rate", pa.float64()),
        ("best_score", pa.float64()),
        ("best_return", pa.float64()),
        ("train_seconds", pa.float64()),
        ("compile_seconds", pa.float64()),
        ("eval_seconds", pa.float64()),
        ("updates_per_second_per_seed", pa.float64()),
        ("seeds_in_job", pa.int64()),
        ("diverged_step", pa.int64()),
        ("status", pa.string()),
    )
    + PROVENANCE_FIELDS
)
METRICS_SCHEMA = pa.schema(
    KEY_FIELDS
    + _fields(("step", pa.int64()), ("name", pa.string()), ("value", pa.float64()))
    + PROVENANCE_FIELDS
)
SCHEMAS = {"evals": EVALS_SCHEMA, "runs": RUNS_SCHEMA, "metrics": METRICS_SCHEMA}
# Columns renamed since an older schema version: old name -> this version's.
RENAMED = {"updates_per_second": "updates_per_second_per_seed", "timestamp": "written_at"}


def hparams_json(cfg: Any) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)


def hparams_hash(cfg: Any) -> str:
    return hashlib.sha256(hparams_json(cfg).encode()).hexdigest()[:12]


def dataset_slug(dataset: str) -> str:
    """The dataset's part of a job name: the id with runs of other characters than letters, digits, '.'
    and '-' made '_'; a file's name without its folders, its suffix kept without the dot
    (``data/cube-single-play-singletask-task1-v0.npz`` -> ``cube-single-play-singletask-task1-v0_npz``),
    which keeps it apart from the OGBench dataset of the same name."""
    path = Path(dataset)
    if path.suffix in DATASET_FILE_SUFFIXES:
        dataset = f"{path.stem}_{path.suffix.removeprefix('.')}"
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", dataset).strip("_")


def job_name(label: str, sampler: str, dataset: str, job_id: str) -> str:
    """A job's file stem: readable keys, then the identity that makes it unique."""
    return f"{label}-{sampler}__{dataset_slug(dataset)}__{job_id[:12]}"


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _frame(keys: dict[str, Any], rows: list[dict[str, Any]], provenance: dict[str, Any], schema: pa.Schema):
    written = {"schema_version": SCHEMA_VERSION, "written_at": utc_now()}
    frame = pd.DataFrame([{**keys, **row, **provenance, **written} for row in rows], columns=schema.names)
    return frame[schema.names]


def evals_frame(keys: dict[str, Any], rows: list[dict[str, Any]], provenance: dict[str, Any]) -> pd.DataFrame:
    return _frame(keys, rows, provenance, EVALS_SCHEMA)


def metrics_frame(
    keys: dict[str, Any],
    seeds: tuple[int, ...],
    steps: np.ndarray,
    values: dict[str, np.ndarray],
    provenance: dict[str, Any],
) -> pd.DataFrame:
    """The long metrics table from ``values[name]`` of shape [len(steps), len(seeds)]."""
    rows = [
        {"seed": int(seed), "step": int(step), "name": name, "value": float(series[b, s])}
        for name, series in sorted(values.items())
        for s, seed in enumerate(seeds)
        for b, step in enumerate(steps)
    ]
    return _frame(keys, rows, provenance, METRICS_SCHEMA)


def runs_frame(
    keys: dict[str, Any],
    evals: pd.DataFrame,
    *,
    spec: DatasetSpec,
    provenance: dict[str, Any],
    steps: int,
    eval_every: int,
    eval_episodes: int,
    final_k: int,
    train_seconds: float,
    compile_seconds: float,
    eval_seconds: float,
    diverged_step: np.ndarray,
) -> pd.DataFrame:
    """One row per seed. The final score is the mean of the last ``final_k`` evaluations."""
    rows = []
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
                "seed": int(seed),
                "steps": steps,
                "eval_every": eval_every,
                "eval_episodes": eval_episodes,
                "final_k": final_k,
                "final_score": None if final_score is None or diverged else float(final_score),
                "final_return": final_return,
                "final_success_rate": final_success_rate,
                "best_score": None if best_score is None or diverged else float(best_score),
                "best_return": best_return,
                "train_seconds": train_seconds,
                "compile_seconds": compile_seconds,
                "eval_seconds": eval_seconds,
                "updates_per_second_per_seed": steps / max(train_seconds, 1e-9),
                "seeds_in_job": len(seeds),
                "diverged_step": int(diverged_step[index]) if diverged else None,
                "status": "diverged" if diverged else "ok",
            }
        )
    return _frame(keys, rows, provenance, RUNS_SCHEMA)


def to_table(frame: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Arrow table of exactly ``schema``: every file of a table gets the same columns and types."""
    extra = sorted(set(frame.columns) - set(schema.names))
    if extra:
        raise ValueError(f"columns {extra} are not in the results schema; add them to results.py.")
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    return table.replace_schema_metadata({"offbench_schema_version": str(SCHEMA_VERSION)})


def write_atomic(table: pa.Table, path: Path) -> Path:
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary)
    return path


def failure_keys(job: dict[str, Any]) -> dict[str, Any]:
    """The keys of the job a ``failures/<job>.json`` record holds (``dataclasses.asdict`` of a Job): its
    suite, algorithm, label (the algorithm's in records written before labels) and sampler."""
    return {
        "suite": job.get("suite"),
        "algorithm": job["algorithm"],
        "label": job.get("label") or job["algorithm"],
        "sampler": dict(job.get("hparams") or []).get("sampler", "uniform"),
        "dataset": job["dataset"],
    }


def table_path(out_dir: Path, table: str, name: str) -> Path:
    return out_dir / table / f"{name}.parquet"


def write_job(out_dir: Path, name: str, frames: dict[str, pd.DataFrame]) -> dict[str, Path]:
    """Write a job's tables. ``runs`` is written last: its presence marks the job done."""
    order = sorted(frames, key=lambda table: table == "runs")
    return {
        table: write_atomic(to_table(frames[table], SCHEMAS[table]), table_path(out_dir, table, name))
        for table in order
    }


def file_schema_version(path: Path) -> int | None:
    """The schema version a parquet file was written with (None: not a results file)."""
    schema = pq.read_schema(path)
    if "schema_version" not in schema.names:
        return None
    values = pq.read_table(path, columns=["schema_version"]).column("schema_version").to_pylist()
    return int(values[0]) if values and values[0] is not None else None


def check_output_dir(out_dir: Path) -> None:
    """Refuse an output path that is a file, that cannot be written, or a results directory from another
    schema version."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output path {out_dir} is a file, not a directory. Choose another --out.")
    files.check_writable(out_dir)
    for table in TABLES:
        for path in sorted((out_dir / table).glob("*.parquet"))[:1]:
            found = file_schema_version(path)
            if found != SCHEMA_VERSION:
                raise ValueError(
                    f"{out_dir} holds results of schema version {found}, this offbench writes version "
                    f"{SCHEMA_VERSION}. Use a fresh --out directory (or move the old results away)."
                )


def upgrade(frame: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """Rows read from an older schema version, with this version's columns of ``schema``: renamed
    columns take their new names, a version-1 row's label is its algorithm (a missing label, too), and
    columns the row never had are null. ``schema_version`` keeps the version the row was written with."""
    frame = frame.rename(columns={old: new for old, new in RENAMED.items() if new in schema.names})
    if "label" in schema.names and "algorithm" in frame.columns:
        missing = pd.Series(None, index=frame.index, dtype=object)
        frame["label"] = frame.get("label", missing).fillna(frame["algorithm"])
    for column in ("success_rate", "final_success_rate"):
        if column in schema.names and column not in frame.columns:
            frame[column] = math.nan
    if "algorithm_origin" in schema.names and "algorithm_origin" not in frame.columns:
        frame["algorithm_origin"] = "builtin"  # plug-ins came with version 5
    return frame


def read_table(location: str | Path, schema: pa.Schema, columns: list[str] | None = None) -> pd.DataFrame:
    """A parquet file, or every parquet file of a directory, as one frame, each file upgraded to this
    schema version (:func:`upgrade`) and the columns of all files kept. ``columns`` selects columns; a
    file without one of them gives nulls there. Raises FileNotFoundError when there is no parquet file."""
    location = Path(location)
    paths = [location] if location.is_file() else sorted(location.glob("*.parquet"))
    if not paths:
        raise FileNotFoundError(f"no parquet files in {location}.")
    frames = [upgrade(pd.read_parquet(path), schema) for path in paths]
    frame = pd.concat(frames, ignore_index=True)
    return frame if columns is None else frame.reindex(columns=columns)


def upgrade_directory(out_dir: str | Path) -> list[Path]:
    """Rewrite a results directory of an older schema version in this version's layout, in place: every
    file of a table gets this version's columns (the ``metric_*`` columns of version-2 evals become rows
    of ``metrics/``, logged at the evaluation steps), and columns the rows never had are null, the job
    identity and provenance included. ``schema_version`` keeps the version the rows were written with,
    so a sweep refuses to add rows of its own to the directory. Returns the files written."""
    out_dir = Path(out_dir)
    written = []
    for path in sorted((out_dir / "evals").glob("*.parquet")):
        if pq.read_schema(path).names == EVALS_SCHEMA.names:
            continue
        frame = upgrade(pd.read_parquet(path), EVALS_SCHEMA).assign(job=path.stem)
        metric_columns = [c for c in frame.columns if c.startswith("metric_")]
        if metric_columns:
            long = frame.melt(
                id_vars=[c for c in frame.columns if c not in metric_columns],
                value_vars=metric_columns,
                var_name="name",
                value_name="value",
            )
            long["name"] = long["name"].str.removeprefix("metric_")
            metrics = long.reindex(columns=METRICS_SCHEMA.names).sort_values(["seed", "name", "step"])
            written.append(
                write_atomic(to_table(metrics, METRICS_SCHEMA), table_path(out_dir, "metrics", path.stem))
            )
        written.append(write_atomic(to_table(frame.reindex(columns=EVALS_SCHEMA.names), EVALS_SCHEMA), path))
    for path in sorted((out_dir / "runs").glob("*.parquet")):
        if pq.read_schema(path).names == RUNS_SCHEMA.names:
            continue
        frame = upgrade(pd.read_parquet(path), RUNS_SCHEMA).assign(job=path.stem)
        written.append(write_atomic(to_table(frame.reindex(columns=RUNS_SCHEMA.names), RUNS_SCHEMA), path))
    return written
