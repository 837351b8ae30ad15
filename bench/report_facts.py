"""What the rows say about themselves, for the report: budget and provenance, datasets, hyper-parameters.

Nothing here is typed by hand: the header comes from the runs rows' budget and provenance columns
(schema 3, :mod:`offbench.bench.results`), the dataset sizes and quality metrics from the rows'
``dataset_*`` columns, and the hyper-parameters from the rows' ``hparams`` (the resolved config), set
against the algorithm's defaults and its published per-dataset overrides (``DATASET_OVERRIDES``).
Rows of older schemas lack some columns; then the evals table, the quality metrics stored beside the
dataset, or "not recorded" stand in, and the report says which.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

# The papers' budget, against which a run's updates are judged (D4RL locomotion: 1M updates).
PAPER_UPDATES = 1_000_000
EARLY_LEARNING_FRACTION = 0.1
RUNS_COLUMNS = [
    "suite",
    "hparams",
    "steps",
    "eval_every",
    "eval_episodes",
    "final_k",
    "code_version",
    "written_at",
    "device",
    "dataset_transitions",
    "dataset_episodes",
    "dataset_tq",
    "dataset_saco",
    # Where each algorithm came from: a plug-in's hyper-parameters are read from its own declaration.
    "algorithm_origin",
    "algorithm_digest",
]
NOT_RECORDED = "not recorded"
QUALITY_SOURCES = {
    "rows": "the results rows",
    "datasets.parquet": "the results directory's datasets.parquet",
    "stored": "the metrics stored beside the local dataset (the rows do not carry them)",
}


class ReportError(ValueError):
    """The results cannot be reported; the message says why and what to do."""


@dataclass(frozen=True)
class Header:
    """The budget and provenance of a results directory, each a sorted tuple of the values found."""

    suites: tuple[tuple[str, str], ...]  # (name, description of the built-in suite, or "")
    steps: tuple[int, ...]  # updates per seed
    eval_every: tuple[int, ...]  # updates between evaluations
    eval_episodes: tuple[int, ...]  # episodes per evaluation
    final_k: tuple[int, ...]  # the final score averages the last final_k evaluations
    seeds: tuple[int, ...]
    runs: int  # runs rows (one per seed)
    failed_seeds: int  # seeds of jobs the sweep recorded as failed (no rows)
    commits: tuple[str, ...]  # code_version of the rows
    dates: tuple[str, ...]  # the first and last UTC date the rows were written
    devices: tuple[str, ...]

    @property
    def early_learning(self) -> bool:
        """Whether the budget is below a tenth of the papers' 1M updates."""
        return bool(self.steps) and max(self.steps) < EARLY_LEARNING_FRACTION * PAPER_UPDATES


def _ints(values: pd.Series) -> tuple[int, ...]:
    return tuple(sorted({int(v) for v in values.dropna()}))


def _strings(values: pd.Series) -> tuple[str, ...]:
    found = values.dropna().astype(str)
    return tuple(sorted(set(found))) if len(found) == len(values) else (*sorted(set(found)), NOT_RECORDED)


def _suite_description(name: str) -> str:
    from offbench.bench.suite import SuiteError, builtin_suites, load_suite

    if name not in builtin_suites():
        return ""
    try:
        return load_suite(name).description
    except SuiteError:
        return ""


def _evaluation_interval(evals: pd.DataFrame) -> tuple[int, ...]:
    """The gap between consecutive evaluation steps of each job, for rows without ``eval_every``."""
    gaps = set()
    for _, frame in evals.groupby(["label", "sampler", "dataset", "hparams_hash"]):
        steps = np.unique(frame["step"].to_numpy())
        if len(steps) > 1:
            gaps.add(int(np.diff(steps).min()))
        elif len(steps) == 1:
            gaps.add(int(steps[0]))
    return tuple(sorted(gaps))


def header(runs: pd.DataFrame, evals: pd.DataFrame, failures: pd.DataFrame) -> Header:
    """The header facts of ``runs`` (the runs rows), with ``evals`` for what older rows lack."""
    eval_every = _ints(runs["eval_every"])
    if not eval_every and len(evals):
        eval_every = _evaluation_interval(evals)
    eval_episodes = _ints(runs["eval_episodes"])
    if not eval_episodes and len(evals):
        eval_episodes = _ints(evals["episodes"])
    written = runs["written_at"].dropna().astype(str).str[:10]
    return Header(
        suites=tuple((name, _suite_description(name)) for name in sorted(runs["suite"].dropna().unique())),
        steps=_ints(runs["steps"]),
        eval_every=eval_every,
        eval_episodes=eval_episodes,
        final_k=_ints(runs["final_k"]),
        seeds=_ints(runs["seed"]),
        runs=len(runs),
        failed_seeds=int(failures["seeds"].sum()),
        commits=_strings(runs["code_version"]),
        dates=(written.min(), written.max()) if len(written) else (),
        devices=_strings(runs["device"]),
    )


def dataset_quality(runs: pd.DataFrame, quality_file: pd.DataFrame | None) -> pd.DataFrame:
    """Per dataset: transitions, episodes, TQ, SACo and where they come from (:data:`QUALITY_SOURCES`).

    The rows' ``dataset_*`` columns first; for a dataset whose rows lack them, ``DIR/datasets.parquet``
    (columns ``dataset``, ``tq``, ``saco``), else the metrics stored beside the local dataset, computed
    now when the dataset is one offbench generates and they are missing. A dataset found nowhere keeps
    nulls.
    """
    columns = {"dataset_transitions": "transitions", "dataset_episodes": "episodes"}
    columns |= {"dataset_tq": "tq", "dataset_saco": "saco"}
    frame = runs.groupby("dataset", sort=True)[list(columns)].first().rename(columns=columns)
    frame["source"] = np.where(frame[["tq", "saco"]].notna().any(axis=1), "rows", "")
    for dataset in frame.index[frame["source"] == ""]:
        found = _quality_elsewhere(dataset, quality_file)
        if found is not None:
            source, values = found
            for key in ("transitions", "episodes", "tq", "saco"):
                if pd.isna(frame.loc[dataset, key]) and values.get(key) is not None:
                    frame.loc[dataset, key] = values[key]
            frame.loc[dataset, "source"] = source
    return frame.rename_axis("dataset").reset_index()


def _quality_elsewhere(dataset: str, quality_file: pd.DataFrame | None) -> tuple[str, dict] | None:
    if quality_file is not None and dataset in set(quality_file["dataset"]):
        row = quality_file.drop_duplicates("dataset").set_index("dataset").loc[dataset]
        return "datasets.parquet", {key: row.get(key) for key in ("tq", "saco")}
    from offbench.datasets.generate.catalog import complete_quality
    from offbench.datasets.quality import read_quality

    stored = read_quality(dataset)
    if stored is None and complete_quality(dataset):
        stored = read_quality(dataset)
    return None if stored is None else ("stored", stored)


def hyperparameters(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, dataset, hyper-parameter): the resolved value (JSON) and where it comes from.

    ``source`` is ``published`` when the algorithm's ``DATASET_OVERRIDES`` set the value for that
    dataset (the authors' per-dataset setting), ``suite`` when it differs from the algorithm's default
    otherwise (the suite or command line set it), and ``default`` else; ``unknown`` for a plug-in whose
    code is no longer where its rows say it came from, or has changed since. Rows without ``hparams``
    (older schemas) are left out.
    """
    from offbench.algorithms.config import published_override

    rows = []
    configs = runs.dropna(subset=["hparams"]).drop_duplicates(["method", "dataset"])
    if "algorithm_origin" not in configs:
        configs = configs.assign(algorithm_origin="builtin", algorithm_digest=None)
    for method, dataset, algorithm, hparams, origin, digest in configs[
        ["method", "dataset", "algorithm", "hparams", "algorithm_origin", "algorithm_digest"]
    ].itertuples(index=False):
        module = declaration(algorithm, origin, digest)
        if module is None:
            rows += [(method, dataset, k, json.dumps(v), "unknown") for k, v in json.loads(hparams).items()]
            continue
        defaults = {
            f.name: _jsonable(f.default)
            for f in dataclasses.fields(module.Config)
            if f.default is not dataclasses.MISSING
        }
        published = {
            k: _jsonable(v) for k, v in published_override(dataset, module.dataset_overrides).items()
        }
        for name, value in json.loads(hparams).items():
            if name in published and published[name] == value:
                source = "published"
            elif name in defaults and defaults[name] != value:
                source = "suite"
            else:
                source = "default"
            rows.append((method, dataset, name, json.dumps(value), source))
    return pd.DataFrame(rows, columns=["method", "dataset", "name", "value", "source"])


def declaration(algorithm: str, origin: object, digest: object):
    """The algorithm that wrote rows of this origin and digest, or None when its code cannot be found
    unchanged (a plug-in file moved or edited since)."""
    from offbench.algorithms.registry import UnknownAlgorithmError, get_algorithm, resolve

    if not isinstance(origin, str) or origin == "builtin":
        return get_algorithm(algorithm)
    kind, _, where = origin.partition(":")
    reference = {"file": where, "module": where}.get(kind, algorithm)
    try:
        found, source = resolve(reference)
    except UnknownAlgorithmError:
        return None
    return found if source.digest == digest and found.name == algorithm else None


def _jsonable(value: object) -> object:
    """A config value as it reads back from the rows' ``hparams`` JSON (tuples become lists)."""
    return json.loads(json.dumps(value))
