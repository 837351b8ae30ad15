"""Tests for offbench.datasets: the canonical Dataset, the Minari and D4RL-HDF5 loaders, and bad data.

Small datasets are made by hand (exact expected rows written out in the tests) or with Minari's own API
through the session fixtures in conftest.py; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import shutil
import types
import urllib.error
from pathlib import Path

import gymnasium as gym
import jax.numpy as jnp
import minari
import minari.storage.remotes.huggingface as huggingface_remote
import numpy as np
import pytest
from huggingface_hub.errors import EntryNotFoundError
from minari.data_collector import EpisodeBuffer
from rollouts import rollout_episodes

from offbench.algorithms.sampling import gather
from offbench.datasets import envs
from offbench.datasets.d4rl_hdf5 import D4RL_REFERENCE_SCORES, load_d4rl_hdf5, write_d4rl_hdf5
from offbench.datasets.dataset import (
    OBSERVATION_STD_EPSILON,
    DatasetError,
    DatasetSpec,
    build_dataset,
    from_episodes,
)
from offbench.datasets.envs import check_spaces, make_env
from offbench.datasets.generate.rollout import write_minari
from offbench.datasets.minari_data import is_connection_error, load_minari
from offbench.datasets.sources import load_dataset

TIMEOUT_ID = "test-datasets/hopper/timeout-v0"
DICT_ID = "test-datasets/goal/dict-v0"
BAD_FLAG_ID = "test-datasets/bad/early-flag-v0"
MINARI_META = {
    "algorithm_name": "test",
    "author": "offbench tests",
    "author_email": "tests@offbench.invalid",
    "code_permalink": "https://offbench.invalid",
    "description": "test data",
}


def hand_spec(observation_dim: int = 2, action_dim: int = 1, **kwargs) -> DatasetSpec:
    return DatasetSpec(
        id="hand", source="test", env_id=None, observation_dim=observation_dim, action_dim=action_dim,
        action_low=(-1.0,) * action_dim, action_high=(1.0,) * action_dim, **kwargs,
    )


def hand_arrays(n: int) -> dict[str, np.ndarray]:
    """Rows with recognisable values: observation i is [i, 10 i], reward i is i + 1."""
    rows = np.arange(n, dtype=np.float32)
    return {
        "observations": np.stack([rows, 10 * rows], axis=1),
        "actions": np.linspace(-0.9, 0.9, n, dtype=np.float32).reshape(n, 1),
        "rewards": rows + 1,
        "terminals": np.zeros(n, bool),
        "timeouts": np.zeros(n, bool),
    }


def minari_buffer(observations, actions, terminations, truncations, rewards=None) -> EpisodeBuffer:
    steps = len(actions)
    return EpisodeBuffer(
        id=0, observations=observations, actions=np.asarray(actions, np.float32),
        rewards=np.ones(steps, np.float32) if rewards is None else rewards,
        terminations=np.asarray(terminations, bool), truncations=np.asarray(truncations, bool), infos={},
    )


def assert_dataset_error(call, *fragments: str) -> str:
    with pytest.raises(DatasetError) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ------------------------------------------------------------------------------------ build_dataset


def test_build_dataset_episode_structure_and_masks() -> None:
    # Episodes: rows 0-2 end by terminal, 3-4 by timeout, 5-6 by both flags on row 6, 7-8 unfinished.
    arrays = hand_arrays(9)
    arrays["terminals"][[2, 6]] = True
    arrays["timeouts"][[4, 6]] = True
    arrays["next_observations"] = arrays["observations"] + 0.5
    data = build_dataset(hand_spec(), **arrays)

    assert data.size == 9 and data.num_episodes == 4
    np.testing.assert_array_equal(data.episode_id, [0, 0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(data.step, [0, 1, 2, 0, 1, 0, 1, 0, 1])
    assert data.episode_id.dtype == np.int32 and data.step.dtype == np.int32
    np.testing.assert_array_equal(data.terminals, [0, 0, 1, 0, 0, 0, 1, 0, 0])
    # The row flagged both ways is a terminal only.
    np.testing.assert_array_equal(data.timeouts, [0, 0, 0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(data.episode_ends, [0, 0, 1, 0, 1, 0, 1, 0, 0])
    np.testing.assert_array_equal(data.episodes.start, [0, 3, 5, 7])
    np.testing.assert_array_equal(data.episodes.length, [3, 2, 2, 2])
    # Rewards are 1..9: 1+2+3, 4+5, 6+7, 8+9.
    np.testing.assert_array_equal(data.episodes.returns, [6.0, 9.0, 13.0, 17.0])
    np.testing.assert_array_equal(data.episodes.complete, [True, True, True, False])
    summary = data.summary()
    assert summary["transitions"] == 9 and summary["episodes"] == 4 and summary["complete_episodes"] == 3
    assert summary["return_max"] == 17.0

    batch = gather(data.to_device(), jnp.arange(9))
    # Only terminals stop bootstrapping; the timeout row (4) keeps mask 1.
    np.testing.assert_array_equal(np.asarray(batch.masks), [1, 1, 0, 1, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(np.asarray(batch.next_observations), arrays["observations"] + 0.5)
    np.testing.assert_array_equal(np.asarray(batch.rewards), arrays["rewards"])
    picked = gather(data.to_device(), jnp.array([4, 6, 2]))
    np.testing.assert_array_equal(np.asarray(picked.masks), [1, 0, 0])
    np.testing.assert_array_equal(np.asarray(picked.observations), arrays["observations"][[4, 6, 2]])


def test_build_dataset_normalisation_matches_numpy() -> None:
    rng = np.random.default_rng(3)
    observations = rng.normal([1.0, -2.0, 0.0], [0.5, 3.0, 0.0], size=(50, 3)).astype(np.float32)
    data = build_dataset(
        hand_spec(observation_dim=3), observations=observations, actions=np.zeros((50, 1)),
        rewards=np.zeros(50), next_observations=observations, terminals=np.zeros(50), timeouts=np.zeros(50),
    )
    mean = observations.astype(np.float64).mean(axis=0)
    std = observations.astype(np.float64).std(axis=0) + 1e-3
    assert OBSERVATION_STD_EPSILON == 1e-3
    np.testing.assert_allclose(data.observation_mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.observation_std, std, rtol=1e-5)
    assert data.observation_std[2] == pytest.approx(1e-3)  # a constant feature gets exactly the epsilon
    normalised = data.normalized_observations()
    np.testing.assert_allclose(normalised.observations, (observations - mean) / std, rtol=1e-4, atol=1e-4)


def test_build_dataset_clips_actions_within_tolerance() -> None:
    arrays = hand_arrays(3)
    arrays["actions"][:, 0] = [-1.00005, 0.0, 1.00005]
    data = build_dataset(hand_spec(), next_observations=arrays["observations"], **arrays)
    np.testing.assert_array_equal(data.actions[:, 0], [-1.0, 0.0, 1.0])


# ------------------------------------------------------------------------------------ D4RL HDF5


def three_episode_file(path: Path, with_next: bool = False, attrs: dict | None = None) -> dict:
    # Rows 0-2: an episode cut by the time limit at row 2; rows 3-4: terminal at 4; rows 5-6: unfinished.
    arrays = hand_arrays(7)
    arrays["timeouts"][2] = True
    arrays["terminals"][4] = True
    if with_next:
        arrays["next_observations"] = arrays["observations"] + 0.25
    write_d4rl_hdf5(path, arrays, attrs)
    return arrays


def test_d4rl_without_next_observations_follows_qlearning_dataset(tmp_path: Path) -> None:
    arrays = three_episode_file(tmp_path / "three.hdf5")
    data = load_dataset(str(tmp_path / "three.hdf5"))
    obs = arrays["observations"]

    # Row 2 (timeout: its following row is the next episode's) and row 6 (unflagged last row) are dropped.
    kept = [0, 1, 3, 4, 5]
    np.testing.assert_array_equal(data.observations, obs[kept])
    np.testing.assert_array_equal(data.actions, arrays["actions"][kept])
    np.testing.assert_array_equal(data.rewards, arrays["rewards"][kept])
    # Next observation = following file row; row 1's is the dropped timeout row, row 4's (a terminal)
    # belongs to the next episode, as in d4rl (masked anyway).
    np.testing.assert_array_equal(data.next_observations, obs[[1, 2, 4, 5, 6]])
    np.testing.assert_array_equal(data.terminals, [0, 0, 0, 1, 0])
    # Row 1 now ends the first episode by the time limit.
    np.testing.assert_array_equal(data.timeouts, [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(data.episode_id, [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(data.episodes.start, [0, 2, 4])
    np.testing.assert_array_equal(data.episodes.length, [2, 2, 1])
    np.testing.assert_array_equal(data.episodes.returns, [1 + 2, 4 + 5, 6])
    np.testing.assert_array_equal(data.episodes.complete, [True, True, False])
    assert data.spec.source == "d4rl-hdf5"


def test_d4rl_without_next_observations_terminal_last_row_and_short_timeout(tmp_path: Path) -> None:
    # Row 0: terminal; row 1: a one-step episode cut by the time limit; rows 2-3: both flags on the last row.
    arrays = hand_arrays(4)
    arrays["terminals"][[0, 3]] = True
    arrays["timeouts"][[1, 3]] = True
    del arrays["timeouts"]  # first without a timeouts key at all: only terminals end episodes
    write_d4rl_hdf5(tmp_path / "no-timeouts.hdf5", arrays)
    data = load_d4rl_hdf5(tmp_path / "no-timeouts.hdf5")
    np.testing.assert_array_equal(data.rewards, [1, 2, 3, 4])  # a terminal last row is kept
    np.testing.assert_array_equal(data.next_observations, arrays["observations"][[1, 2, 3, 3]])
    assert not data.timeouts.any()

    arrays["timeouts"] = np.array([False, True, False, True])
    write_d4rl_hdf5(tmp_path / "short.hdf5", arrays)
    data = load_d4rl_hdf5(tmp_path / "short.hdf5")
    np.testing.assert_array_equal(data.rewards, [1, 3, 4])
    np.testing.assert_array_equal(data.terminals, [1, 0, 1])
    # The terminal row before the dropped one-step episode stays a terminal, not a timeout.
    np.testing.assert_array_equal(data.timeouts, [0, 0, 0])
    np.testing.assert_array_equal(data.episodes.length, [1, 2])
    np.testing.assert_array_equal(data.episodes.complete, [True, True])


def test_d4rl_with_next_observations_keeps_every_row(tmp_path: Path) -> None:
    arrays = three_episode_file(tmp_path / "with-next.hdf5", with_next=True)
    data = load_d4rl_hdf5(tmp_path / "with-next.hdf5")
    assert data.size == 7
    np.testing.assert_array_equal(data.observations, arrays["observations"])
    np.testing.assert_array_equal(data.next_observations, arrays["observations"] + 0.25)
    np.testing.assert_array_equal(data.terminals, [0, 0, 0, 0, 1, 0, 0])
    np.testing.assert_array_equal(data.timeouts, [0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(data.episodes.start, [0, 3, 5])
    np.testing.assert_array_equal(data.episodes.returns, [1 + 2 + 3, 4 + 5, 6 + 7])
    np.testing.assert_array_equal(data.episodes.complete, [True, True, False])


def test_d4rl_reference_scores(tmp_path: Path) -> None:
    three_episode_file(tmp_path / "hopper-medium-v2.hdf5")
    named = load_dataset(str(tmp_path / "hopper-medium-v2.hdf5"))
    assert (named.spec.ref_min_score, named.spec.ref_max_score) == D4RL_REFERENCE_SCORES["hopper"]
    assert named.spec.ref_min_score == pytest.approx(-20.272305)
    assert named.spec.ref_max_score == pytest.approx(3234.3)
    assert "d4rl" in named.spec.ref_source.lower()
    assert named.spec.env_id == "Hopper-v5"
    assert named.spec.normalized_score(3234.3) == pytest.approx(100.0)
    assert named.spec.normalized_score(-20.272305) == pytest.approx(0.0)

    attrs = {"ref_min_score": 10.0, "ref_max_score": 110.0}
    three_episode_file(tmp_path / "walker2d-expert-v2.hdf5", attrs=attrs)
    overridden = load_d4rl_hdf5(tmp_path / "walker2d-expert-v2.hdf5")
    assert (overridden.spec.ref_min_score, overridden.spec.ref_max_score) == (10.0, 110.0)
    assert "d4rl" not in overridden.spec.ref_source.lower()
    np.testing.assert_allclose(overridden.spec.normalized_score(np.array([10.0, 60.0])), [0.0, 50.0])

    three_episode_file(tmp_path / "my-data.hdf5")
    unnamed = load_d4rl_hdf5(tmp_path / "my-data.hdf5")
    assert not unnamed.spec.has_reference_scores
    assert unnamed.spec.ref_min_score is None and unnamed.spec.ref_source is None
    assert unnamed.spec.normalized_score(123.0) is None
    assert unnamed.spec.env_id is None


# ------------------------------------------------------------------------------------ Minari


@pytest.fixture(scope="module")
def timeout_minari(minari_root: Path) -> str:
    """Hopper episodes cut by a 7-step time limit (truncations), written without reference scores."""
    episodes = rollout_episodes("Hopper-v5", 20, lambda obs, rng: np.zeros(3), seed=1, max_episode_steps=7)
    write_minari(TIMEOUT_ID, "Hopper-v5", episodes)
    return TIMEOUT_ID


def test_minari_hopper_matches_minari_episodes(hopper_minari: str) -> None:
    data = load_dataset(hopper_minari)
    episodes = list(minari.load_dataset(hopper_minari).iterate_episodes())
    lengths = [len(ep.actions) for ep in episodes]

    assert data.size == sum(lengths) and data.num_episodes == len(episodes)
    np.testing.assert_array_equal(data.episodes.length, lengths)
    np.testing.assert_array_equal(data.episodes.start, np.cumsum([0, *lengths[:-1]]))
    observations = [np.asarray(ep.observations, np.float32) for ep in episodes]
    np.testing.assert_array_equal(data.observations, np.concatenate([obs[:-1] for obs in observations]))
    np.testing.assert_array_equal(data.next_observations, np.concatenate([obs[1:] for obs in observations]))
    np.testing.assert_array_equal(data.actions, np.concatenate([ep.actions for ep in episodes]))
    inside = data.episode_id[:-1] == data.episode_id[1:]
    assert inside.sum() == data.size - data.num_episodes
    np.testing.assert_array_equal(data.next_observations[:-1][inside], data.observations[1:][inside])
    np.testing.assert_array_equal(data.terminals, np.concatenate([ep.terminations for ep in episodes]))
    np.testing.assert_array_equal(data.timeouts, np.concatenate([ep.truncations for ep in episodes]))
    assert data.terminals.sum() > 0 and data.episodes.complete.all()
    np.testing.assert_allclose(data.episodes.returns, [ep.rewards.sum() for ep in episodes], rtol=1e-5)

    spec = data.spec
    assert spec.source == "minari" and spec.env_id == "Hopper-v5"
    assert (spec.observation_dim, spec.action_dim) == (11, 3)
    assert (spec.ref_min_score, spec.ref_max_score) == (-20.0, 3000.0) and spec.has_reference_scores
    assert spec.ref_source == "minari-metadata"
    assert spec.normalized_score(1490.0) == pytest.approx(50.0)
    assert spec.observation_keys is None

    mean = data.observations.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(data.observation_mean, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(data.observation_std, data.observations.astype(np.float64).std(axis=0) + 1e-3,
                               rtol=1e-4)

    env = make_env(spec)
    try:
        assert env.spec.id == "Hopper-v5"
        assert env.observation_space.shape == (11,)
        observation, _ = env.reset(seed=0)
        assert observation.shape == (spec.observation_dim,)
    finally:
        env.close()


def test_minari_truncations_become_timeouts_and_no_reference_scores(timeout_minari: str) -> None:
    data = load_minari(timeout_minari)
    episodes = list(minari.load_dataset(timeout_minari).iterate_episodes())
    truncations = np.concatenate([ep.truncations for ep in episodes])
    assert truncations.sum() == len(episodes) >= 3  # every episode was cut by the time limit
    np.testing.assert_array_equal(data.timeouts, truncations)
    assert not data.terminals.any()
    np.testing.assert_array_equal(data.episodes.length, [7] * len(episodes))
    # The last step of a timed-out episode keeps its true next observation.
    last = data.episodes.start + data.episodes.length - 1
    np.testing.assert_allclose(data.next_observations[last], [ep.observations[-1] for ep in episodes])
    assert not data.spec.has_reference_scores
    assert data.spec.normalized_score(100.0) is None

    # An explicit env id replaces the stored evaluation spec.
    overridden = load_minari(timeout_minari, env_id="Walker2d-v5")
    assert overridden.spec.env_id == "Walker2d-v5" and overridden.spec.eval_env_spec is None


def test_minari_dict_observations_flatten_in_key_order(minari_root: Path) -> None:
    box = lambda n: gym.spaces.Box(-100.0, 100.0, (n,), np.float32)
    # Declared in a non-alphabetical order; Minari stores the space with sorted keys.
    space = gym.spaces.Dict([("observation", box(3)), ("desired_goal", box(2)), ("achieved_goal", box(1))])
    steps = 4
    observations = {
        key: (np.arange((steps + 1) * sub.shape[0], dtype=np.float32).reshape(steps + 1, -1) + 10 * (i + 1))
        for i, (key, sub) in enumerate(space.spaces.items())
    }
    buffer = minari_buffer(observations, np.zeros((steps, 2)), [0, 0, 0, 1], [0, 0, 0, 0])
    minari.create_dataset_from_buffers(
        DICT_ID, [buffer], env=None, observation_space=space,
        action_space=gym.spaces.Box(-1.0, 1.0, (2,), np.float32), **MINARI_META,
    )
    data = load_dataset(DICT_ID)
    stored_space = minari.load_dataset(DICT_ID).observation_space
    keys = tuple(stored_space.spaces)
    assert data.spec.observation_keys == keys == ("achieved_goal", "desired_goal", "observation")
    assert data.spec.observation_dim == 6
    flat = np.concatenate([observations[key] for key in keys], axis=1)
    np.testing.assert_array_equal(data.observations, flat[:-1])
    np.testing.assert_array_equal(data.next_observations, flat[1:])
    np.testing.assert_array_equal(
        data.observations[2], gym.spaces.flatten(stored_space, {k: v[2] for k, v in observations.items()})
    )
    np.testing.assert_array_equal(data.terminals, [0, 0, 0, 1])
    # No env was recorded, so evaluation needs one named explicitly.
    assert data.spec.env_id is None
    assert_dataset_error(lambda: make_env(data.spec), "names no evaluation environment", "--env")


# ------------------------------------------------------------------------------------ errors


def test_unknown_minari_id_suggests_close_match(hopper_minari: str) -> None:
    assert_dataset_error(
        lambda: load_dataset("test/hopper/noisey-v0"),
        "unknown dataset 'test/hopper/noisey-v0'", "Did you mean", repr(hopper_minari),
        "offbench datasets generate", "--download",
    )


def test_name_that_is_neither_file_nor_id() -> None:
    assert_dataset_error(lambda: load_dataset("hopper"), "neither a dataset file (.hdf5, .h5, .npz)",
                         "mujoco/hopper/medium-v0")


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.hdf5"
    assert_dataset_error(lambda: load_dataset(str(missing)), str(missing), "does not exist", "Check the path")


def test_hdf5_without_actions(tmp_path: Path) -> None:
    arrays = hand_arrays(5)
    del arrays["actions"]
    write_d4rl_hdf5(tmp_path / "no-actions.hdf5", arrays)
    assert_dataset_error(lambda: load_dataset(str(tmp_path / "no-actions.hdf5")), "no 'actions'",
                         "a D4RL-format file needs observations, actions, rewards, terminals", "Keys found")


@pytest.mark.parametrize("key", ["observations", "terminals", "timeouts", "next_observations"])
def test_hdf5_mismatched_lengths(tmp_path: Path, key: str) -> None:
    arrays = hand_arrays(6)
    arrays["next_observations"] = arrays["observations"].copy()
    arrays[key] = arrays[key][:-1]
    write_d4rl_hdf5(tmp_path / "short.hdf5", arrays)
    assert_dataset_error(lambda: load_dataset(str(tmp_path / "short.hdf5")), "mismatched lengths",
                         f"'rewards' has 6 rows but '{key}' has 5", "one row per step")


@pytest.mark.parametrize("key", ["actions", "terminals", "timeouts", "next_observations"])
def test_build_dataset_mismatched_lengths(key: str) -> None:
    arrays = hand_arrays(6)
    arrays["next_observations"] = arrays["observations"].copy()
    arrays[key] = arrays[key][:-1]
    assert_dataset_error(lambda: build_dataset(hand_spec(), **arrays), "mismatched lengths",
                         f"rewards has 6 rows but {key} has 5", "one row per transition")


def test_build_dataset_next_observation_shape() -> None:
    arrays = hand_arrays(4)
    assert_dataset_error(
        lambda: build_dataset(hand_spec(), next_observations=np.zeros((4, 3)), **arrays),
        "next_observations have shape (4, 3)", "must have the observation's layout",
    )


def test_nan_in_observations(tmp_path: Path) -> None:
    arrays = hand_arrays(6)
    arrays["observations"][3, 1] = np.nan
    write_d4rl_hdf5(tmp_path / "nan.hdf5", arrays)
    assert_dataset_error(lambda: load_dataset(str(tmp_path / "nan.hdf5")), "observations contains",
                         "NaN/inf", "first rows: [3]", "Clean or regenerate the data")
    arrays = hand_arrays(6)
    arrays["observations"][0, 0] = np.inf
    call = lambda: build_dataset(hand_spec(), next_observations=arrays["observations"], **arrays)
    assert_dataset_error(call, "observations contains 1 NaN/inf", "Clean or regenerate")


def test_actions_outside_bounds(tmp_path: Path) -> None:
    arrays = hand_arrays(6)
    arrays["actions"][4, 0] = 1.5
    write_d4rl_hdf5(tmp_path / "wide.hdf5", arrays)
    assert_dataset_error(lambda: load_dataset(str(tmp_path / "wide.hdf5")), "outside the action bounds",
                         "[-1, 1]", "first rows [4]", "rescale the actions")
    # Bounds stated in the file's attributes are honoured.
    write_d4rl_hdf5(tmp_path / "wide-ok.hdf5", arrays, {"action_low": [-2.0], "action_high": [2.0]})
    data = load_dataset(str(tmp_path / "wide-ok.hdf5"))
    assert data.spec.action_high == (2.0,) and data.actions[4, 0] == 1.5


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_hdf5(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "broken.hdf5"
    if damage == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "truncated":
        arrays = hand_arrays(500)
        write_d4rl_hdf5(path, arrays)
        content = path.read_bytes()
        path.write_bytes(content[: len(content) // 2])
    else:
        path.write_bytes(b"")
    assert_dataset_error(lambda: load_dataset(str(path)), "is not a readable HDF5 file",
                         "truncated or corrupt", "download or generate it again")


def test_minari_episode_flagged_before_its_last_step(minari_root: Path) -> None:
    buffer = minari_buffer(np.zeros((5, 2), np.float32), np.zeros((4, 1)), [0, 1, 0, 1], [0, 0, 0, 0])
    minari.create_dataset_from_buffers(
        BAD_FLAG_ID, [buffer], env=None, observation_space=gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32), **MINARI_META,
    )
    assert_dataset_error(lambda: load_dataset(BAD_FLAG_ID), "episode 0",
                         "flag is set before the episode's last step", "regenerate the dataset",
                         "split the episode")


def test_minari_episode_without_final_observation() -> None:
    episode = {"observations": np.zeros((3, 2)), "actions": np.zeros((3, 1)), "rewards": np.zeros(3),
               "terminations": np.zeros(3, bool), "truncations": np.zeros(3, bool)}
    assert_dataset_error(lambda: from_episodes(hand_spec(), [episode]), "3 observations for 3 actions",
                         "T+1 observations", "use the fixed version")


# ------------------------------------------------------------------------------------ spaces


def hopper_like_file(path: Path, **attrs) -> Path:
    """30 Hopper-shaped steps (11 observation dimensions, 3 actions) in a D4RL-format file."""
    rng = np.random.default_rng(0)
    arrays = {
        "observations": rng.normal(size=(30, 11)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (30, 3)).astype(np.float32),
        "rewards": np.zeros(30, np.float32),
        "terminals": np.eye(1, 30, 29, dtype=bool)[0],
    }
    return write_d4rl_hdf5(path, arrays, attrs)


def test_check_spaces_accepts_the_environment_the_data_came_from(hopper_minari: str, tmp_path: Path) -> None:
    check_spaces(load_dataset(hopper_minari).spec)
    check_spaces(load_dataset(str(hopper_like_file(tmp_path / "data.hdf5")), env_id="Hopper-v5").spec)


def test_check_spaces_refuses_another_environment_and_closes_it(tmp_path: Path, monkeypatch) -> None:
    closed = []

    def recording_make_env(spec):
        env = make_env(spec)
        monkeypatch.setattr(env, "close", lambda: closed.append(env.spec.id))
        return env

    monkeypatch.setattr(envs, "make_env", recording_make_env)
    spec = load_dataset(str(hopper_like_file(tmp_path / "data.hdf5")), env_id="HalfCheetah-v5").spec
    message = assert_dataset_error(
        lambda: check_spaces(spec), "has 11 observation dimensions and 3 actions in [-1, 1]",
        "'HalfCheetah-v5' has 17 observation dimensions and 6 actions in [-1, 1]",
        "belongs to another environment", "Pass --env",
    )
    assert "\n" not in message and closed == ["HalfCheetah-v5"]


def test_check_spaces_refuses_other_action_bounds(tmp_path: Path) -> None:
    path = hopper_like_file(tmp_path / "wide.hdf5", action_low=[-2.0] * 3, action_high=[2.0] * 3)
    spec = load_dataset(str(path), env_id="Hopper-v5").spec
    assert_dataset_error(lambda: check_spaces(spec), "3 actions in [-2, 2]", "'Hopper-v5' has",
                         "3 actions in [-1, 1]")


@pytest.mark.parametrize("env_id", ["NoSuchEnv-v0", "Hoper-v5"])
def test_check_spaces_refuses_an_environment_that_cannot_be_created(tmp_path: Path, env_id: str) -> None:
    spec = load_dataset(str(hopper_like_file(tmp_path / "data.hdf5")), env_id=env_id).spec
    message = assert_dataset_error(
        lambda: check_spaces(spec), f"cannot create evaluation environment {env_id!r}",
        "Pass --env with a registered Gymnasium id",
    )
    assert "\n" not in message


# ------------------------------------------------------------------------------------ downloads


class LocalHub:
    """The read calls Minari's Hugging Face remote makes on ``huggingface_hub.HfApi``, answered from a
    folder laid out as the Farama hub: one repository per top-level namespace, files at their paths."""

    folder: Path

    def __init__(self, token: str | None = None) -> None:
        pass

    def list_datasets(self, author: str, dataset_name: str | None = None) -> list:
        repos = sorted(p.name for p in self.folder.iterdir() if dataset_name in (None, p.name))
        return [types.SimpleNamespace(id=f"{author}/{repo}") for repo in repos]

    def hf_hub_download(self, repo_id, filename, repo_type, local_dir=None, force_download=False) -> str:
        source = self.folder / repo_id.split("/", 1)[1] / filename
        if not source.is_file():
            raise EntryNotFoundError(f"{filename} is not in {repo_id}")
        target = Path(local_dir or self.folder.parent / "hub-cache" / repo_id) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        return shutil.copyfile(source, target)

    def snapshot_download(self, repo_id, allow_patterns, repo_type, local_dir) -> str:
        repo = self.folder / repo_id.split("/", 1)[1]
        for path in repo.rglob("*"):
            if path.is_file() and fnmatch.fnmatch(path.relative_to(repo).as_posix(), allow_patterns):
                target = Path(local_dir) / path.relative_to(repo)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        return str(local_dir)


REMOTE_ID = "mirror/toy/tiny-v0"


@pytest.fixture
def remote(tmp_path: Path, monkeypatch) -> Path:
    """A hub holding REMOTE_ID (a Minari dataset written here, registered as Minari's upload does) served
    by LocalHub, and an empty local Minari root."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "written"))
    buffer = minari_buffer(np.arange(10, dtype=np.float32).reshape(5, 2), np.zeros((4, 1)), [0, 0, 0, 1],
                           [0, 0, 0, 0])
    minari.create_dataset_from_buffers(
        REMOTE_ID, [buffer], env=None, observation_space=gym.spaces.Box(-10.0, 10.0, (2,), np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, (1,), np.float32), **MINARI_META,
    )
    hub = shutil.copytree(tmp_path / "written", tmp_path / "hub")
    metadata = hub / "mirror" / "namespace_metadata.json"
    registered = {**json.loads(metadata.read_text()), "datasets": [REMOTE_ID], "namespaces": ["mirror/toy"]}
    metadata.write_text(json.dumps(registered))
    monkeypatch.setattr(LocalHub, "folder", hub, raising=False)
    monkeypatch.setattr(huggingface_remote, "HfApi", LocalHub)
    local = tmp_path / "local"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(local))
    return local


def test_download_runs_minaris_remote_client_end_to_end(remote: Path) -> None:
    assert_dataset_error(lambda: load_dataset(REMOTE_ID), "not found under", "--download")
    data = load_dataset(REMOTE_ID, download=True)
    np.testing.assert_array_equal(data.observations, np.arange(8, dtype=np.float32).reshape(4, 2))
    np.testing.assert_array_equal(data.terminals, [0, 0, 0, 1])
    assert (remote / REMOTE_ID / "data" / "main_data.hdf5").is_file()
    assert load_dataset(REMOTE_ID).size == 4  # now local


def test_download_of_an_id_the_server_lacks_names_it_and_leaves_nothing(remote: Path) -> None:
    assert_dataset_error(lambda: load_dataset("mirror/toy/other-v0", download=True),
                         "downloading Minari dataset 'mirror/toy/other-v0' failed", "minari list remote")
    assert not (remote / "mirror" / "toy" / "other-v0").exists()


def test_a_failed_transfer_leaves_no_half_downloaded_dataset(remote: Path, monkeypatch) -> None:
    def interrupted(self, repo_id, allow_patterns, repo_type, local_dir):
        (Path(local_dir) / "toy" / "tiny-v0" / "data").mkdir(parents=True)
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(LocalHub, "snapshot_download", interrupted)
    assert_dataset_error(lambda: load_dataset(REMOTE_ID, download=True), "no connection to the Minari server",
                         "ConnectionResetError", f"copy the dataset folder to {remote / REMOTE_ID}")
    assert not (remote / REMOTE_ID).exists()


@pytest.mark.parametrize(
    ("error", "connection"),
    [
        (ConnectionError("refused"), True),
        (TimeoutError("timed out"), True),
        (urllib.error.URLError("no route"), True),
        (urllib.error.HTTPError("https://x", 404, "not found", None, None), False),
        (ValueError("Couldn't find any version"), False),
        (OSError(28, "No space left on device"), False),
    ],
)
def test_connection_errors_are_told_from_other_failures(error: Exception, connection: bool) -> None:
    assert is_connection_error(error) is connection
    wrapped = RuntimeError("while listing")
    wrapped.__cause__ = error
    assert is_connection_error(wrapped) is connection


class DictToyEnv(gym.Env):
    """Dict observations of three Box entries; the dataset flattens a subset of them, by key."""

    observation_space = gym.spaces.Dict({key: gym.spaces.Box(-1.0, 1.0, (n,)) for key, n in
                                         (("a", 2), ("b", 3), ("c", 1))})
    action_space = gym.spaces.Box(-1.0, 1.0, (1,))


@pytest.mark.parametrize(("keys", "fits"), [(("a", "b"), True), (("a", "c"), False), (("a", "z"), False)])
def test_check_spaces_flattens_dict_observations_by_the_dataset_keys(keys, fits) -> None:
    if "OffbenchDictToy-v0" not in gym.registry:
        gym.register("OffbenchDictToy-v0", entry_point=DictToyEnv)
    spec = dataclasses.replace(hand_spec(5, observation_keys=keys), env_id="OffbenchDictToy-v0")
    if fits:
        check_spaces(spec)
    else:
        expected = "observations without the keys" if "z" in keys else "has 3 observation dimensions"
        assert_dataset_error(lambda: check_spaces(spec), "has 5 observation dimensions", expected)
