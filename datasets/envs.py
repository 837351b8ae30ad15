"""A dataset's evaluation environment: making it, flattening its observations the way the dataset stores
them, and checking that the dataset's spaces fit it."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np

from offbench.datasets import robotics
from offbench.datasets.dataset import ACTION_BOUND_TOLERANCE, DatasetError, DatasetSpec
from offbench.datasets.ogbench_data import OGBENCH_NAME, import_ogbench
from offbench.hints import one_line


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
