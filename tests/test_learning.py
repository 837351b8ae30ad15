"""Learning on small real data (slow: run with `make test-slow`)."""

from __future__ import annotations

import numpy as np
import pytest

from offbench.bench.train import Job, run_job
from offbench.datasets.generate.rollout import rollout_episodes, write_minari

pytestmark = pytest.mark.slow


def pendulum_expert(observation: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A PD controller on cart position and pole angle: balances InvertedPendulum-v5 for 1000 steps."""
    gains = np.array([1.0, 10.0, 1.0, 1.0])
    return np.array([gains @ observation]) + 0.3 * rng.standard_normal(1)


def test_bc_recovers_the_expert_return_on_inverted_pendulum(minari_root):
    episodes = rollout_episodes("InvertedPendulum-v5", 5_000, pendulum_expert, seed=1)
    expert_return = float(np.mean([ep["rewards"].sum() for ep in episodes]))
    assert expert_return == pytest.approx(1000.0)
    write_minari("test/invertedpendulum/expert-v0", "InvertedPendulum-v5", episodes)
    job = Job(
        algorithm="bc",
        dataset="test/invertedpendulum/expert-v0",
        seeds=(0, 1, 2),
        steps=3_000,
        eval_every=1_000,
        eval_episodes=5,
        final_k=1,
    )
    _, runs = run_job(job)
    assert (runs["final_return"] >= 0.9 * expert_return).all(), runs["final_return"].tolist()
