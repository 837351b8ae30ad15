"""Loaders: Minari dataset ids (local, or downloaded on request), D4RL-format HDF5 files and OGBench
singletask datasets (npz files, by path or by OGBench name).

All produce the canonical :class:`~offbench.datasets.dataset.Dataset`. The ``d4rl`` package is not
used (it cannot be installed on modern Python); its HDF5 layout is read directly with h5py. OGBench
files are read and relabelled by the ``ogbench`` package's own ``load_dataset`` and ``relabel_dataset``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import gymnasium as gym
import h5py
import numpy as np

from offbench.datasets import robotics
from offbench.datasets.dataset import (
    ACTION_BOUND_TOLERANCE,
    DATASET_FILE_SUFFIXES,
    Dataset,
    DatasetError,
    DatasetSpec,
    build_dataset,
    from_episodes,
)
from offbench.files import atomic_path
from offbench.hints import suggest

# D4RL's reference returns (d4rl/infos.py, identical for v0-v2). They belong to the old mujoco-py
# environments, so on Gymnasium v5 they are approximate; the source string says so.
D4RL_REFERENCE_SCORES: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}
D4RL_EVAL_ENVS: dict[str, str] = {
    "halfcheetah": "HalfCheetah-v5",
    "hopper": "Hopper-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
}
D4RL_NAME = re.compile(r"^(halfcheetah|hopper|walker2d|ant)-[a-z\-]+-v\d+$")
D4RL_REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
NUMERIC_KINDS = "biuf"  # NumPy dtype kinds of bool, signed and unsigned integer and float arrays


DatasetKind = Literal["npz", "hdf5", "ogbench", "minari"]


def dataset_kind(name: str) -> DatasetKind:
    """What a dataset name is, by the one rule that loading and provisioning share: a path with an OGBench
    npz suffix, a path with a D4RL HDF5 suffix, an OGBench singletask name, or a Minari id."""
    suffix = Path(name).suffix
    if suffix == ".npz":
        return "npz"
    if suffix in DATASET_FILE_SUFFIXES:
        return "hdf5"
    if OGBENCH_NAME.match(name):
        return "ogbench"
    if "/" not in name and not re.search(r"-v\d+$", name):
        raise DatasetError(
            f"{name!r} is neither a dataset file (.hdf5, .h5, .npz), an OGBench dataset name nor a Minari "
            "dataset id (ids look like 'namespace/name-v0', e.g. 'mujoco/hopper/medium-v0')."
        )
    return "minari"


def load_dataset(name: str, *, env_id: str | None = None, download: bool = False) -> Dataset:
    """Load a dataset by Minari id (``mujoco/hopper/medium-v0``), by OGBench singletask name
    (``cube-single-play-singletask-task1-v0``), or by path to a D4RL HDF5 file or an OGBench npz file."""
    kind = dataset_kind(name)
    if kind == "npz":
        return load_ogbench_npz(Path(name).expanduser(), env_id=env_id)
    if kind == "hdf5":
        return load_d4rl_hdf5(Path(name).expanduser(), env_id=env_id)
    if kind == "ogbench":
        return load_ogbench(name, env_id=env_id, download=download)
    return load_minari(name, download=download, env_id=env_id)


# --------------------------------------------------------------------------------------------------
# Minari


def minari_datasets_path() -> Path:
    return Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))


def load_minari(dataset_id: str, *, download: bool = False, env_id: str | None = None) -> Dataset:
    """Load a Minari dataset. ``download=True`` fetches a missing id from the Minari remote."""
    import minari

    local = set(minari.list_local_datasets())
    folder = minari_datasets_path() / dataset_id
    if dataset_id not in local and (folder / "data").is_dir():
        raise DatasetError(
            f"dataset {dataset_id!r} exists under {minari_datasets_path()} but Minari cannot read its "
            "metadata: the files may be corrupt. Delete that folder and regenerate or re-download it."
        )
    if dataset_id not in local:
        if not download:
            raise DatasetError(
                f"unknown dataset {dataset_id!r}: not found under {minari_datasets_path()}."
                f"{suggest(dataset_id, sorted(local))} "
                "Generate offbench's own datasets with `offbench datasets generate`, or pass --download to "
                "fetch a remote Minari id (needs internet)."
            )
        download_minari_dataset(dataset_id)
    corrupt = (
        f"The files under {folder} may be truncated or corrupt: delete that folder and regenerate or "
        "re-download it."
    )
    try:
        minari_dataset = minari.load_dataset(dataset_id)
    except (OSError, KeyError, ValueError) as error:
        raise DatasetError(
            f"dataset {dataset_id!r} could not be read ({type(error).__name__}: {one_line(error)}). {corrupt}"
        ) from error

    metadata = minari_dataset.storage.metadata
    observation_space = minari_dataset.observation_space
    action_space = minari_dataset.action_space
    if not isinstance(action_space, gym.spaces.Box):
        raise DatasetError(
            f"dataset {dataset_id!r} has a {type(action_space).__name__} action space; "
            "offbench supports continuous (Box) actions only."
        )
    flat_space = gym.spaces.flatten_space(observation_space)
    # Minari stores a Dict space with sorted keys; its leaves, depth first (nested keys joined with "/"),
    # are recorded in the spec, and evaluation flattens each environment observation by the same keys
    # (``flatten_observation``). Goal-conditioned data (the D4RL mazes, Kitchen) keep their goal this way.
    try:
        observation_keys = robotics.observation_paths(observation_space)
    except ValueError as error:
        raise DatasetError(
            f"dataset {dataset_id!r}: {error}; offbench flattens Dict observations of Box entries only."
        ) from error

    def flatten(observations) -> np.ndarray:
        if observation_keys is None:
            return np.asarray(observations, dtype=np.float32).reshape(len(observations), -1)
        count = len(robotics.leaf(observations, observation_keys[0]))
        return np.concatenate(
            [
                np.asarray(robotics.leaf(observations, k), np.float32).reshape(count, -1)
                for k in observation_keys
            ],
            axis=1,
        )

    # Minari keeps the evaluation env spec privately; it is what recover_environment(eval_env=True) uses.
    eval_spec = getattr(minari_dataset, "_eval_env_spec", None) or minari_dataset.spec.env_spec
    resolved_env_id = env_id or (eval_spec.id if eval_spec is not None else None)
    ref_min, ref_max = metadata.get("ref_min_score"), metadata.get("ref_max_score")
    has_refs = ref_min is not None and ref_max is not None
    spec = DatasetSpec(
        id=dataset_id,
        source="minari",
        env_id=resolved_env_id,
        observation_dim=int(flat_space.shape[0]),
        action_dim=int(action_space.shape[0]),
        action_low=tuple(float(x) for x in action_space.low),
        action_high=tuple(float(x) for x in action_space.high),
        ref_min_score=float(ref_min) if has_refs else None,
        ref_max_score=float(ref_max) if has_refs else None,
        ref_source="minari-metadata" if has_refs else None,
        eval_env_spec=eval_spec.to_json() if (eval_spec is not None and env_id is None) else None,
        observation_keys=observation_keys,
        description=metadata.get("description"),
    )

    def episodes() -> Iterator[dict[str, np.ndarray]]:
        # Minari reads the episodes lazily, from main_data.hdf5, while from_episodes consumes them: a
        # truncated or damaged file fails here, not when the dataset was opened above.
        try:
            for episode in minari_dataset.iterate_episodes():
                yield {
                    "observations": flatten(episode.observations),
                    "actions": episode.actions,
                    "rewards": episode.rewards,
                    "terminations": episode.terminations,
                    "truncations": episode.truncations,
                }
        except (OSError, KeyError, ValueError, TypeError) as error:
            raise DatasetError(
                f"dataset {dataset_id!r}: its episodes could not be read ({type(error).__name__}: "
                f"{one_line(error)}). {corrupt}"
            ) from error

    return from_episodes(spec, episodes())


def one_line(error: BaseException) -> str:
    """An exception's message on one line: messages from h5py, Gymnasium or HTTP clients may span several."""
    return " ".join(str(error).split())


# Failures to reach a server, by class name anywhere in an exception's class hierarchy. Minari's remote
# clients raise their own classes (huggingface_hub's httpx or requests errors, google-cloud's transport
# errors), which share no base with the standard library's and may not even be installed, so they cannot be
# imported to be caught. A server that answered with an error status (HTTP 404) is not among them.
CONNECTION_ERRORS = frozenset(
    {
        "ConnectionError",  # builtins, requests, huggingface_hub's OfflineModeIsEnabled
        "TimeoutError",
        "gaierror",  # socket: the name does not resolve
        "URLError",  # urllib
        "TransportError",  # httpx (ConnectError, timeouts), google.auth
        "NewConnectionError",  # urllib3
        "MaxRetryError",
        "Timeout",  # requests
        "RetryError",  # google.api_core, when every retry failed
    }
)


def is_connection_error(error: BaseException) -> bool:
    """Whether ``error``, or an exception that caused it, says the server could not be reached."""
    import urllib.error

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        names = {cls.__name__ for cls in type(current).__mro__}
        if names & CONNECTION_ERRORS and not isinstance(current, urllib.error.HTTPError):
            return True
        current = current.__cause__ or current.__context__
    return False


def download_minari_dataset(dataset_id: str) -> None:
    """Fetch a Minari dataset from the Minari server into :func:`minari_datasets_path`.

    Every failure is one DatasetError: no connection, an id the server does not have, an interrupted
    transfer. A dataset folder the failed attempt created is removed, so that the next attempt does not
    find a half-downloaded dataset.
    """
    import minari

    folder = minari_datasets_path() / dataset_id
    existed = folder.exists()
    try:
        minari.download_dataset(dataset_id)
    except Exception as error:  # the remote clients' classes differ (see CONNECTION_ERRORS)
        if not existed:
            shutil.rmtree(folder, ignore_errors=True)
        detail = f"{type(error).__name__}: {one_line(error).rstrip('.')}"
        if isinstance(error, ImportError):
            raise DatasetError(
                f"downloading Minari dataset {dataset_id!r} needs Minari's remote client ({detail}). "
                "Reinstall offbench (`pip install -e .`), which installs minari[hf]."
            ) from error
        if is_connection_error(error):
            raise DatasetError(
                f"downloading Minari dataset {dataset_id!r} failed: no connection to the Minari server "
                f"({detail}). Connect to the internet and retry, or copy the dataset folder to {folder}."
            ) from error
        raise DatasetError(
            f"downloading Minari dataset {dataset_id!r} failed ({detail}). Check the id against "
            "`minari list remote`, then retry."
        ) from error


# --------------------------------------------------------------------------------------------------
# D4RL-format HDF5


def _read_hdf5(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    arrays: dict[str, np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            f.visititems(
                lambda key, item: (
                    arrays.__setitem__(key, item[()])
                    if isinstance(item, h5py.Dataset) and not key.startswith("metadata/policy")
                    else None
                )
            )
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except (OSError, KeyError, RuntimeError) as error:  # h5py reports damaged objects with all three
        raise DatasetError(
            f"{path} is not a readable HDF5 file ({one_line(error)}). It may be truncated or corrupt: "
            "download or generate it again."
        ) from error
    return arrays, attrs


def _check_d4rl_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Numbers in the layout D4RL writes: [rows, dimensions] observations and actions, one value per row
    for the rest, and at least one row."""
    for key in (*D4RL_REQUIRED_KEYS, "timeouts", "next_observations"):
        if key in arrays and arrays[key].dtype.kind not in NUMERIC_KINDS:
            raise DatasetError(
                f"{path}: {key!r} holds {arrays[key].dtype} values, not numbers. A D4RL-format file stores "
                "numeric arrays: write the file again with numbers."
            )
    for key in ("observations", "actions", "next_observations"):
        if key in arrays and arrays[key].ndim != 2:
            raise DatasetError(
                f"{path}: {key!r} has shape {arrays[key].shape}; a D4RL-format file stores it as a 2-D "
                "[rows, dimensions] array (a 1-dimensional observation is [rows, 1]). Write the file again "
                "in that layout."
            )
    for key in ("rewards", "terminals", "timeouts"):
        shape = arrays[key].shape if key in arrays else (0,)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise DatasetError(
                f"{path}: {key!r} has shape {shape}; it needs one value per row ([rows] or [rows, 1]). Write "
                "the file again in that layout."
            )
    if len(arrays["rewards"]) == 0:
        raise DatasetError(
            f"{path} holds no steps: its arrays have 0 rows. Write the data into it again, or pass another "
            "dataset."
        )


def load_d4rl_hdf5(path: str | Path, *, env_id: str | None = None) -> Dataset:
    """Read a D4RL-layout HDF5 file (flat arrays ``observations``, ``actions``, ``rewards``,
    ``terminals``, optional ``timeouts`` and ``next_observations``).

    With ``next_observations`` present every row is a transition. Without it we follow
    ``d4rl.qlearning_dataset``: the next observation is the following row, and a row whose episode
    was cut by a timeout is dropped, since its following row belongs to the next episode. The row
    before it then ends that episode, and is marked as a timeout (the episode ended by the time limit,
    the value bootstraps). A terminal last row is kept (its next observation is masked anyway); any
    other last row is dropped, leaving an incomplete final episode.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(
            f"dataset file {path} does not exist. Check the path (relative paths are resolved "
            f"from {Path.cwd()})."
        )
    arrays, attrs = _read_hdf5(path)
    missing = [k for k in D4RL_REQUIRED_KEYS if k not in arrays]
    if missing:
        raise DatasetError(
            f"{path} has no {', '.join(repr(k) for k in missing)} dataset(s); a D4RL-format file needs "
            f"{', '.join(D4RL_REQUIRED_KEYS)} (and usually 'timeouts'). Keys found: {sorted(arrays)[:12]}."
        )
    _check_d4rl_arrays(path, arrays)

    observations = np.asarray(arrays["observations"], np.float32)
    actions = np.asarray(arrays["actions"], np.float32)
    rewards = np.asarray(arrays["rewards"], np.float32).reshape(-1)
    terminals = np.asarray(arrays["terminals"]).reshape(-1).astype(bool)
    n = rewards.shape[0]
    timeouts = np.asarray(arrays.get("timeouts", np.zeros(n, bool))).reshape(-1).astype(bool)
    checked = [
        ("observations", observations),
        ("actions", actions),
        ("terminals", terminals),
        ("timeouts", timeouts),
    ]
    if "next_observations" in arrays:
        checked.append(("next_observations", np.asarray(arrays["next_observations"])))
    for key, array in checked:
        if array.shape[0] != n:
            raise DatasetError(
                f"{path}: mismatched lengths, 'rewards' has {n} rows but {key!r} has "
                f"{array.shape[0]}. Every key needs one row per step."
            )

    if "next_observations" in arrays:
        next_observations = np.asarray(arrays["next_observations"], np.float32)
        keep = np.ones(n, bool)
    else:
        next_observations = np.concatenate([observations[1:], observations[-1:]])
        keep = ~(timeouts & ~terminals)
        keep[-1] = terminals[-1]
        # The last kept row of a timed-out episode now ends that episode by the time limit.
        dropped_timeouts = np.nonzero(~keep & timeouts & ~terminals)[0]
        dropped_timeouts = dropped_timeouts[dropped_timeouts > 0]
        previous = dropped_timeouts - 1
        previous = previous[keep[previous] & ~terminals[previous]]
        timeouts = timeouts.copy()
        timeouts[previous] = True

    stem = path.name.removesuffix(".hdf5").removesuffix(".h5")
    d4rl_match = D4RL_NAME.match(stem)
    env_name = d4rl_match.group(1) if d4rl_match else None
    resolved_env = env_id or attrs.get("env_id") or (D4RL_EVAL_ENVS.get(env_name) if env_name else None)
    if "ref_min_score" in attrs and "ref_max_score" in attrs:
        ref_min, ref_max = float(attrs["ref_min_score"]), float(attrs["ref_max_score"])
        ref_source = str(attrs.get("ref_source", "file-attributes"))
    elif env_name:
        ref_min, ref_max = D4RL_REFERENCE_SCORES[env_name]
        ref_source = "d4rl-infos (mujoco-py v2 references; approximate on Gymnasium v5)"
    else:
        ref_min = ref_max = ref_source = None

    action_dim = actions.shape[1] if actions.ndim == 2 else 0
    # write_d4rl_hdf5 stores list attributes as JSON strings.
    low, high = (
        json.loads(v) if isinstance(v, str) else v
        for v in (attrs.get("action_low"), attrs.get("action_high"))
    )
    spec = DatasetSpec(
        id=str(path),
        source="d4rl-hdf5",
        env_id=resolved_env,
        observation_dim=int(observations.shape[1]) if observations.ndim == 2 else 0,
        action_dim=int(action_dim),
        # D4RL locomotion actions live in [-1, 1]; a file may state other bounds in its attributes.
        action_low=tuple(np.broadcast_to(np.asarray(-1.0 if low is None else low, float), (action_dim,))),
        action_high=tuple(np.broadcast_to(np.asarray(1.0 if high is None else high, float), (action_dim,))),
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        ref_source=ref_source,
        description=str(attrs["description"]) if "description" in attrs else None,
    )
    return build_dataset(
        spec,
        observations=observations[keep],
        actions=actions[keep],
        rewards=rewards[keep],
        next_observations=next_observations[keep],
        terminals=terminals[keep],
        timeouts=timeouts[keep],
    )


def write_d4rl_hdf5(
    path: str | Path, arrays: dict[str, np.ndarray], attrs: dict[str, object] | None = None
) -> Path:
    """Write flat D4RL-layout arrays (gzip) atomically: a killed write leaves no partial file."""
    path = Path(path)
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value, compression="gzip")
        for key, value in (attrs or {}).items():
            f.attrs[key] = json.dumps(value) if isinstance(value, dict | list) else value
    return path


# --------------------------------------------------------------------------------------------------
# OGBench npz (singletask variants)

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


def flatten_observation(observation, observation_keys: tuple[str, ...] | None) -> np.ndarray:
    """One environment observation as the flat float32 vector the dataset stores."""
    if observation_keys is None:
        return np.asarray(observation, dtype=np.float32).reshape(-1)
    return np.concatenate(
        [np.asarray(robotics.leaf(observation, k), np.float32).reshape(-1) for k in observation_keys]
    )


def make_env(spec: DatasetSpec, **kwargs) -> gym.Env:
    """The evaluation environment of a dataset. OGBench and gymnasium-robotics environments are registered
    first (Gymnasium does not know them until then); the D4RL families' environments report their
    episode success (``robotics.wrap``)."""
    if spec.eval_env_spec is None and spec.env_id is None:
        raise DatasetError(
            f"dataset {spec.id!r} names no evaluation environment. Pass one explicitly, e.g. "
            "`--env Hopper-v5`."
        )
    env_spec = gym.envs.registration.EnvSpec.from_json(spec.eval_env_spec) if spec.eval_env_spec else None
    env_id = env_spec.id if env_spec is not None else spec.env_id
    if OGBENCH_NAME.match(env_id):
        import_ogbench()
    if robotics.family(env_id) is not None:
        robotics.prepare()
    try:
        return robotics.wrap(gym.make(env_spec or env_id, **kwargs), env_id)
    except (gym.error.Error, ImportError) as error:  # unknown ids, missing simulators or assets
        raise DatasetError(
            f"cannot create evaluation environment {env_id!r} for dataset {spec.id!r}: "
            f"{one_line(error).rstrip('.')}. Pass --env with a registered Gymnasium id, e.g. "
            "`--env Hopper-v5`."
        ) from error


def check_spaces(spec: DatasetSpec) -> None:
    """Refuse a dataset whose observations or actions do not fit its evaluation environment, before any
    training: the flattened observation size, the action size and the action bounds must match."""
    env = make_env(spec)
    try:
        env_id = env.spec.id if env.spec is not None else spec.env_id
        observation_space, action_space = env.observation_space, env.action_space
    finally:
        env.close()
    keys = spec.observation_keys
    if keys is None:
        observation_dim = gym.spaces.flatdim(observation_space)
    elif all(robotics.leaf_space(observation_space, key) is not None for key in keys):
        observation_dim = sum(gym.spaces.flatdim(robotics.leaf_space(observation_space, key)) for key in keys)
    else:
        observation_dim = None  # the environment lacks some of the dataset's observation keys
    if isinstance(action_space, gym.spaces.Box):
        low, high = action_space.low.reshape(-1), action_space.high.reshape(-1)
        actions = f"{low.size} actions in [{low.min():g}, {high.max():g}]"
        actions_match = (
            low.size == spec.action_dim
            and np.allclose(low, spec.action_low, atol=ACTION_BOUND_TOLERANCE)
            and np.allclose(high, spec.action_high, atol=ACTION_BOUND_TOLERANCE)
        )
    else:
        actions, actions_match = f"{type(action_space).__name__} actions", False
    if observation_dim == spec.observation_dim and actions_match:
        return
    observations = (
        f"observations without the keys {list(keys)}"
        if observation_dim is None
        else f"{observation_dim} observation dimensions"
    )
    data_low, data_high = min(spec.action_low, default=math.nan), max(spec.action_high, default=math.nan)
    raise DatasetError(
        f"dataset {spec.id!r} has {spec.observation_dim} observation dimensions and {spec.action_dim} "
        f"actions in [{data_low:g}, {data_high:g}], but its evaluation environment {env_id!r} has "
        f"{observations} and {actions}: the dataset belongs to another environment. Pass --env with the "
        "environment the data was collected in."
    )
