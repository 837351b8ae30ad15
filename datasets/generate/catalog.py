"""offbench's own datasets, generated locally from committed behaviour policies (no internet).

Ids: ``offbench/<env>/<kind>-v0`` with env in hopper, halfcheetah, walker2d and kind one of
- ``random``: a uniform-random policy;
- ``medium`` / ``expert``: the designated SAC snapshots of ``datasets/policies/<env>/manifest.json``,
  actions *sampled* from the stochastic policy, as D4RL and Minari collected theirs;
- ``medium-replay``: equal shares from a uniform-random policy and every ladder snapshot up to the
  medium one, standing in for D4RL's replay buffer (offbench commits snapshots, not buffers);
- ``medium-expert``: the medium and expert datasets concatenated;
- ``random-{medium,expert}-{1,5,10,50}pct``: Hong et al.'s mixed sets: whole trajectories of the good
  dataset drawn with replacement until they make up the fraction of transitions (the last one may
  overshoot by less than a trajectory), topped up with whole random trajectories to the size.
Every dataset of an environment shares its reference scores: ``ref_min_score`` = mean return of the
uniform-random policy over 100 episodes, ``ref_max_score`` = the expert's 100-episode mean return
from the manifest. Same seed, same arrays. A dataset is written into a temporary Minari root and
moved into place only when complete, so an interrupted generation leaves nothing half-written.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from offbench.datasets.dataset import DatasetError, suggest
from offbench.datasets.generate.rollout import Episode, collect_episodes, write_minari
from offbench.datasets.sources import minari_datasets_path

ENVS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}
BASE_KINDS = ("random", "medium", "expert", "medium-replay")
MIXED_KINDS = tuple(f"random-{good}-{pct}pct" for good in ("medium", "expert") for pct in (1, 5, 10, 50))
KINDS = (*BASE_KINDS, "medium-expert", *MIXED_KINDS)
DEFAULT_SIZE = 100_000
REFERENCE_EPISODES = 100
QUALITY_FILE = "offbench_quality.json"
ID_PATTERN = re.compile(r"^offbench/([a-z0-9]+)/([a-z0-9\-]+)-v0$")


def dataset_id(env: str, kind: str) -> str:
    return f"offbench/{env}/{kind}-v0"


def generatable_ids() -> list[str]:
    return [dataset_id(env, kind) for env in ENVS for kind in KINDS]


def parse_id(identifier: str) -> tuple[str, str]:
    match = ID_PATTERN.match(identifier)
    if not match or match.group(1) not in ENVS or match.group(2) not in KINDS:
        raise DatasetError(
            f"{identifier!r} is not a dataset offbench can generate.{suggest(identifier, generatable_ids())}"
        )
    return match.group(1), match.group(2)


def check_env(env: str) -> str:
    if env not in ENVS:
        raise DatasetError(
            f"unknown environment {env!r}.{suggest(env, list(ENVS))} Choose from {', '.join(ENVS)}."
        )
    return ENVS[env]


def exists(identifier: str) -> bool:
    return (minari_datasets_path() / identifier / "data" / "metadata.json").exists()


# --------------------------------------------------------------------------------------------------
# Policies as batched action functions


def random_policy(env: str, seed: int):
    act_dim = {"hopper": 3, "halfcheetah": 6, "walker2d": 6}[env]
    rng = np.random.default_rng(seed)
    return lambda observations, step: rng.uniform(-1.0, 1.0, (len(observations), act_dim))


def snapshot_policy(env: str, name: str, seed: int):
    from offbench.datasets.generate.policies import load_policy

    policy = load_policy(env, name)
    base = jax.random.key(seed)
    return lambda observations, step: np.asarray(policy.actions(observations, jax.random.fold_in(base, step)))


def reference_scores(env: str) -> tuple[float, float]:
    """(uniform-random mean return over 100 episodes, the expert's manifest mean return)."""
    from offbench.datasets.generate.policies import load_policy

    expert = load_policy(env, "expert")
    episodes = collect_episodes_count(env, random_policy(env, seed=123), REFERENCE_EPISODES, seed=123)
    return float(np.mean([ep["rewards"].sum() for ep in episodes])), float(expert.return_mean)


def collect_episodes_count(env: str, policy, count: int, seed: int) -> list[Episode]:
    """Exactly ``count`` whole episodes (one environment per episode, in lockstep)."""
    return collect_episodes(
        ENVS[env], steps=10**12, policy=policy, seed=seed, num_envs=count, one_episode_each=True
    )


# --------------------------------------------------------------------------------------------------
# Building each kind


def manifest_ladder(env: str) -> list[str]:
    from offbench.datasets.generate.policies import MANIFEST, POLICIES_DIR

    manifest = json.loads((POLICIES_DIR / env / MANIFEST).read_text())
    medium = {s["name"]: s for s in manifest["snapshots"]}[manifest["medium"]]
    return [
        s["name"]
        for s in sorted(manifest["snapshots"], key=lambda s: s["steps"])
        if s["steps"] <= medium["steps"]
    ]


def build_base(env: str, kind: str, size: int, seed: int) -> list[Episode]:
    env_id = ENVS[env]
    if kind == "random":
        return collect_episodes(env_id, size, random_policy(env, seed), seed)
    if kind in ("medium", "expert"):
        return collect_episodes(env_id, size, snapshot_policy(env, kind, seed), seed)
    ladder = manifest_ladder(env)
    share = size // (len(ladder) + 1)
    episodes = collect_episodes(env_id, share, random_policy(env, seed), seed)
    for index, name in enumerate(ladder, start=1):
        episodes += collect_episodes(env_id, share, snapshot_policy(env, name, seed + index), seed + index)
    return episodes


def mix(good: list[Episode], random: list[Episode], fraction: float, size: int, seed: int) -> list[Episode]:
    rng = np.random.default_rng(seed)
    mixed, good_steps = [], 0
    while good_steps < fraction * size:
        episode = good[rng.integers(len(good))]
        mixed.append(episode)
        good_steps += len(episode["actions"])
    total = good_steps
    while total < size:
        episode = random[rng.integers(len(random))]
        mixed.append(episode)
        total += len(episode["actions"])
    return mixed


def load_episodes(identifier: str) -> list[Episode]:
    import minari

    data = minari.load_dataset(identifier)
    return [
        {
            "observations": ep.observations,
            "actions": ep.actions,
            "rewards": ep.rewards,
            "terminations": ep.terminations,
            "truncations": ep.truncations,
        }
        for ep in data.iterate_episodes()
    ]


def describe(env: str, kind: str, size: int, seed: int) -> str:
    return (
        f"offbench-generated {kind} data for {ENVS[env]}: about {size:,} transitions, seed {seed}, "
        f"see offbench.datasets.generate.catalog for the recipe."
    )


def write_atomically(
    identifier: str,
    env: str,
    episodes: list[Episode],
    refs: tuple[float, float],
    description: str,
    overwrite: bool,
) -> None:
    root = minari_datasets_path()
    final = root / identifier
    if final.exists() and not overwrite:
        raise DatasetError(
            f"dataset {identifier!r} already exists at {final}; pass --overwrite to replace it."
        )
    staging = root / f".offbench-staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(staging)
    try:
        write_minari(
            identifier,
            ENVS[env],
            episodes,
            ref_min_score=refs[0],
            ref_max_score=refs[1],
            description=description,
        )
    finally:
        if previous is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging / identifier, final)
    shutil.rmtree(staging, ignore_errors=True)


def generate_env(
    env: str,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    overwrite: bool = False,
    kinds: tuple[str, ...] = KINDS,
    log=None,
) -> list[str]:
    """Generate the datasets of one environment; returns the ids written."""
    check_env(env)
    if size <= 0:
        raise DatasetError(f"--size must be a positive number of transitions, got {size}.")
    todo = [k for k in kinds if overwrite or not exists(dataset_id(env, k))]
    if not todo:
        return []
    refs = reference_scores(env)
    episodes: dict[str, list[Episode]] = {}

    def get(kind: str) -> list[Episode]:
        if kind not in episodes:
            identifier = dataset_id(env, kind)
            if exists(identifier) and kind not in todo:
                episodes[kind] = load_episodes(identifier)
            else:
                episodes[kind] = build_base(env, kind, size, seed)
        return episodes[kind]

    written = []
    for kind in todo:
        tic = time.perf_counter()
        if kind in BASE_KINDS:
            data = get(kind)
        elif kind == "medium-expert":
            data = get("medium") + get("expert")
        else:
            good, pct = re.match(r"random-(medium|expert)-(\d+)pct", kind).groups()
            data = mix(get(good), get("random"), int(pct) / 100.0, size, seed)
        identifier = dataset_id(env, kind)
        write_atomically(identifier, env, data, refs, describe(env, kind, size, seed), overwrite)
        written.append(identifier)
        if log is not None:
            transitions = sum(len(e["actions"]) for e in data)
            log(f"{identifier}: {transitions:,} transitions in {time.perf_counter() - tic:.1f}s")
    return written


def generate(identifier: str, size: int = DEFAULT_SIZE, seed: int = 0) -> None:
    """Generate one missing dataset (and whatever it is built from) on demand."""
    env, kind = parse_id(identifier)
    generate_env(env, size=size, seed=seed, kinds=(kind,))


def quality_path(identifier: str) -> Path:
    return minari_datasets_path() / identifier / QUALITY_FILE


def read_quality(identifier: str) -> dict[str, Any] | None:
    path = quality_path(identifier)
    return json.loads(path.read_text()) if path.exists() else None


def compute_quality(env: str) -> dict[str, dict[str, Any]]:
    """TQ, SACo and return statistics of every local offbench/<env>/* dataset, stored beside each.

    SACo's bin limits come from the environment's medium-replay dataset (the paper's D4RL variant).
    """
    from offbench.datasets import quality
    from offbench.datasets.sources import load_dataset

    reference_id = dataset_id(env, "medium-replay")
    if not exists(reference_id):
        return {}
    reference = load_dataset(reference_id)
    tables = {}
    for kind in KINDS:
        identifier = dataset_id(env, kind)
        if not exists(identifier):
            continue
        data = reference if identifier == reference_id else load_dataset(identifier)
        table = quality.quality_table(data, reference, data.spec.ref_min_score, data.spec.ref_max_score)
        table["saco_reference"] = reference_id
        path = quality_path(identifier)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        temporary.write_text(json.dumps(table, indent=2))
        os.replace(temporary, path)
        tables[identifier] = table
    return tables
