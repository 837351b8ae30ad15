"""The D4RL families Minari hosts under ``D4RL/``, whose environments come from ``gymnasium-robotics``:
PointMaze, AntMaze, Adroit and Franka Kitchen.

What offbench does for them, beyond reading the Minari dataset:

- **Registration.** ``gymnasium_robotics`` registers its environments on import; :func:`prepare` does
  that before an evaluation environment is made.
- **Kitchen on MuJoCo >= 3.12.** ``FrankaKitchen-v1`` fails an assertion on creation
  (``mujoco_utils.get_joint_qpos``: ``assert joint_type in (mjJNT_HINGE, mjJNT_SLIDE)``). The joint type
  read from ``model.jnt_type`` is a NumPy integer, and since MuJoCo 3.12 (pybind11 3) the enum's own
  ``==`` returns False for NumPy integers; ``in`` compares from the enum's side, so a hinge joint is not
  recognised. Fixed upstream in Farama-Foundation/Gymnasium-Robotics pull request 330 (merged
  2026-09-05, not in a release as of gymnasium-robotics 1.4.2). Until a release has it, :func:`prepare`
  applies that fix, converting the joint type to a Python ``int`` in the four joint getters and setters,
  and only when the installed MuJoCo has the asymmetric comparison.
- **Success.** Each family's episode success, recorded as ``info["success"]`` on every step by
  :class:`EpisodeSuccess` (offbench's evaluator reads the last step's, as OGBench's evaluation does):
  PointMaze/AntMaze: the goal was reached at some step (the environments report ``info["success"]``
  per step, within 0.45 of the goal); Adroit: the task's ``info["success"]`` held on at least 25 steps
  (20 for pen), the rule of DAPG's ``evaluate_success`` in ``mj_envs`` (aravindr93/mjrl) that D4RL
  inherited; Kitchen: every task of the episode completed (``info["tasks_to_complete"]`` empty).
- **Observation layout.** Dictionary observations (goal-conditioned mazes and kitchen) are flattened
  leaf by leaf in the dataset's key order, depth first, nested keys joined with ``/``. Minari stores
  Dict spaces with sorted keys, so PointMaze/AntMaze give ``achieved_goal (2), desired_goal (2),
  observation (4 | 27)`` and Kitchen gives ``achieved_goal/<task>..., desired_goal/<task>...,
  observation (59)``: the goal is part of the flat vector.

Version pins (``pyproject.toml``): ``gymnasium-robotics>=1.4.2,<1.5``. The Adroit ``-v2`` datasets
were made by replaying D4RL's recorded actions in ``AdroitHand*-v1`` (dense reward) with Minari 0.4.3
and gymnasium-robotics 1.2.x, whose door, hammer and relocate rewards carry the hand-to-object sign
change of 1.2.1 (Gymnasium-Robotics pull request 220). gymnasium-robotics keeps that ``-v1`` reward in
every later release (1.4.2 warns about it) and puts the corrected one in new ``-v2`` environments
(>= 1.4.3), so the ``-v1`` environments a dataset names are the ones its rewards were computed in;
offbench always makes the environment the dataset's metadata names.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re

import gymnasium as gym
import numpy as np

FAMILIES = {
    "pointmaze": re.compile(r"^PointMaze_"),
    "antmaze": re.compile(r"^AntMaze_"),
    "adroit": re.compile(r"^AdroitHand(Door|Hammer|Pen|Relocate)"),
    "kitchen": re.compile(r"^FrankaKitchen-"),
}
# DAPG's success rule: the goal held on this many steps of the episode (mj_envs evaluate_success).
ADROIT_SUCCESS_STEPS = {"Door": 25, "Hammer": 25, "Pen": 20, "Relocate": 25}


def family(env_id: str | None) -> str | None:
    """``pointmaze``, ``antmaze``, ``adroit`` or ``kitchen`` for a gymnasium-robotics environment id."""
    if env_id is None:
        return None
    return next((name for name, pattern in FAMILIES.items() if pattern.match(env_id)), None)


@functools.cache
def prepare() -> None:
    """Register the gymnasium-robotics environments (once), with the MuJoCo enum fix where needed."""
    try:
        # Its import prints a notice to stderr that the Adroit -v1 rewards changed in 1.2.1; offbench
        # evaluates with that very reward on purpose (see the version pins above), so the notice is noise.
        with contextlib.redirect_stderr(io.StringIO()):
            import gymnasium_robotics
    except ImportError as error:  # pragma: no cover - a dependency of offbench
        raise ImportError(
            "the D4RL maze, Adroit and Kitchen environments need gymnasium-robotics: reinstall offbench "
            "(`pip install -e .`)."
        ) from error
    gym.register_envs(gymnasium_robotics)
    if not _enum_equals_numpy_integer():
        _patch_joint_accessors()


def _enum_equals_numpy_integer() -> bool:
    import mujoco

    return bool(mujoco.mjtJoint.mjJNT_HINGE == np.int32(int(mujoco.mjtJoint.mjJNT_HINGE)))


def _patch_joint_accessors() -> None:
    """The effect of Gymnasium-Robotics pull request 330: ``mujoco_utils`` compares joint types as Python
    ints. Its joint getters and setters read the enum through the module global ``mujoco``; that global is
    replaced by a view of MuJoCo whose ``mjtJoint`` members are ints, everything else being MuJoCo's."""
    import types

    import mujoco
    from gymnasium_robotics.utils import mujoco_utils

    if isinstance(mujoco_utils.mujoco, MujocoWithIntJointTypes):
        return
    joint_types = types.SimpleNamespace(
        **{
            name: int(getattr(mujoco.mjtJoint, name))
            for name in ("mjJNT_FREE", "mjJNT_BALL", "mjJNT_SLIDE", "mjJNT_HINGE")
        }
    )
    mujoco_utils.mujoco = MujocoWithIntJointTypes(mujoco, joint_types)


class MujocoWithIntJointTypes:
    """The ``mujoco`` module with ``mjtJoint`` replaced by plain integers."""

    def __init__(self, module, joint_types) -> None:
        self._module = module
        self.mjtJoint = joint_types

    def __getattr__(self, name: str):
        return getattr(self._module, name)


class EpisodeSuccess(gym.Wrapper):
    """Sets ``info["success"]`` on every step to the episode's success so far, by the family's rule."""

    def __init__(self, env: gym.Env, env_family: str, steps_needed: int = 1) -> None:
        super().__init__(env)
        self.env_family = env_family
        self.steps_needed = steps_needed
        self.successful_steps = 0

    def reset(self, **kwargs):
        self.successful_steps = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        if self.env_family == "kitchen":
            step_success = len(info.get("tasks_to_complete", ())) == 0
        else:
            step_success = bool(info.get("success", False))
        self.successful_steps += int(step_success)
        info = {**info, "success": self.successful_steps >= self.steps_needed}
        return observation, reward, terminated, truncated, info


def wrap(env: gym.Env, env_id: str) -> gym.Env:
    """The environment with :class:`EpisodeSuccess` for its family; other environments unchanged."""
    name = family(env_id)
    if name is None:
        return env
    steps = 1
    if name == "adroit":
        steps = ADROIT_SUCCESS_STEPS[FAMILIES["adroit"].match(env_id).group(1)]
    return EpisodeSuccess(env, name, steps)


def observation_paths(space: gym.spaces.Space) -> tuple[str, ...] | None:
    """The leaf keys of a (nested) Dict space, depth first in the space's order, joined with ``/``;
    None for a Box space. Raises ValueError naming a leaf that is not a Box."""
    if not isinstance(space, gym.spaces.Dict):
        return None
    paths: list[str] = []

    def visit(prefix: str, subspace: gym.spaces.Space) -> None:
        if isinstance(subspace, gym.spaces.Dict):
            for key, child in subspace.spaces.items():
                visit(f"{prefix}{key}/", child)
        elif isinstance(subspace, gym.spaces.Box):
            paths.append(prefix.rstrip("/"))
        else:
            raise ValueError(f"observation key {prefix.rstrip('/')!r} is a {type(subspace).__name__} space")

    visit("", space)
    return tuple(paths)


def leaf(observation, path: str):
    """The entry of a nested dictionary observation at ``a/b/c``."""
    for key in path.split("/"):
        observation = observation[key]
    return observation


def leaf_space(space: gym.spaces.Space, path: str) -> gym.spaces.Space | None:
    """The subspace of a nested Dict space at ``a/b/c``, or None where it has no such key."""
    for key in path.split("/"):
        if not isinstance(space, gym.spaces.Dict) or key not in space.spaces:
            return None
        space = space[key]
    return space
