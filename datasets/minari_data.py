"""Minari datasets: reading one from the local store into the canonical Dataset, and downloading a missing
one from the Minari remote on request."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np

from offbench.datasets import robotics
from offbench.datasets.dataset import Dataset, DatasetError, DatasetSpec, from_episodes
from offbench.hints import one_line, suggest


def minari_datasets_path() -> Path:
    return Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))


def check_readable(dataset_id: str, local: set[str]) -> None:
    """A dataset folder that Minari does not list (``local``) is one whose metadata it cannot read."""
    if dataset_id not in local and (minari_datasets_path() / dataset_id / "data").is_dir():
        raise DatasetError(
            f"dataset {dataset_id!r} exists under {minari_datasets_path()} but Minari cannot read its "
            "metadata: the files may be corrupt. Delete that folder and regenerate or re-download it."
        )


def load_minari(dataset_id: str, *, download: bool = False, env_id: str | None = None) -> Dataset:
    """Load a Minari dataset. ``download=True`` fetches a missing id from the Minari remote."""
    import minari

    local = set(minari.list_local_datasets())
    folder = minari_datasets_path() / dataset_id
    check_readable(dataset_id, local)
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
