"""What a benchmark is: a suite file (TOML) expanded into jobs.

A suite names datasets, algorithms with their samplers and hyper-parameter grids, seeds, the number of
updates, the evaluation schedule and the final-score rule::

    name = "default"
    datasets = ["offbench/hopper/medium-v0", "offbench/*/medium-replay-v0"]
    seeds = "0-4"            # or a list [0, 1, 2]
    steps = 20000
    eval_every = 5000
    eval_episodes = 10
    final_k = 2              # final score = mean of the last k evaluations

    [[algorithms]]
    name = "td3bc"
    samplers = ["uniform", "aw"]
    hparams = { hidden_dims = [256, 256] }   # fixed overrides
    grid = { alpha = [2.5, 5.0] }            # one job per combination

    [[algorithms]]
    name = "dqc"
    label = "dqc-os"                         # the method's name in the results (default: the algorithm's)
    hparams = { critic_horizon = 1, action_horizon = 1, use_chunk_critic = false }

    [[algorithms]]
    name = "rebrac.py"                       # a plug-in: a file (relative to this suite file), a module
                                             # or an installed plug-in's name

Datasets are Minari ids (local, generated on demand for ``offbench/...`` ids, or remote with
``--download``), OGBench singletask dataset names (``cube-single-play-singletask-task1-v0``, read from
the OGBench data folder), paths to D4RL HDF5 or OGBench npz files, and glob patterns over the ids.
A ``label`` tells entries of one algorithm apart in the results and the leaderboard: every label names
one algorithm, and no two entries may ask for the same job. An algorithm ``name`` is resolved as
``offbench run --algorithm`` resolves it (``algorithms/registry.py``), except that a relative file path is
relative to the suite file's folder; two entries may not bring two different plug-ins of one name.

Seeds are not separate jobs: they train together, vmapped, inside each job. Everything is validated
before any training starts, with errors that name the bad key or value and the fix.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import itertools
import re
import tomllib
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from offbench.algorithms.config import config_fields, resolve_config
from offbench.algorithms.registry import AlgorithmSource, UnknownAlgorithmError, resolve
from offbench.algorithms.sampling import SAMPLERS
from offbench.bench.train import Job
from offbench.hints import suggest

SUITE_KEYS = {
    "name",
    "description",
    "datasets",
    "seeds",
    "steps",
    "eval_every",
    "eval_episodes",
    "final_k",
    "algorithms",
}
ALGORITHM_KEYS = {"name", "label", "samplers", "hparams", "grid"}
# A label becomes part of method names ("dqc-os", "iql+rw", "td3bc@1a2b3c"): plain characters only.
LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class SuiteError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class AlgorithmEntry:
    name: str
    samplers: tuple[str, ...]
    hparams: tuple[tuple[str, Any], ...]
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    label: str | None = None  # None: the algorithm's name
    plugin: AlgorithmSource | None = None  # where a plug-in's code comes from; None: a built-in

    def settings(self) -> list[tuple[tuple[str, Any], ...]]:
        """Every (sampler x grid point) as a tuple of hyper-parameter overrides."""
        names = [name for name, _ in self.grid]
        combos = itertools.product(*[values for _, values in self.grid]) if self.grid else [()]
        out = []
        for sampler, combo in itertools.product(self.samplers, list(combos)):
            out.append((*self.hparams, ("sampler", sampler), *zip(names, combo, strict=True)))
        return out


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    description: str
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    eval_every: int
    eval_episodes: int
    final_k: int
    algorithms: tuple[AlgorithmEntry, ...]

    def jobs(self, dataset_ids: Iterable[str]) -> list[Job]:
        """Algorithm x dataset x hyper-parameter jobs, in a stable order."""
        return [
            Job(
                algorithm=entry.name,
                dataset=dataset,
                seeds=self.seeds,
                steps=self.steps,
                eval_every=self.eval_every,
                eval_episodes=self.eval_episodes,
                hparams=setting,
                final_k=self.final_k,
                suite=self.name,
                label=entry.label,
                plugin=entry.plugin,
            )
            for dataset in dataset_ids
            for entry in self.algorithms
            for setting in entry.settings()
        ]


def builtin_suites() -> dict[str, Path]:
    folder = resources.files("offbench.bench") / "suites"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".toml")}


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name (``default``, ``ci``, ...) or a TOML file by path."""
    path = Path(name_or_path)
    if not path.exists():
        suites = builtin_suites()
        if name_or_path not in suites:
            raise SuiteError(
                f"unknown suite {name_or_path!r}: not a file and not a built-in suite."
                f"{suggest(name_or_path, list(suites))} Built-in: {', '.join(sorted(suites))}."
            )
        path = suites[name_or_path]
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise SuiteError(f"{path} is not valid TOML: {error}.") from error
    return parse_suite(raw, default_name=path.stem, source=str(path), base=path.parent)


def _unknown(keys: Iterable[str], allowed: set[str], where: str) -> None:
    for key in keys:
        if key not in allowed:
            raise SuiteError(
                f"{where}: unknown key {key!r}.{suggest(key, sorted(allowed))} "
                f"Allowed keys: {', '.join(sorted(allowed))}."
            )


def _positive_int(raw: dict[str, Any], key: str, default: int | None, where: str) -> int:
    value = raw.get(key, default)
    if value is None:
        raise SuiteError(f"{where}: missing required key {key!r}.")
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise SuiteError(
            f"{where}: {key} must be a positive integer, got {value!r}. Write it as a number without "
            f"quotes, e.g. {key} = 1000."
        )
    return value


def _strings(value: Any, key: str, where: str, example: str, unique: bool = False) -> list[str]:
    """A non-empty list of strings; a single string is read as a list of one (``samplers = "aw"``)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise SuiteError(
            f"{where}: {key} must be a string or a non-empty list of strings, e.g. {key} = {example}; got "
            f"{value!r}."
        )
    repeated = [v for i, v in enumerate(value) if v in value[:i]]
    if unique and repeated:
        raise SuiteError(f"{where}: {key} lists {repeated[0]!r} more than once; list each one once.")
    return value


def seed_list(text: str) -> tuple[int, ...]:
    """'0-4' -> (0,1,2,3,4); '0,2,5' -> (0,2,5); '3' -> (3,). Ranges and lists may be mixed."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ValueError(
                f"cannot parse {text!r}: use a range '0-4', a list '0,2,5' or a single seed '3' "
                "(non-negative integers)."
            )
        low, high = int(match.group(1)), int(match.group(2) or match.group(1))
        if high < low:
            raise ValueError(f"empty seed range {part!r}: write the smaller seed first, e.g. '0-4'.")
        seeds.extend(range(low, high + 1))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {text!r} repeat a seed.")
    return tuple(seeds)


def parse_seeds(value: Any, where: str) -> tuple[int, ...]:
    if isinstance(value, str):
        try:
            return seed_list(value)
        except ValueError as error:
            raise SuiteError(f"{where}: {error}") from error
    if isinstance(value, list) and value and all(_natural(v) for v in value):
        if len(set(value)) != len(value):
            raise SuiteError(f"{where}: seeds repeat a value: {value}.")
        return tuple(value)
    raise SuiteError(
        f"{where}: seeds must be a string like '0-4' or a list of non-negative integers, got {value!r}."
    )


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_suite(
    raw: dict[str, Any], default_name: str = "suite", source: str = "suite", base: Path | None = None
) -> Suite:
    """The suite ``raw`` describes; ``base`` is the folder relative plug-in paths start from (the suite
    file's; None: the working directory)."""
    _unknown(raw, SUITE_KEYS, source)
    for key in ("name", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise SuiteError(
                f'{source}: {key} must be a string in quotes, e.g. {key} = "tiny"; got {raw[key]!r}.'
            )
    if "name" in raw and not LABEL.match(raw["name"]):
        raise SuiteError(
            f"{source}: name {raw['name']!r} names the results folder (runs/<name>): use letters, digits, "
            "'_', '.' and '-', starting with a letter or digit."
        )
    if "datasets" not in raw:
        raise SuiteError(f"{source}: missing required key 'datasets' (dataset ids, paths or glob patterns).")
    datasets = _strings(raw["datasets"], "datasets", source, '["offbench/hopper/medium-v0"]')
    entries = raw.get("algorithms")
    if not isinstance(entries, list) or not entries:
        raise SuiteError(
            f"{source}: add at least one [[algorithms]] table with a 'name'"
            + ("." if entries is None else f", not algorithms = {entries!r}.")
        )
    algorithms = []
    for index, entry in enumerate(entries):
        where = f"{source}: algorithms[{index}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise SuiteError(f"{where}: each [[algorithms]] table needs a 'name'.")
        name = entry["name"]
        if not isinstance(name, str):
            raise SuiteError(
                f'{where}: name must be an algorithm name in quotes, e.g. name = "td3bc"; got {name!r}.'
            )
        _unknown(entry, ALGORITHM_KEYS, f"{where} ({name})")
        try:
            declared, origin = resolve(name, base)
        except UnknownAlgorithmError as error:
            raise SuiteError(f"{where}: {error}") from error
        name = declared.name
        label = entry.get("label")
        if label is not None and (not isinstance(label, str) or not LABEL.match(label)):
            raise SuiteError(
                f"{where} ({name}): label must be a name of letters, digits, '_', '.' and '-' starting with "
                f'a letter or digit (e.g. "dqc-os"), got {label!r}.'
            )
        config_type = declared.Config
        fields = config_fields(config_type)
        samplers = _strings(
            entry.get("samplers", ["uniform"]),
            "samplers",
            f"{where} ({name})",
            '["uniform", "aw"]',
            unique=True,
        )
        for sampler in samplers:
            if sampler not in SAMPLERS:
                raise SuiteError(
                    f"{where} ({name}): unknown sampler {sampler!r}.{suggest(sampler, SAMPLERS)} "
                    f"Available: {', '.join(SAMPLERS)}."
                )
        hparams = entry.get("hparams", {})
        grid = entry.get("grid", {})
        for kind, table in (("hparams", hparams), ("grid", grid)):
            if not isinstance(table, dict):
                raise SuiteError(
                    f"{where} ({name}): '{kind}' must be a table of name = value, e.g. {kind} = "
                    f"{{ alpha = {'[2.5, 5.0]' if kind == 'grid' else '2.5'} }}; got {table!r}."
                )
            for key in table:
                if key not in fields or key in {"sampler", "total_steps"}:
                    raise SuiteError(
                        f"{where} ({name}): {kind} key {key!r} is not a hyper-parameter of "
                        f"{name}.{suggest(key, list(fields))} Known: {', '.join(sorted(fields))}."
                    )
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise SuiteError(
                    f"{where} ({name}): grid.{key} must be a non-empty list of the values to try, got "
                    f"{values!r}. Write it as a list, or put a single fixed value in hparams."
                )
        converted_grid = tuple((k, tuple(_freeze(v) for v in values)) for k, values in grid.items())
        algorithm = AlgorithmEntry(
            name=name,
            samplers=tuple(samplers),
            hparams=tuple((k, _freeze(v)) for k, v in hparams.items()),
            grid=converted_grid,
            label=label,
            plugin=None if origin.kind == "builtin" else origin,
        )
        for setting in algorithm.settings():  # every combination must build a valid config
            try:
                resolve_config(config_type, "validation", (), dict(setting))
            except (TypeError, ValueError) as error:
                raise SuiteError(f"{where} ({name}): {error}") from error
        algorithms.append(algorithm)
    _check_labels(algorithms, source)

    suite = Suite(
        name=raw.get("name", default_name),
        description=raw.get("description", ""),
        datasets=tuple(datasets),
        seeds=parse_seeds(raw.get("seeds", "0-4"), source),
        steps=_positive_int(raw, "steps", None, source),
        eval_every=_positive_int(raw, "eval_every", None, source),
        eval_episodes=_positive_int(raw, "eval_episodes", 10, source),
        final_k=_positive_int(raw, "final_k", 1, source),
        algorithms=tuple(algorithms),
    )
    try:  # the schedule rules (eval_every <= steps, final_k <= evaluations) are Job's, checked now
        suite.jobs(["validation"])
    except ValueError as error:
        raise SuiteError(f"{source}: {error}") from error
    return suite


def _check_labels(algorithms: list[AlgorithmEntry], source: str) -> None:
    """Every method name (an entry's label, else its algorithm) belongs to one algorithm, and every
    algorithm name to one piece of code, so the results never pool two algorithms under one name."""
    plugins: dict[str, tuple[int, AlgorithmSource | None]] = {}
    for index, entry in enumerate(algorithms):
        first, plugin = plugins.setdefault(entry.name, (index, entry.plugin))
        if plugin != entry.plugin:
            origins = [p.origin if p is not None else "builtin" for p in (plugin, entry.plugin)]
            raise SuiteError(
                f"{source}: algorithms[{index}] ({origins[1]}) and algorithms[{first}] ({origins[0]}) are "
                f"two plug-ins that declare the algorithm {entry.name!r}; one name must mean one algorithm. "
                "Rename one (ALGORITHM = Algorithm(name=...))."
            )
    owners: dict[str, tuple[int, str]] = {}
    for index, entry in enumerate(algorithms):
        label = entry.label or entry.name
        first, owner = owners.setdefault(label, (index, entry.name))
        if owner != entry.name:
            raise SuiteError(
                f"{source}: algorithms[{index}] ({entry.name}) is labelled {label!r}, the method name of "
                f"algorithms[{first}] ({owner}); a label names one algorithm. Choose another label."
            )


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def expand_datasets(patterns: Iterable[str], available: Callable[[], list[str]]) -> list[str]:
    """Resolve ids and glob patterns against the available dataset ids; paths pass through."""
    ids: list[str] = []
    known: list[str] | None = None
    for pattern in patterns:
        if not any(ch in pattern for ch in "*?["):
            ids.append(pattern)
            continue
        known = available() if known is None else known
        matches = sorted(fnmatch.filter(known, pattern))
        if not matches:
            raise SuiteError(
                f"dataset pattern {pattern!r} matches no available dataset.{suggest(pattern, known)} "
                f"Generate offbench's datasets (`offbench datasets generate`) or fix the pattern."
            )
        ids.extend(matches)
    return list(dict.fromkeys(ids))
