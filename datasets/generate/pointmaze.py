"""D4RL-style PointMaze data made locally, the way Minari made ``D4RL/pointmaze/*-v2``.

Ids: ``offbench/pointmaze/{open,umaze,medium,large}{,-dense}-v0``;
``offbench datasets generate --env pointmaze-<maze>`` writes the sparse and the dense dataset of a maze.

The recipe follows Minari's generation script (Farama-Foundation/minari-dataset-generation-scripts,
``scripts/pointmaze/create_pointmaze_dataset.py``, ``controller.py`` and ``maze_solver.py`` at commit
fb65edb), itself a port of D4RL's ``maze2d`` collection:

- collection environment ``PointMaze_<Maze>[Dense]-v3`` with ``continuing_task=True, reset_target=True``:
  reaching the goal (within 0.45) draws a new goal and the ball goes on from where it is;
- a waypoint planner: Q-value iteration over the maze's grid (4 moves, reward 1 for entering the goal
  cell, discount 0.99, 50 iterations) gives the next cell from each cell; a PD controller
  ``10 * (waypoint - position) - 1 * velocity`` drives the ball to it, moving on within 0.1 of it; an
  intermediate waypoint is the cell centre minus ``uniform(0, 0.2)`` per axis, the last is the goal;
- action noise ``N(0, 0.5)`` per dimension, then clipping to [-1, 1];
- the stream is cut into episodes at each success (``truncations`` set on the step that reaches the
  goal), as Minari's ``PointMazeStepDataCallback`` does; the last piece is truncated by the size limit;
- evaluation environment: the same id with the maze map of Minari's ``EVAL_ENV_MAPS`` (one fixed goal
  cell, random start cells), ``continuing_task=True, reset_target=False``, the registered time limit
  (300 steps open/umaze, 600 medium, 800 large);
- reference scores as Minari computes them (``minari.utils.get_average_reference_score`` in the
  evaluation environment, first reset seed 123, 100 episodes): ``ref_min_score`` from uniform random
  actions (action space seeded 123), ``ref_max_score`` from the noiseless waypoint controller.

Differences: seeded (Minari's script draws the noise from NumPy's unseeded global generator): the reset
seed and every random draw derive from ``seed``, so the same seed gives the same arrays; the sparse and
dense datasets of a maze follow the same trajectories (same seed, same dynamics; only the rewards
differ); :data:`DEFAULT_SIZE` transitions instead of 1M; no ``infos`` stored.

A dataset episode runs from one goal to the next, while an evaluation episode is a whole time limit
spent reaching the goal and staying there, so the dataset's own normalised score (and TQ) is far below
what a policy that solves the maze scores.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from offbench.datasets import robotics
from offbench.datasets.dataset import DatasetError
from offbench.datasets.generate import storage
from offbench.datasets.generate.rollout import Episode
from offbench.datasets.minari_data import minari_datasets_path
from offbench.hints import suggest

NAMESPACE = "offbench/pointmaze/"
MAZES = {
    "open": "PointMaze_Open",
    "umaze": "PointMaze_UMaze",
    "medium": "PointMaze_Medium",
    "large": "PointMaze_Large",
}
CLI_ENVS = {f"pointmaze-{maze}": maze for maze in MAZES}
REWARDS = ("sparse", "dense")
DEFAULT_SIZE = 100_000
REFERENCE_EPISODES = 100
REFERENCE_SEED = 123  # Minari's get_average_reference_score and RandomPolicy
ACTION_NOISE = 0.5
P_GAIN, D_GAIN = 10.0, -1.0
WAYPOINT_THRESHOLD = 0.1
WAYPOINT_JITTER = 0.2
Q_ITERATIONS, Q_DISCOUNT = 50, 0.99
ID_PATTERN = re.compile(r"^offbench/pointmaze/([a-z]+?)(-dense)?-v0$")
G = "g"
# Minari's EVAL_ENV_MAPS: one goal cell ("g"), every other free cell a possible start.
EVAL_MAPS: dict[str, list[list[Any]]] = {
    "open": [
        [1, 1, 1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0, 0, 1],
        [1, 0, 0, G, 0, 0, 1],
        [1, 0, 0, 0, 0, 0, 1],
        [1, 1, 1, 1, 1, 1, 1],
    ],
    "umaze": [[1, 1, 1, 1, 1], [1, G, 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]],
    "medium": [
        [1, 1, 1, 1, 1, 1, 1, 1],
        [1, 0, 0, 1, 1, 0, 0, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 1, 0, 0, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 0, 0, 1, 0, 1],
        [1, 0, 0, 0, 1, 0, G, 1],
        [1, 1, 1, 1, 1, 1, 1, 1],
    ],
    "large": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0, 1],
        [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1],
        [1, 0, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1],
        [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1],
        [1, 1, 0, 1, 0, 1, 0, 1, 0, 1, 1, 1],
        [1, 0, 0, 1, 0, 0, 0, 1, 0, G, 0, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ],
}
MOVES = ((0, 1), (0, -1), (-1, 0), (1, 0))  # Minari's UP, DOWN, LEFT, RIGHT in (row, column) steps


def dataset_id(maze: str, reward: str) -> str:
    return f"{NAMESPACE}{maze}{'-dense' if reward == 'dense' else ''}-v0"


def env_id(maze: str, reward: str) -> str:
    return f"{MAZES[maze]}{'Dense' if reward == 'dense' else ''}-v3"


def generatable_ids() -> list[str]:
    return [dataset_id(maze, reward) for maze in MAZES for reward in REWARDS]


def parse_id(identifier: str) -> tuple[str, str]:
    """(maze, reward type) of a generatable id; a DatasetError with close matches otherwise."""
    match = ID_PATTERN.match(identifier)
    if not match or match.group(1) not in MAZES:
        raise storage.not_generatable(identifier, generatable_ids())
    return match.group(1), "dense" if match.group(2) else "sparse"


class QIterationPlanner:
    """Next grid cell towards a goal cell, by Q-value iteration over the free cells (Minari's QIteration:
    moves into walls or off the map lead nowhere, reward 1 for a move into the goal cell)."""

    def __init__(self, maze_map: list[list[Any]]) -> None:
        self.rows, self.columns = len(maze_map), len(maze_map[0])
        states = self.rows * self.columns
        self.next_state = np.zeros((states, len(MOVES)), np.int64)
        self.transitions = np.zeros((states, len(MOVES), states))
        for state in range(states):
            row, column = divmod(state, self.columns)
            for move, (d_row, d_column) in enumerate(MOVES):
                cell = (row + d_row, column + d_column)
                self.next_state[state, move] = cell[0] * self.columns + cell[1]
                inside = 0 <= cell[0] < self.rows and 0 <= cell[1] < self.columns
                if inside and maze_map[cell[0]][cell[1]] != 1:
                    self.transitions[state, move, self.next_state[state, move]] = 1.0

    def path(self, start: tuple[int, int], goal: tuple[int, int]) -> dict[tuple[int, int], tuple[int, int]]:
        """{cell: next cell} from ``start`` to ``goal`` (empty when they are the same cell)."""
        goal_state = goal[0] * self.columns + goal[1]
        rewards = (self.next_state == goal_state).astype(np.float64)
        q_values = np.zeros_like(rewards)
        for _ in range(Q_ITERATIONS):
            q_values = rewards + Q_DISCOUNT * self.transitions.dot(q_values.max(axis=1))
        waypoints: dict[tuple[int, int], tuple[int, int]] = {}
        state = start[0] * self.columns + start[1]
        if state == goal_state:
            return waypoints
        while True:
            following = int(self.next_state[state, int(np.argmax(q_values[state]))])
            waypoints[divmod(state, self.columns)] = divmod(following, self.columns)
            if following == goal_state or len(waypoints) > self.rows * self.columns:
                return waypoints
            state = following


class WaypointController:
    """Minari's D4RL waypoint controller: a PD controller towards the next waypoint of the planner's path;
    ``rng`` draws the jitter of intermediate waypoints (None: no jitter draws are needed)."""

    def __init__(self, maze, rng: np.random.Generator) -> None:
        self.maze = maze
        self.planner = QIterationPlanner(maze.maze_map)
        self.rng = rng
        self.goal_xy = np.full(2, np.inf)
        self.goal_cell: tuple[int, int] | None = None
        self.waypoints: dict[tuple[int, int], tuple[int, int]] = {}
        self.target_cell: tuple[int, int] | None = None
        self.target_xy = np.zeros(2)

    def __call__(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        position, goal = observation["achieved_goal"], observation["desired_goal"]
        if np.linalg.norm(self.goal_xy - goal) > 1e-3:  # a new goal: plan again
            cell = tuple(int(i) for i in self.maze.cell_xy_to_rowcol(position))
            self.goal_cell = tuple(int(i) for i in self.maze.cell_xy_to_rowcol(goal))
            self.goal_xy = np.array(goal)
            self.waypoints = self.planner.path(cell, self.goal_cell)
            if self.waypoints:
                self.target_cell = self.waypoints[cell]
                self.target_xy = self.maze.cell_rowcol_to_xy(np.array(self.target_cell))
            else:
                self.target_cell, self.target_xy = self.goal_cell, self.goal_xy
        if self.target_cell == self.goal_cell:
            self.target_xy = self.goal_xy
        elif np.linalg.norm(self.target_xy - position) <= WAYPOINT_THRESHOLD:
            self.target_cell = self.waypoints[self.target_cell]
            if self.target_cell == self.goal_cell:
                self.target_xy = self.goal_xy
            else:
                centre = self.maze.cell_rowcol_to_xy(np.array(self.target_cell))
                self.target_xy = centre - self.rng.uniform(size=2) * WAYPOINT_JITTER
        return P_GAIN * (self.target_xy - position) + D_GAIN * observation["observation"][2:]


def collection_kwargs(size: int) -> dict[str, Any]:
    return {"continuing_task": True, "reset_target": True, "max_episode_steps": size}


def evaluation_kwargs(maze: str) -> dict[str, Any]:
    return {"maze_map": EVAL_MAPS[maze], "continuing_task": True, "reset_target": False}


def collect(maze: str, reward: str, size: int, seed: int) -> list[Episode]:
    """``size`` transitions of noisy waypoint control, cut into episodes at each success."""
    robotics.prepare()
    env = gym.make(env_id(maze, reward), **collection_kwargs(size))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9A2E]))
    controller = WaypointController(env.unwrapped.maze, rng)
    observation, _ = env.reset(seed=seed)
    keys = tuple(sorted(observation))  # Minari stores a Dict space with sorted keys
    episodes: list[Episode] = []
    stream: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards")}
    stream["observations"].append(observation)
    for step in range(size):
        action = controller(observation) + rng.normal(size=2) * ACTION_NOISE
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        observation, step_reward, _, truncated, info = env.step(action)
        stream["observations"].append(observation)
        stream["actions"].append(action)
        stream["rewards"].append(step_reward)
        if info["success"] or truncated or step == size - 1:
            episodes.append(
                {
                    "observations": {
                        k: np.asarray([o[k] for o in stream["observations"]], np.float64) for k in keys
                    },
                    "actions": np.asarray(stream["actions"], np.float32),
                    "rewards": np.asarray(stream["rewards"], np.float64),
                    "terminations": np.zeros(len(stream["actions"]), bool),
                    "truncations": np.arange(len(stream["actions"])) == len(stream["actions"]) - 1,
                }
            )
            stream = {"observations": [observation], "actions": [], "rewards": []}
    env.close()
    return episodes


def reference_scores(maze: str, reward: str, episodes: int = REFERENCE_EPISODES) -> tuple[float, float]:
    """(random, waypoint controller) mean returns in the evaluation environment, as Minari computes them."""
    from minari.utils import RandomPolicy, get_average_reference_score

    robotics.prepare()
    env = gym.make(env_id(maze, reward), **evaluation_kwargs(maze))
    ref_min = get_average_reference_score(env, RandomPolicy(env), episodes)
    env = gym.make(env_id(maze, reward), **evaluation_kwargs(maze))
    # The expert is noiseless; its jitter generator is seeded so the score is reproducible.
    expert = WaypointController(env.unwrapped.maze, np.random.default_rng(REFERENCE_SEED))
    ref_max = get_average_reference_score(env, expert, episodes)
    return ref_min, ref_max


def describe(
    maze: str,
    reward: str,
    size: int,
    seed: int,
    episodes: int,
    refs: tuple[float, float],
    reference_episodes: int,
) -> str:
    return (
        f"D4RL-style PointMaze data generated by offbench in {env_id(maze, reward)} (continuing_task=True, "
        f"reset_target=True): {size:,} transitions, {episodes:,} episodes, seed {seed}. Minari's D4RL "
        "recipe: a Q-iteration waypoint planner over the maze grid driving a PD controller (p 10, d -1), "
        f"action noise N(0, {ACTION_NOISE}) clipped to [-1, 1], a new goal at each success, where the "
        "episode is cut (truncation). Evaluation: the same environment with Minari's single-goal "
        "evaluation map (continuing_task=True, reset_target=False). Reference scores as Minari computes "
        f"them over {reference_episodes} evaluation episodes: random actions {refs[0]:.2f}, the noiseless "
        f"waypoint controller {refs[1]:.2f}. Recipe: offbench.datasets.generate.pointmaze."
    )


def plan_generation(maze: str, rewards: tuple[str, ...], size: int, overwrite: bool) -> list[str]:
    """Validate a generation before anything is collected; returns the ids it will write."""
    if maze not in MAZES:
        raise DatasetError(
            f"unknown PointMaze maze {maze!r}.{suggest(maze, list(MAZES))} Mazes: {', '.join(MAZES)}."
        )
    unknown = [r for r in rewards if r not in REWARDS]
    if unknown or not rewards:
        raise DatasetError(f"PointMaze rewards are {' and '.join(REWARDS)}, got {list(rewards)}.")
    storage.check_size(size)
    identifiers = [dataset_id(maze, reward) for reward in REWARDS if reward in rewards]
    present = [i for i in identifiers if (minari_datasets_path() / i).exists()]
    if present and not overwrite:
        raise DatasetError(
            f"{len(present)} dataset(s) already exist under {minari_datasets_path()}: "
            f"{', '.join(present)}. Pass --overwrite (overwrite=True) to replace them, or delete them first."
        )
    return identifiers


def generate_maze(
    maze: str,
    rewards: tuple[str, ...] = REWARDS,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    overwrite: bool = False,
    reference_episodes: int = REFERENCE_EPISODES,
    log: Callable[[str], Any] | None = None,
) -> list[str]:
    """Write the sparse and/or dense dataset of one maze, with its quality metrics; returns the ids."""
    identifiers = plan_generation(maze, rewards, size, overwrite)
    storage.remove_stale_staging()
    written = []
    for identifier in identifiers:
        reward = parse_id(identifier)[1]
        tic = time.perf_counter()
        episodes = collect(maze, reward, size, seed)
        collected = time.perf_counter() - tic
        refs = reference_scores(maze, reward, reference_episodes)
        storage.write_atomically(
            identifier,
            env_id(maze, reward),
            episodes,
            refs,
            describe(maze, reward, size, seed, len(episodes), refs, reference_episodes),
            overwrite,
            recipe={"generator": "offbench.datasets.generate.pointmaze", "size": size, "seed": seed},
            env_kwargs=collection_kwargs(size),
            eval_env_kwargs=evaluation_kwargs(maze),
        )
        written.append(identifier)
        if log is not None:
            scored = time.perf_counter() - tic - collected
            log(
                f"{identifier}: {size:,} transitions, {len(episodes):,} episodes, collected in "
                f"{collected:.1f}s, reference scores [{refs[0]:.2f}, {refs[1]:.2f}] in {scored:.1f}s"
            )
    write_quality(maze, written)
    return written


def write_quality(maze: str, identifiers: list[str]) -> dict[str, dict[str, Any]]:
    """TQ, SACo and return statistics beside each dataset, as for the locomotion sets. SACo's reference
    (bin limits and denominator) is the maze's sparse dataset; its dense twin follows the same
    trajectories, so SACo compares a maze's data with itself and across seeds, not across mazes."""
    import json
    import os

    from offbench.datasets import quality
    from offbench.datasets.sources import load_dataset

    reference_id = dataset_id(maze, "sparse")
    if not identifiers or not storage.exists(reference_id):
        return {}
    reference = load_dataset(reference_id)
    tables = {}
    for identifier in identifiers:
        data = reference if identifier == reference_id else load_dataset(identifier)
        table = quality.quality_table(data, reference)
        path = quality.quality_path(identifier)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        temporary.write_text(json.dumps(table, indent=2))
        os.replace(temporary, path)
        tables[identifier] = table
    return tables
