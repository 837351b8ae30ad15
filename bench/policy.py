"""Saved policies: every seed's final parameters, the resolved config and the observation normaliser.

A job saves them under ``<out>/policies/<job>/``: ``params/`` (orbax, the states of every seed stacked
on axis 0) and ``policy.json`` (algorithm, config, dataset spec, seeds, final step, normaliser, and
the job's last evaluation). :func:`evaluate_saved` re-runs that evaluation, which reproduces the job's
last returns exactly for the same seeds and episodes; :func:`load_policy` gives a callable from raw
environment observations to actions for a plain Gymnasium loop::

    import offbench
    policy = offbench.load_policy("results/default/policies/<job>")  # the first seed; seed=... for another
    env = policy.make_env()  # the environment the job evaluated in
    observation, _ = env.reset(seed=0)
    done = False
    while not done:
        observation, reward, terminated, truncated, _ = env.step(policy(observation))
        done = terminated or truncated
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from offbench.datasets.dataset import DatasetSpec, spec_from_dict

POLICY_FILE = "policy.json"
PARAMS_DIR = "params"


class PolicyError(ValueError):
    """A saved policy that cannot be read; the message says why."""


def save_policy(directory: Path, output: Any, job: Any) -> Path:
    """Write a finished job's policy (``output``: a ``train.JobOutput``) atomically to ``directory``."""
    directory = directory.absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_policy(staging, output, job)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # whatever failed (a full disk), nothing half-written
    return directory


def _write_policy(staging: Path, output: Any, job: Any) -> None:
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(staging / PARAMS_DIR, output.states)
    checkpointer.wait_until_finished()
    evals = output.evals
    last = evals[evals["step"] == evals["step"].max()].sort_values("seed")
    record = {
        "algorithm": job.algorithm,
        # A plug-in's source, code included, so the policy loads again without the plug-in's file.
        "plugin": None if job.plugin is None else dataclasses.asdict(job.plugin),
        "label": job.method,
        "job": output.identity.name,
        "job_id": output.identity.job_id,
        "code_version": str(evals["code_version"].iloc[0]),
        "config": dataclasses.asdict(output.cfg),
        "spec": dataclasses.asdict(output.spec),
        "seeds": list(job.seeds),
        "step": int(evals["step"].max()),
        "eval_episodes": job.eval_episodes,
        "diverged_step": output.diverged_step.tolist(),
        "observation_mean": np.asarray(output.observation_mean, np.float64).tolist(),
        "observation_std": np.asarray(output.observation_std, np.float64).tolist(),
        "last_return_mean": [None if np.isnan(v) else float(v) for v in last["return_mean"]],
    }
    (staging / POLICY_FILE).write_text(json.dumps(record, indent=1))


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@dataclasses.dataclass
class SavedPolicy:
    """A saved job's policy: every seed's states and what evaluating them needs."""

    directory: Path
    record: dict[str, Any]
    algorithm: Any
    cfg: Any
    spec: DatasetSpec
    states: Any

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.record["seeds"])

    @property
    def step(self) -> int:
        return int(self.record["step"])

    def batched_policy(self):
        """The engine's jitted ``(states, observations[S, E, obs], keys[S]) -> actions``."""
        from offbench.bench.engine import make_policy

        return make_policy(
            self.algorithm,
            self.cfg,
            np.asarray(self.record["observation_mean"], np.float32),
            np.asarray(self.record["observation_std"], np.float32),
        )


def read_policy(directory: str | Path) -> SavedPolicy:
    """Load a policy saved by a job (``<out>/policies/<job>``)."""
    import orbax.checkpoint as ocp

    from offbench.algorithms.registry import AlgorithmSource, UnknownAlgorithmError, get_algorithm, load
    from offbench.bench.engine import abstract_states

    directory = Path(directory).expanduser().absolute()
    try:
        record = json.loads((directory / POLICY_FILE).read_text())
    except (OSError, ValueError) as error:
        raise PolicyError(
            f"{directory} is not a saved policy ({error}). Saved policies are the folders under "
            "<results>/policies/."
        ) from error
    plugin = record.get("plugin")
    try:
        algorithm = load(AlgorithmSource(**plugin)) if plugin else get_algorithm(record["algorithm"])
    except UnknownAlgorithmError as error:
        raise PolicyError(f"cannot load the algorithm of {directory}: {error}") from error
    cfg = algorithm.Config(**{name: _tuples(value) for name, value in record["config"].items()})
    spec = spec_from_dict(record["spec"])
    abstract = abstract_states(algorithm, cfg, spec, len(record["seeds"]))
    try:
        states = ocp.StandardCheckpointer().restore(directory / PARAMS_DIR, abstract)
    except (OSError, ValueError, KeyError) as error:
        raise PolicyError(f"cannot read the parameters in {directory / PARAMS_DIR}: {error}") from error
    return SavedPolicy(directory, record, algorithm, cfg, spec, states)


def evaluate_saved(
    saved: SavedPolicy, episodes: int | None = None, seeds: tuple[int, ...] | None = None
) -> dict[int, np.ndarray]:
    """Episode returns per seed of the saved policy, evaluated as the job's last evaluation was (same
    reset seeds, same policy keys), so the job's seeds and episodes give the job's last returns."""
    from offbench.bench.engine import evaluate_states
    from offbench.datasets.evaluate import Evaluator

    seeds = saved.seeds if seeds is None else seeds
    unknown = sorted(set(seeds) - set(saved.seeds))
    if unknown:
        raise PolicyError(f"seeds {unknown} were not trained in this job; it has seeds {list(saved.seeds)}.")
    # Every saved seed goes through the policy (the batch the job evaluated), only the asked ones step:
    # the same kernels, hence the same actions, as in the job.
    asked = np.array([seed in seeds for seed in saved.seeds])
    active = asked & (np.asarray(saved.record["diverged_step"]) < 0)
    evaluator = Evaluator(saved.spec, saved.seeds, episodes or saved.record["eval_episodes"])
    policy = saved.batched_policy()
    try:
        result = evaluate_states(evaluator, policy, saved.states, saved.seeds, saved.step, active)
    finally:
        evaluator.close()
    return {seed: result.returns[i] for i, seed in enumerate(saved.seeds) if seed in seeds}


class Policy:
    """A callable from one raw environment observation (an array, or a dict for goal-conditioned
    environments) to one action, for a plain Gymnasium loop. Policies that plan action chunks (DQC)
    return the chunk's actions one call at a time; call :meth:`reset` at each new episode."""

    def __init__(self, saved: SavedPolicy, seed: int | None = None) -> None:
        import jax

        from offbench.bench.engine import evaluation_keys, state_axes

        self.seed = saved.seeds[0] if seed is None else seed
        if self.seed not in saved.seeds:
            raise PolicyError(f"seed {self.seed} was not trained; the job has seeds {list(saved.seeds)}.")
        index = saved.seeds.index(self.seed)
        self.spec = saved.spec
        self._states = jax.tree.map(
            lambda leaf, axis: leaf if axis is None else leaf[index : index + 1],
            saved.states,
            state_axes(saved.states),
            is_leaf=lambda x: x is None,
        )
        self._policy = saved.batched_policy()
        self._key = evaluation_keys((self.seed,))
        self._calls = 0
        self._queue: list[np.ndarray] = []
        self._low, self._high = np.asarray(saved.spec.action_low), np.asarray(saved.spec.action_high)

    def make_env(self, **kwargs: Any):
        """The environment the job evaluated in (Gymnasium ``make`` keyword arguments pass through)."""
        from offbench.datasets.envs import make_env

        return make_env(self.spec, **kwargs)

    def reset(self) -> None:
        self._queue = []

    def __call__(self, observation: Any) -> np.ndarray:
        import jax

        from offbench.datasets.envs import flatten_observation

        if not self._queue:
            flat = flatten_observation(observation, self.spec.observation_keys)
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(self._key, self._calls)
            self._calls += 1
            actions = np.asarray(self._policy(self._states, flat[None, None], keys))[0, 0]
            self._queue = list(actions) if actions.ndim == 2 else [actions]  # a chunk runs open-loop
        return np.clip(self._queue.pop(0), self._low, self._high)


def load_policy(path: str | Path, seed: int | None = None) -> Policy:
    """The saved policy at ``path`` (``<results>/policies/<job>``) as a callable observation -> action."""
    return Policy(read_policy(path), seed)
