"""The D4RL families Minari hosts (PointMaze, AntMaze, Adroit, Kitchen) end to end, offline: small datasets
written with Minari's own DataCollector in the hosted datasets' environments, with their metadata fields
and Dict spaces, then loaded, trained, evaluated, written as rows and reported. Also offbench's own
PointMaze generator."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from minari import DataCollector, StepDataCallback

from offbench.algorithms import cql, iql, prdc
from offbench.algorithms.config import resolve_config
from offbench.bench.leaderboard import write_report
from offbench.bench.suite import parse_suite
from offbench.bench.sweep import sweep
from offbench.datasets import quality, robotics
from offbench.datasets.envs import check_spaces, make_env
from offbench.datasets.evaluate import Evaluator
from offbench.datasets.generate import pointmaze
from offbench.datasets.sources import load_dataset

KITCHEN_TASKS = ["microwave", "kettle", "light switch", "slide cabinet"]  # D4RL/kitchen/complete-v2


class TruncateAtSuccess(StepDataCallback):
    """Minari's PointMaze/AntMaze callbacks: an episode ends where the goal is reached."""

    def __call__(self, env, **kwargs):
        step_data = super().__call__(env, **kwargs)
        step_data["truncated"] = step_data["truncated"] or bool(step_data["info"].get("success", False))
        return step_data


def collect(env: gym.Env, steps: int, policy, callback=StepDataCallback) -> DataCollector:
    collector = DataCollector(env, step_data_callback=callback)
    observation, _ = collector.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        action = np.clip(policy(observation, rng), -1.0, 1.0).astype(np.float32)
        observation, _, terminated, truncated, _ = collector.step(action)
        if terminated or truncated:
            observation, _ = collector.reset()
    return collector


def random_policy(action_dim: int):
    return lambda observation, rng: rng.uniform(-1.0, 1.0, action_dim)


def short_eval(env_id: str, steps: int, **kwargs) -> gym.envs.registration.EnvSpec:
    """The hosted evaluation spec of ``env_id`` with a shorter time limit, so that tests evaluate fast."""
    spec = copy.deepcopy(gym.spec(env_id))
    spec.kwargs = {**spec.kwargs, **kwargs}
    spec.max_episode_steps = steps
    return spec


@pytest.fixture(scope="module")
def d4rl_ids(minari_root: Path) -> dict[str, str]:
    """One small dataset per family, made as Minari made the hosted ids (same environments, kwargs and
    spaces; ``ref_min_score``/``ref_max_score`` in the metadata)."""
    robotics.prepare()
    ids = {}
    # PointMaze: continuing task, a new goal at each success, where Minari cut the episode.
    env = gym.make("PointMaze_UMaze-v3", continuing_task=True, reset_target=True, max_episode_steps=10**6)
    controller = pointmaze.WaypointController(env.unwrapped.maze, np.random.default_rng(0))
    collector = collect(env, 1500, lambda o, rng: controller(o) + rng.normal(size=2) * 0.5, TruncateAtSuccess)
    eval_spec = short_eval(
        "PointMaze_UMaze-v3",
        60,
        maze_map=pointmaze.EVAL_MAPS["umaze"],
        continuing_task=True,
        reset_target=False,
    )
    ids["pointmaze"] = "D4RL/pointmaze/umaze-v2"
    collector.create_dataset(
        ids["pointmaze"],
        eval_env=eval_spec,
        algorithm_name="QIteration",
        ref_min_score=23.85,
        ref_max_score=161.86,
    )
    # AntMaze (v4 env, continuing task, the goal kept): episodes end by the time limit, no terminals.
    env = gym.make("AntMaze_UMaze-v4", continuing_task=True, reset_target=False, max_episode_steps=200)
    collector = collect(env, 1000, random_policy(8), TruncateAtSuccess)
    ids["antmaze"] = "D4RL/antmaze/umaze-v1"
    collector.create_dataset(
        ids["antmaze"],
        eval_env=short_eval("AntMaze_UMaze-v4", 40, continuing_task=True, reset_target=False),
        algorithm_name="QIteration+SAC",
        ref_min_score=0.0,
        ref_max_score=476.0,
    )
    # Adroit: AdroitHandPen-v1, dense rewards, fixed horizons.
    env = gym.make("AdroitHandPen-v1", max_episode_steps=100)
    collector = collect(env, 1000, random_policy(24))
    ids["adroit"] = "D4RL/pen/human-v2"
    collector.create_dataset(
        ids["adroit"],
        eval_env=short_eval("AdroitHandPen-v1", 40),
        algorithm_name="Human",
        ref_min_score=96.26,
        ref_max_score=3033.02,
    )
    # Kitchen: the four tasks of kitchen-complete; nested Dict goals.
    env = gym.make("FrankaKitchen-v1", tasks_to_complete=KITCHEN_TASKS, max_episode_steps=100)
    collector = collect(env, 1000, random_policy(9))
    ids["kitchen"] = "D4RL/kitchen/complete-v2"
    collector.create_dataset(
        ids["kitchen"],
        eval_env=short_eval("FrankaKitchen-v1", 30, tasks_to_complete=KITCHEN_TASKS),
        algorithm_name="None",
        ref_min_score=0.0,
        ref_max_score=4.0,
    )
    return ids


# Flattened layout per family: (observation keys, observation dims, evaluation env).
LAYOUTS = {
    "pointmaze": (("achieved_goal", "desired_goal", "observation"), 2 + 2 + 4, "PointMaze_UMaze-v3"),
    "antmaze": (("achieved_goal", "desired_goal", "observation"), 2 + 2 + 27, "AntMaze_UMaze-v4"),
    "adroit": (None, 45, "AdroitHandPen-v1"),
    "kitchen": (
        tuple(
            f"{side}/{task}" for side in ("achieved_goal", "desired_goal") for task in sorted(KITCHEN_TASKS)
        )
        + ("observation",),
        2 * (7 + 2 + 1 + 1) + 59,  # kettle 7, light switch 2, microwave 1, slide cabinet 1; robot+objects 59
        "FrankaKitchen-v1",
    ),
}


@pytest.mark.parametrize("family", list(LAYOUTS))
def test_hosted_format_loads_with_goal_layout_references_and_eval_env(d4rl_ids, family):
    data = load_dataset(d4rl_ids[family])
    keys, dims, env_id = LAYOUTS[family]
    assert data.spec.observation_keys == keys
    assert data.spec.observation_dim == dims
    assert data.spec.env_id == env_id and data.spec.eval_env_spec is not None
    assert data.spec.ref_source == "minari-metadata" and data.spec.has_reference_scores
    check_spaces(data.spec)  # the evaluation environment's flattened observation matches
    env = make_env(data.spec)
    assert isinstance(env, robotics.EpisodeSuccess)
    env.close()
    evaluator = Evaluator(data.spec, [0], 1)  # the flattened observations go through the same path
    result = evaluator.run(lambda observations, _: np.zeros((1, 1, data.spec.action_dim), np.float32))
    evaluator.close()
    assert np.isfinite(result.returns[0, 0]) and result.successes[0, 0] in (0.0, 1.0)
    if family == "pointmaze":
        # desired_goal (columns 2-3): the environment draws the next goal after the step that reached the
        # last one, so it changes on the first transition of the following episode, and only there.
        new_goal = (data.observations[:, 2:4] != data.next_observations[:, 2:4]).any(axis=1)
        assert new_goal.any() and (data.step[new_goal] == 0).all()


def test_terminal_and_timeout_semantics_are_the_hosted_ones(d4rl_ids):
    antmaze, pen = load_dataset(d4rl_ids["antmaze"]), load_dataset(d4rl_ids["adroit"])
    # AntMaze's continuing task never terminates: episodes end by the time limit (timeouts).
    assert not antmaze.terminals.any() and antmaze.timeouts.sum() == antmaze.num_episodes == 5
    # Adroit's fixed horizon: every episode is 100 steps and ends with a timeout.
    assert (pen.episodes.length == 100).all() and pen.timeouts.sum() == 10 and not pen.terminals.any()
    maze = load_dataset(d4rl_ids["pointmaze"])  # cut at each success: the reward 1 is the last step's
    complete = np.asarray(maze.episodes.complete)
    ends = maze.episodes.start + maze.episodes.length - 1
    assert (maze.rewards[ends[complete][:-1]] == 1.0).all()


def test_every_family_trains_evaluates_writes_rows_and_reports(d4rl_ids, tmp_path):
    suite = parse_suite(
        {
            "name": "d4rl-families",
            "datasets": list(d4rl_ids.values()),
            "seeds": [0],
            "steps": 2,
            "eval_every": 2,
            "eval_episodes": 2,
            "algorithms": [{"name": "bc", "hparams": {"hidden_dims": [8], "batch_size": 4}}],
        }
    )
    out = tmp_path / "out"
    summary = sweep(suite, out)
    assert len(summary.finished) == 4 and not summary.failed
    runs = pd.read_parquet(out / "runs").set_index("dataset")
    assert runs.loc[d4rl_ids["kitchen"], "env"] == "FrankaKitchen-v1"
    # Every family reports success: a rate over 2 episodes, never NaN.
    assert runs["final_success_rate"].isin([0.0, 0.5, 1.0]).all()
    assert runs["final_score"].notna().all()
    files = write_report(out, tmp_path / "report", reps=50, profile_reps=20, seed=0)
    assert any(Path(f).name == "LEADERBOARD.md" for f in files)


def test_success_rules_per_family():
    class Scripted(gym.Env):
        observation_space = gym.spaces.Box(-1, 1, (1,))
        action_space = gym.spaces.Box(-1, 1, (1,))

        def __init__(self, infos):
            self.infos = infos

        def reset(self, *, seed=None, options=None):
            self.t = 0
            return np.zeros(1, np.float32), {}

        def step(self, action):
            self.t += 1
            return np.zeros(1, np.float32), 0.0, False, self.t == len(self.infos), self.infos[self.t - 1]

    def last_success(env_id, infos):
        env = robotics.wrap(Scripted(infos), env_id)
        env.reset()
        for _ in infos:
            *_, info = env.step(np.zeros(1))
        return info["success"]

    # Mazes: reached once is a success even if the ball leaves the goal again.
    assert last_success("PointMaze_UMaze-v3", [{"success": False}, {"success": True}, {"success": False}])
    # Adroit (DAPG): pen needs 20 successful steps, door 25.
    assert last_success("AdroitHandPen-v1", [{"success": True}] * 20)
    assert not last_success("AdroitHandDoor-v1", [{"success": True}] * 24 + [{"success": False}])
    # Kitchen: every task done.
    assert not last_success("FrankaKitchen-v1", [{"tasks_to_complete": ["kettle"]}])
    assert last_success("FrankaKitchen-v1", [{"tasks_to_complete": ["kettle"]}, {"tasks_to_complete": []}])
    assert robotics.family("Hopper-v5") is None


def test_published_settings_per_family():
    def config(module, dataset_id):
        return resolve_config(module.Config, dataset_id, module.DATASET_OVERRIDES)

    antmaze = config(iql, "D4RL/antmaze/umaze-v1")
    assert (antmaze.expectile, antmaze.temperature, antmaze.reward_shift) == (0.9, 10.0, -1.0)
    for dataset_id in ("D4RL/pen/human-v2", "D4RL/kitchen/mixed-v2", "D4RL/door/cloned-v2"):
        cfg = config(iql, dataset_id)
        assert (cfg.expectile, cfg.temperature, cfg.reward_normalization) == (0.7, 0.5, "none")
        assert cfg.actor_dropout == 0.1
    assert config(iql, "D4RL/antmaze/umaze-v1").actor_dropout == 0.0
    assert config(iql, "offbench/hopper/medium-v0").actor_dropout == 0.0
    assert config(iql, "offbench/pointmaze/open-v0").reward_normalization == "none"
    assert config(iql, "offbench/pointmaze/open-v0").temperature == 3.0  # not open/ -> not Kitchen's
    assert config(iql, "offbench/hopper/medium-v0").reward_normalization == "return_range"
    kitchen = config(cql, "D4RL/kitchen/partial-v2")
    assert kitchen.hidden_dims == (512, 512, 512)
    assert (kitchen.cql_importance_sample, kitchen.cql_max_target_backup) == (False, True)
    assert not config(cql, "D4RL/door/human-v2").cql_max_target_backup
    assert config(cql, "D4RL/antmaze/umaze-v1").hidden_dims == (256, 256)
    assert config(prdc, "D4RL/antmaze/large-play-v1").reward_scale == 10000.0


# --------------------------------------------------------------------------------------------------
# offbench's PointMaze generator


def test_planner_follows_the_umaze_corridor():
    planner = pointmaze.QIterationPlanner(pointmaze.EVAL_MAPS["umaze"])
    path = planner.path((3, 1), (1, 1))  # bottom-left to top-left: around the wall in row 2
    cells, cell = [(3, 1)], (3, 1)
    while cell != (1, 1):
        cell = path[cell]
        cells.append(cell)
    assert cells == [(3, 1), (3, 2), (3, 3), (2, 3), (1, 3), (1, 2), (1, 1)]
    assert planner.path((1, 1), (1, 1)) == {}


def test_generation_is_seeded_and_written_with_minari_references(minari_root):
    first = pointmaze.collect("umaze", "sparse", 400, seed=3)
    again = pointmaze.collect("umaze", "sparse", 400, seed=3)
    other = pointmaze.collect("umaze", "sparse", 400, seed=4)
    stack = lambda episodes: np.concatenate([e["actions"] for e in episodes])  # noqa: E731
    np.testing.assert_array_equal(stack(first), stack(again))
    assert not np.array_equal(stack(first), stack(other))
    ids = pointmaze.generate_maze("open", size=600, seed=0, reference_episodes=2)
    assert ids == ["offbench/pointmaze/open-v0", "offbench/pointmaze/open-dense-v0"]
    sparse, dense = load_dataset(ids[0]), load_dataset(ids[1])
    np.testing.assert_array_equal(sparse.observations, dense.observations)  # same trajectories
    assert set(np.unique(sparse.rewards)) <= {0.0, 1.0} and (dense.rewards > 0).all()
    eval_spec = json.loads(sparse.spec.eval_env_spec)
    assert eval_spec["max_episode_steps"] == 300 and eval_spec["kwargs"]["reset_target"] is False
    assert sparse.spec.ref_min_score < sparse.spec.ref_max_score  # random < waypoint controller
    stored = quality.read_quality(ids[1])
    assert stored["saco_reference"] == ids[0] and stored["saco"] == 1.0
    assert sparse.size == 600 and not sparse.terminals.any()
    episodes = Evaluator(sparse.spec, [0], 1)
    result = episodes.run(lambda observations, _: np.zeros((1, 1, 2), np.float32))
    assert result.successes[0, 0] in (0.0, 1.0)
    episodes.close()
