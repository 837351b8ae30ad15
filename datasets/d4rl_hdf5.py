"""D4RL-format HDF5 files: reading, validating and writing the flat layout D4RL publishes.

The ``d4rl`` package is not used (it cannot be installed on modern Python); its HDF5 layout is read
directly with h5py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np

from offbench.datasets.dataset import NUMERIC_KINDS, Dataset, DatasetError, DatasetSpec, build_dataset
from offbench.files import atomic_path
from offbench.hints import one_line

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
