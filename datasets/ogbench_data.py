"""OGBench datasets, singletask variants: resolving an OGBench name to its npz file and task
environment, downloading a missing file on request, and reading npz files relabelled for one task.

Files are read and relabelled by the ``ogbench`` package's own ``load_dataset`` and ``relabel_dataset``.
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np

from offbench.datasets.dataset import NUMERIC_KINDS, Dataset, DatasetError, DatasetSpec, build_dataset
from offbench.hints import one_line, suggest

# OGBench's environment families, with the dataset types it publishes for each (its README and
# data_gen_scripts/commands.sh); visual-* and powderworld datasets are refused below.
OGBENCH_DATASET_TYPES: dict[str, tuple[str, ...]] = {
    "cube": ("play", "noisy"),
    "scene": ("play", "noisy"),
    "puzzle": ("play", "noisy"),
    "pointmaze": ("navigate", "stitch"),
    "antmaze": ("navigate", "stitch", "explore"),
    "humanoidmaze": ("navigate", "stitch"),
    "antsoccer": ("navigate", "stitch"),
}
# An OGBench dataset or environment name (both have this shape); group 1 is the family.
OGBENCH_ENVS = ("cube", "scene", "puzzle", "pointmaze", "antmaze", "humanoidmaze", "antsoccer", "powderworld")
OGBENCH_NAME = re.compile(rf"^(?:visual-)?({'|'.join(OGBENCH_ENVS)})-[a-z0-9\-]*v\d+$")
# Shell-style globs (for per-dataset hyper-parameters) matching every way a suite names OGBench data:
# OGBench names, npz files, and offbench's locally generated ``offbench/ogbench/...`` ids.
OGBENCH_DATASET_GLOBS = (
    "*ogbench*",
    "*.npz",
    *(f"{prefix}{env}-*" for prefix in ("", "visual-") for env in OGBENCH_ENVS),
)
OGBENCH_REQUIRED_KEYS = ("observations", "actions", "terminals", "qpos")


def ogbench_data_dir() -> Path:
    """Where OGBench dataset files live: ``$OGBENCH_DATA_DIR``, else OGBench's default ``~/.ogbench/data``."""
    return Path(os.environ.get("OGBENCH_DATA_DIR", Path.home() / ".ogbench" / "data")).expanduser()


def import_ogbench():
    """The ``ogbench`` module; importing it registers OGBench's environments with Gymnasium."""
    try:
        with warnings.catch_warnings():
            # dm_control, which builds OGBench's manipulation scenes, picks a rendering backend when first
            # imported, and its GLFW probe warns when there is no display. State observations never render,
            # so the warning says nothing about offbench's use: import it here, quietly, once.
            warnings.filterwarnings("ignore", message=".*DISPLAY.*")
            import dm_control.mujoco  # noqa: F401
            import ogbench
    except ImportError as error:
        raise DatasetError(
            f"OGBench environments and datasets need the ogbench package ({error}). Install it with "
            "`pip install ogbench==1.2.2` (an offbench dependency)."
        ) from error
    return ogbench


def ogbench_singletask_env(env_id: str) -> str:
    """Check that ``env_id`` is a registered OGBench singletask environment (the task that defines the
    rewards and the evaluation); returns it."""
    import_ogbench()
    parts = env_id.split("-")
    if env_id in gym.registry and "singletask" in parts and not env_id.startswith("visual-"):
        return env_id
    singletask = sorted(k for k in gym.registry if "-singletask" in k and not k.startswith("visual-"))
    raise DatasetError(
        f"{env_id!r} is not an OGBench singletask environment: OGBench data gets its rewards from a "
        f"singletask environment's task.{suggest(env_id, singletask)} Names look like "
        "'cube-single-singletask-task1-v0' (tasks 1-5)."
    )


def _ogbench_candidates() -> list[str]:
    """OGBench singletask dataset names: registered singletask environments × their dataset types."""
    names = []
    for env_id in gym.registry:
        parts = env_id.split("-")
        if "singletask" not in parts or env_id.startswith("visual-") or parts[0] not in OGBENCH_DATASET_TYPES:
            continue
        position = parts.index("singletask")
        for dataset_type in OGBENCH_DATASET_TYPES[parts[0]]:
            names.append("-".join(parts[:position] + [dataset_type] + parts[position:]))
    return names


def resolve_ogbench_name(name: str, env_id: str | None = None) -> tuple[str, str]:
    """(OGBench dataset file name, singletask environment) for an OGBench dataset name.

    Follows ``ogbench.make_env_and_datasets``: ``cube-single-play-singletask-task1-v0`` is the file
    ``cube-single-play-v0`` relabelled (and evaluated) with ``cube-single-singletask-task1-v0``;
    ``-singletask-v0`` is OGBench's default task. A goal-conditioned name (``cube-single-play-v0``) needs
    ``env_id``, the singletask environment that defines its rewards.
    """
    match = OGBENCH_NAME.match(name)
    if not match:
        raise DatasetError(
            f"{name!r} is not an OGBench dataset name (e.g. 'cube-single-play-singletask-task1-v0')."
        )
    if name.startswith("visual-"):
        raise DatasetError(
            f"{name!r} is a pixel-observation OGBench dataset; offbench trains on state observations. Use "
            f"{name.removeprefix('visual-')!r}."
        )
    if match.group(1) == "powderworld":
        raise DatasetError(
            f"{name!r} is a powderworld dataset, with discrete actions; offbench supports continuous actions "
            "only."
        )
    parts = name.split("-")
    if "singletask" in parts:
        position = parts.index("singletask")
        named_env = "-".join(parts[: position - 1] + parts[position:])
        data_name = "-".join(parts[:position] + parts[-1:])
        if env_id is not None and env_id != named_env:
            raise DatasetError(
                f"{name!r} names the task environment {named_env!r} but the evaluation environment given is "
                f"{env_id!r}. Drop the explicit environment (--env), or load {data_name!r} with it."
            )
        task_env = named_env
    elif env_id is None:
        example = "-".join(parts[:-1] + ["singletask", "task1"] + parts[-1:])
        raise DatasetError(
            f"{name!r} is a goal-conditioned OGBench dataset, without rewards. offbench trains on the "
            f"singletask variants, which relabel it for one task: load e.g. {example!r} (tasks 1-5; "
            "'-singletask-v0' is OGBench's default task), or pass the singletask environment "
            f"(--env {'-'.join(parts[:-2] + ['singletask', 'task1'] + parts[-1:])})."
        )
    else:
        data_name, task_env = name, env_id
    dataset_type = data_name.split("-")[-2]
    if dataset_type not in OGBENCH_DATASET_TYPES[match.group(1)]:
        import_ogbench()
        raise DatasetError(
            f"unknown OGBench dataset {name!r}: {match.group(1)} datasets are "
            f"{', '.join(OGBENCH_DATASET_TYPES[match.group(1)])}, not {dataset_type!r}."
            f"{suggest(name, _ogbench_candidates())}"
        )
    return data_name, ogbench_singletask_env(task_env)


def load_ogbench(name: str, *, env_id: str | None = None, download: bool = False) -> Dataset:
    """Load an OGBench singletask dataset by name from ``<ogbench_data_dir()>/<file>.npz``.

    ``download=True`` fetches a missing file with ``ogbench.download_datasets`` (needs internet; it also
    fetches the ``-val`` file, which offbench does not use).
    """
    data_name, task_env = resolve_ogbench_name(name, env_id)
    path = ogbench_data_dir() / f"{data_name}.npz"
    if not path.exists() and not download:
        generate_hint = (
            " offbench can also generate cube-single play data locally: "
            "`offbench datasets generate --env ogbench-cube-single`."
            if data_name.startswith("cube-single-play")
            else ""
        )
        raise DatasetError(
            f"OGBench dataset file {path} does not exist. Pass --download (download=True) to fetch it with "
            "ogbench.download_datasets (needs internet), or copy the file there by hand (the folder is "
            f"$OGBENCH_DATA_DIR, default ~/.ogbench/data).{generate_hint}"
        )
    if not path.exists():  # and download was asked for
        ogbench = import_ogbench()
        try:
            ogbench.download_datasets([data_name], dataset_dir=str(path.parent))
        except OSError as error:  # urllib's URLError and HTTPError are OSErrors
            raise DatasetError(
                f"downloading OGBench dataset {data_name!r} failed ({error}). It needs internet access to "
                f"{ogbench.utils.DATASET_URL}; offline, copy {data_name}.npz into {path.parent} by hand."
            ) from error
    return read_ogbench_npz(path, task_env, dataset_id=name)


def load_ogbench_npz(path: str | Path, *, env_id: str | None = None) -> Dataset:
    """Load an OGBench-format npz file, relabelled for a singletask environment (the task): ``env_id``,
    or else the one a file named after an OGBench singletask dataset names
    (``cube-single-play-singletask-task1-v0.npz``, see :func:`resolve_ogbench_name`). A file named
    otherwise, like OGBench's own ``cube-single-play-v0.npz``, needs ``env_id``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(
            f"dataset file {path} does not exist. Check the path (relative paths are resolved from "
            f"{Path.cwd()})."
        )
    stem = path.name.removesuffix(".npz").removesuffix("-val")
    if env_id is None and not OGBENCH_NAME.match(stem):
        raise DatasetError(
            f"cannot tell which OGBench task {path} belongs to: pass its singletask environment "
            "(--env cube-single-singletask-task1-v0), or name the file after its OGBench dataset "
            "(cube-single-play-singletask-task1-v0.npz)."
        )
    task_env = ogbench_singletask_env(env_id) if env_id is not None else resolve_ogbench_name(stem)[1]
    return read_ogbench_npz(path, task_env, dataset_id=str(path))


def read_ogbench_npz(path: Path, task_env: str, dataset_id: str) -> Dataset:
    """Read an OGBench npz with ``ogbench.load_dataset`` and relabel it with ``ogbench.relabel_utils``.

    OGBench's loader drops the last row of each episode (its action has no next observation), so an
    episode of T+1 rows gives T transitions. OGBench's ``terminals`` mark episode ends: they become
    timeouts (the value bootstraps). ``relabel_dataset`` computes each row's reward and mask from the
    stored simulator state (``qpos``, ``button_states``) of the state the action was taken in, as the
    singletask environment does (``success_timing='pre'``, ending the episode at success): a row with mask
    0 (task solved) is a true terminal, which also ends an episode in the canonical dataset, so an
    OGBench episode that reaches the goal is split there and continues as a new one.
    """
    ogbench = import_ogbench()
    from ogbench.relabel_utils import relabel_dataset

    required = list(OGBENCH_REQUIRED_KEYS)
    if task_env.startswith(("scene", "puzzle")):
        required.append("button_states")
    try:
        with np.load(path) as file:
            keys = list(file.files)
            layout = {key: _npz_header(file, key) for key in required if key in keys}
            episode_ends = np.asarray(file["terminals"]) if "terminals" in keys else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DatasetError(
            f"{path} is not a readable npz file ({error}). It may be truncated or corrupt: download or "
            "generate it again."
        ) from error
    missing = [k for k in required if k not in keys]
    if missing:
        raise DatasetError(
            f"{path} has no {', '.join(repr(k) for k in missing)} array(s); an OGBench singletask dataset "
            f"needs {', '.join(required)} (qpos/button_states define the rewards). Keys found: "
            f"{sorted(keys)[:12]}."
        )
    _check_npz_layout(path, layout)
    if not episode_ends[-1]:
        raise DatasetError(
            f"{path}: the last row does not end an episode ('terminals' is not set on it). OGBench files "
            "hold whole episodes, each ending with terminals = 1: the file may be truncated."
        )
    env = gym.make(task_env)  # registered by ogbench_singletask_env
    try:
        arrays = ogbench.load_dataset(str(path), add_info=True)
        relabel_dataset(task_env, env, arrays)
        action_space = env.action_space
    except (ValueError, IndexError, KeyError) as error:
        raise DatasetError(
            f"{path} could not be relabelled for {task_env} ({type(error).__name__}: {one_line(error)}): its "
            "simulator states (qpos/button_states) do not fit that environment. Pass the singletask "
            "environment the data was collected in (--env), or regenerate the file."
        ) from error
    finally:
        env.close()
    terminals = arrays["masks"] == 0.0
    spec = DatasetSpec(
        id=dataset_id,
        source="ogbench-npz",
        env_id=task_env,
        observation_dim=int(arrays["observations"].shape[1]),
        action_dim=int(action_space.shape[0]),
        action_low=tuple(float(x) for x in action_space.low),
        action_high=tuple(float(x) for x in action_space.high),
        description=(
            f"OGBench data {path.name} relabelled for {task_env} by ogbench.relabel_utils: reward = "
            "(subtasks solved) - (subtasks), per state; a step taken from a state that solves the task is "
            "terminal, OGBench's episode ends are timeouts. No reference scores: OGBench reports success "
            "rates."
        ),
    )
    return build_dataset(
        spec,
        observations=arrays["observations"],
        actions=arrays["actions"],
        rewards=arrays["rewards"],
        next_observations=arrays["next_observations"],
        terminals=terminals,
        timeouts=arrays["terminals"] > 0,
    )


def _npz_header(file: np.lib.npyio.NpzFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """An npz member's shape and dtype, read from its header without loading the array."""
    with file.zip.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        read = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read(member)
    return shape, dtype


def _check_npz_layout(path: Path, layout: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """OGBench's layout: numbers, [rows, dimensions] arrays and one terminal flag per row, all with the same
    number of rows, at least one."""
    for key, (shape, dtype) in layout.items():
        if dtype.kind not in NUMERIC_KINDS:
            raise DatasetError(
                f"{path}: {key!r} holds {dtype} values, not numbers. OGBench files store numeric arrays: "
                "download or generate the file again."
            )
        if len(shape) != (1 if key == "terminals" else 2):
            expected = "[rows]" if key == "terminals" else "[rows, dimensions]"
            raise DatasetError(
                f"{path}: {key!r} has shape {shape}, not {expected} as in OGBench's files. Download or "
                "generate the file again."
            )
    rows = {key: shape[0] for key, (shape, _) in layout.items()}
    if len(set(rows.values())) > 1:
        raise DatasetError(
            f"{path}: mismatched lengths, {', '.join(f'{k!r} has {n}' for k, n in rows.items())} rows. "
            "Every array needs one row per step: download or generate the file again."
        )
    if not rows["terminals"]:
        raise DatasetError(f"{path} holds no steps: its arrays have 0 rows. Pass another dataset.")
