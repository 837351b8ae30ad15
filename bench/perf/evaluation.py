"""The ``evaluation`` table of ``offbench perf``: env steps per second of offbench's evaluator and of two
vector backends (Gymnasium's ``SyncVectorEnv`` and envpool), each with the fraction of its time spent
outside environment stepping."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import jax
import numpy as np
import pandas as pd

from offbench.bench.perf.measure import Stopwatch
from offbench.datasets.dataset import DatasetSpec

EVALUATION_ENV = "hopper"
EVALUATOR_BACKEND = "offbench evaluator (gymnasium)"


class ClockedEnv(gym.Wrapper):
    """Adds the seconds spent in the wrapped environment's ``step`` and ``reset`` to a stopwatch."""

    def __init__(self, env: gym.Env, stopwatch: Stopwatch) -> None:
        super().__init__(env)
        self.stopwatch = stopwatch

    def step(self, action: Any) -> Any:
        with self.stopwatch.running():
            return self.env.step(action)

    def reset(self, **kwargs: Any) -> Any:
        with self.stopwatch.running():
            return self.env.reset(**kwargs)


def expert_policy(env: str = EVALUATION_ENV) -> Callable[[np.ndarray], jax.Array]:
    """The committed expert behaviour policy, deterministic, jitted: its episodes run the full 1000
    steps, as a trained agent's do, so every environment stays busy until the end."""
    from offbench.datasets.generate import policies, sac

    params = policies.load_policy(env, "expert").params
    return jax.jit(lambda observations: sac.act(params, observations, None, deterministic=True))


def vector_stepping(env: Any, num_envs: int, policy: Callable, steps: int) -> tuple[float, float]:
    """(total seconds, seconds inside ``env.step``) of ``steps`` env steps of a batched policy loop."""
    observations, _ = env.reset()
    stepping = Stopwatch()
    done = 0
    tic = time.perf_counter()
    while done < steps:
        actions = np.asarray(policy(np.asarray(observations, np.float32)), np.float64)
        with stepping.running():
            observations, *_ = env.step(actions)
        done += num_envs
    return time.perf_counter() - tic, stepping.seconds


def evaluation_row(
    backend: str, environments: int, steps: int, seconds: float, env_seconds: float
) -> dict[str, Any]:
    return {
        "backend": backend,
        "environments": environments,
        "env_steps": steps,
        "seconds": seconds,
        "env_steps_per_second": steps / seconds,
        "stepping_only_env_steps_per_second": steps / env_seconds,
        "overhead_fraction": 1.0 - env_seconds / seconds,
        "status": "ok",
    }


def evaluation_throughput(seeds: int = 5, episodes: int = 10, threads: int | None = None) -> pd.DataFrame:
    """Env steps/s of Hopper-v5 evaluation through offbench's evaluator and two vector backends.

    Every backend runs ``seeds * episodes`` environments with the expert behaviour policy for the same
    number of steps (one full evaluation of the evaluator). ``overhead_fraction`` is the share of the time
    spent outside environment stepping (the policy call, Python, copies). envpool runs ``threads`` worker
    threads (default: the usable cores); its row says why when it is not installed.
    """
    from offbench.datasets.envs import make_env
    from offbench.datasets.evaluate import Evaluator
    from offbench.datasets.generate.catalog import ACTION_DIMS, ENVS

    env_id, action_dim = ENVS[EVALUATION_ENV], ACTION_DIMS[EVALUATION_ENV]
    environments = seeds * episodes
    policy = expert_policy()
    spec = DatasetSpec(
        id="perf",
        source="perf",
        env_id=env_id,
        observation_dim=11,
        action_dim=action_dim,
        action_low=(-1.0,) * action_dim,
        action_high=(1.0,) * action_dim,
    )
    stepping = Stopwatch()
    evaluator = Evaluator(
        spec, tuple(range(seeds)), episodes, env_factory=lambda: ClockedEnv(make_env(spec), stepping)
    )
    policy(np.zeros((seeds, episodes, 11), np.float32)).block_until_ready()  # compile outside the clock
    tic = time.perf_counter()
    evaluator.run(lambda observations, call: policy(observations))
    seconds = time.perf_counter() - tic
    evaluator.close()
    steps = evaluator.env_steps
    rows = [evaluation_row(EVALUATOR_BACKEND, environments, steps, seconds, stepping.seconds)]

    env = gym.make_vec(env_id, num_envs=environments, vectorization_mode="sync")
    policy(np.zeros((environments, 11), np.float32)).block_until_ready()
    rows.append(
        evaluation_row(
            "gymnasium SyncVectorEnv", environments, steps, *vector_stepping(env, environments, policy, steps)
        )
    )
    env.close()

    try:
        import envpool
    except ImportError as error:
        rows.append(
            {
                "backend": "envpool",
                "environments": environments,
                "status": f"not measured: envpool is not installed ({error}); `pip install envpool` "
                "(1.x registers the MuJoCo v5 environments; it needs Python >= 3.11)",
            }
        )
    else:
        threads = threads or len(os.sched_getaffinity(0))
        env = envpool.make_gymnasium(env_id, num_envs=environments, num_threads=threads, seed=0)
        backend = f"envpool {envpool.__version__} ({threads} threads)"
        rows.append(
            evaluation_row(backend, environments, steps, *vector_stepping(env, environments, policy, steps))
        )
        env.close()
    return pd.DataFrame(rows)
