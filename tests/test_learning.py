"""Learning on small real data (slow: run with `make test-slow`).

Each check writes its figures to ``build/learning/<name>.json`` for the issue notes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rollouts import rollout_episodes

from offbench.bench import stats
from offbench.bench.train import Job, run_job
from offbench.datasets.generate import catalog
from offbench.datasets.generate.rollout import write_minari

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
    runs = run_job(job).runs
    assert (runs["final_return"] >= 0.9 * expert_return).all(), runs["final_return"].tolist()


FIGURES = Path(__file__).resolve().parent.parent / "build" / "learning"


def write_figures(name: str, figures: dict) -> None:
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")


def test_aw_sampler_beats_uniform_for_td3bc_on_random_expert_5pct():
    """Hong et al.'s headline effect: on a dataset that is 95% random trajectories, advantage-weighted
    sampling finds the 5% expert ones and TD3+BC learns far more than with uniform sampling."""
    dataset = "offbench/hopper/random-expert-5pct-v0"
    catalog.generate(dataset)  # on demand, like a suite; nothing is done when it exists
    scores = {}
    for sampler in ("uniform", "aw"):
        job = Job(
            algorithm="td3bc",
            dataset=dataset,
            seeds=tuple(range(8)),
            steps=20_000,
            eval_every=5_000,
            eval_episodes=10,
            hparams=(("sampler", sampler),),
            final_k=2,
        )
        runs = run_job(job).runs
        scores[sampler] = runs.sort_values("seed")["final_score"].to_numpy()
    difference = stats.difference_interval(scores["aw"][:, None], scores["uniform"][:, None])
    write_figures(
        "aw_vs_uniform_td3bc_hopper_random_expert_5pct",
        {
            "dataset": dataset,
            "steps": 20_000,
            "final_score_per_seed": {k: v.tolist() for k, v in scores.items()},
            "aw_minus_uniform": {"mean": difference.point, "ci95": [difference.lower, difference.upper]},
        },
    )
    assert difference.lower > 0.0, (scores, difference)


def test_bc_on_generated_hopper_expert_data_recovers_the_expert():
    """End to end over the generator: cloning offbench's own expert data gives an expert-level policy."""
    dataset = "offbench/hopper/expert-v0"
    catalog.generate(dataset)
    job = Job(
        algorithm="bc",
        dataset=dataset,
        seeds=(0, 1, 2),
        steps=10_000,
        eval_every=5_000,
        eval_episodes=10,
        final_k=1,
    )
    runs = run_job(job).runs
    scores = runs.sort_values("seed")["final_score"].to_numpy()
    write_figures(
        "bc_hopper_expert", {"dataset": dataset, "steps": 10_000, "final_score_per_seed": scores.tolist()}
    )
    assert scores.mean() >= 80.0, scores
