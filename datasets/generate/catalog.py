"""offbench's own datasets, generated locally from committed behaviour policies (no internet).

Ids: ``offbench/<env>/<kind>-v0`` with env in hopper, halfcheetah, walker2d and kind one of
- ``random``: a uniform-random policy;
- ``medium`` / ``expert``: the designated SAC snapshots of ``datasets/policies/<env>/manifest.json``,
  actions *sampled* from the stochastic policy, as D4RL and Minari collected theirs;
- ``medium-replay``: equal shares from a uniform-random policy and every ladder snapshot up to the
  medium one, standing in for D4RL's replay buffer (offbench commits snapshots, not buffers);
- ``medium-expert``: the medium and expert datasets concatenated;
- ``random-{medium,expert}-{1,5,10,50}pct``: Hong et al.'s mixed sets: whole trajectories of the good
  dataset drawn with replacement until they make up the fraction of ``size`` transitions (the last one
  may overshoot by less than a trajectory), topped up with whole random trajectories to the size.

Base datasets hold whole episodes only: at least ``size`` transitions, about one episode more (every
episode started is kept, so that short episodes are not favoured; see ``rollout.collect_episodes``; a
size below 16 episodes still gets the 16 that run in parallel).
A dataset built from others (medium-expert, the mixed sets) is built from the *stored* base datasets;
missing bases are generated and stored first, so ``generate(id)`` of a single mixed id also writes the
random and medium/expert sets it is made of, and later mixed ids reuse them.

Every dataset of an environment shares its reference scores: ``ref_min_score`` = mean return of the
uniform-random policy over 100 episodes (a fixed seed, independent of the dataset seed),
``ref_max_score`` = the expert's 100-episode mean return from the manifest. When some datasets of the
environment already exist and are kept, new ones take the existing datasets' reference scores, so the
family stays consistent; regenerate the whole family with ``overwrite`` to refresh them after the expert
changed.

OGBench play data (``offbench/ogbench/...``) is made by :mod:`ogbench_play` from OGBench's scripted
oracle; :func:`generate` and :func:`generatable_ids` cover it too.

Same seed, same arrays: every random draw derives from (seed, kind), reset seeds included. All policies a
generation needs are loaded (and their checksums verified) before any environment is stepped, and each
dataset is written into a temporary Minari root and moved into place only when complete, so a failed or
interrupted generation leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from offbench.datasets.dataset import DatasetError
from offbench.datasets.generate import LOCOMOTION_ENVS
from offbench.datasets.generate.rollout import Episode, collect_episodes
from offbench.datasets.generate.storage import (
    check_size,
    exists,
    kind_seed,
    not_generatable,
    remove_stale_staging,
    write_atomically,
)
from offbench.datasets.minari_data import minari_datasets_path
from offbench.datasets.quality import read_quality
from offbench.hints import suggest

ENVS = LOCOMOTION_ENVS
ACTION_DIMS = {"hopper": 3, "halfcheetah": 6, "walker2d": 6}
BASE_KINDS = ("random", "medium", "expert", "medium-replay")
MIXED_KINDS = tuple(f"random-{good}-{pct}pct" for good in ("medium", "expert") for pct in (1, 5, 10, 50))
KINDS = (*BASE_KINDS, "medium-expert", *MIXED_KINDS)
DEFAULT_SIZE = 100_000
REFERENCE_EPISODES = 100
REFERENCE_SEED = 123
PARALLEL_MIN_SIZE = 20_000
ID_PATTERN = re.compile(r"^offbench/([a-z0-9]+)/([a-z0-9\-]+)-v0$")
MIXED_PATTERN = re.compile(r"^random-(medium|expert)-(\d+)pct$")


def dataset_id(env: str, kind: str) -> str:
    return f"offbench/{env}/{kind}-v0"


def generatable_ids() -> list[str]:
    """Every id :func:`generate` can make: the MuJoCo catalog, OGBench play data (``ogbench_play``) and
    D4RL-style PointMaze data (``pointmaze``)."""
    from offbench.datasets.generate import ogbench_play, pointmaze

    return (
        [dataset_id(env, kind) for env in ENVS for kind in KINDS]
        + ogbench_play.generatable_ids()
        + pointmaze.generatable_ids()
    )


def split_id(identifier: str) -> tuple[str, str] | None:
    """(env, kind) of an id of this catalog, or None for any other id."""
    match = ID_PATTERN.match(identifier)
    if not match or match.group(1) not in ENVS or match.group(2) not in KINDS:
        return None
    return match.group(1), match.group(2)


def parse_id(identifier: str) -> tuple[str, str]:
    parts = split_id(identifier)
    if parts is None:
        raise not_generatable(identifier, generatable_ids())
    return parts


def check_env(env: str) -> str:
    if env not in ENVS:
        raise DatasetError(
            f"unknown environment {env!r}.{suggest(env, list(ENVS))} Choose from {', '.join(ENVS)}."
        )
    return ENVS[env]


def dependencies(kind: str) -> tuple[str, ...]:
    """The base kinds a kind is built from (empty for a base kind)."""
    if kind in BASE_KINDS:
        return ()
    if kind == "medium-expert":
        return ("medium", "expert")
    return ("random", MIXED_PATTERN.match(kind).group(1))


# --------------------------------------------------------------------------------------------------
# Behaviour policies


def policies_root(policies_dir: Path | str | None = None) -> Path:
    from offbench.datasets.generate import policies

    # Read at call time, so tests (and callers) can point the module's POLICIES_DIR elsewhere.
    return Path(policies_dir) if policies_dir is not None else Path(policies.POLICIES_DIR)


def _policy_error(error: Exception) -> DatasetError:
    return DatasetError(f"cannot load the behaviour policies: {error}")


@dataclasses.dataclass(frozen=True)
class Policies:
    """The snapshots one generation uses, loaded and checksum-verified before anything is collected."""

    expert: Any  # policies.BehaviourPolicy
    medium: Any | None
    ladder: tuple[Any, ...]  # snapshots up to the medium one, by training steps (for medium-replay)


def load_policies(env: str, need_medium: bool, policies_dir: Path | str | None = None) -> Policies:
    """Resolve ``expert`` / ``medium`` in the manifest once and load every snapshot a generation needs.

    Raises a DatasetError naming ``make policies`` when the manifest is missing or designates no medium
    snapshot yet, and one naming the file when a snapshot is missing or corrupt.
    """
    from offbench.datasets.generate import policies

    root = policies_root(policies_dir)
    manifest_path = root / env / policies.MANIFEST
    hint = policies.train_command_hint(env)
    if not manifest_path.exists():
        raise DatasetError(
            f"no behaviour policies for {env}: {manifest_path} does not exist. Train them with {hint}."
        )
    try:
        manifest = policies.read_manifest(manifest_path)
    except ValueError as error:
        raise _policy_error(error) from error
    snapshots = {s["name"]: s for s in manifest.get("snapshots", [])}
    for role in ("expert", "medium") if need_medium else ("expert",):
        if manifest.get(role) is None:
            why = (
                "its return must lie between a quarter and a half of the expert's"
                if role == "medium"
                else "no snapshot has been evaluated"
            )
            raise DatasetError(
                f"{manifest_path} designates no {role} policy yet ({why}); the {role} datasets of {env} "
                f"cannot be generated. Train further with {hint}."
            )

    def load(name: str):
        try:
            return policies.load_policy(env, name, policies_dir=root)
        except (ValueError, FileNotFoundError, KeyError) as error:
            raise _policy_error(error) from error

    expert = load(manifest["expert"])
    if not need_medium:
        return Policies(expert, None, ())
    medium_steps = snapshots[manifest["medium"]]["steps"]
    ladder_names = [
        s["name"] for s in sorted(snapshots.values(), key=lambda s: s["steps"]) if s["steps"] <= medium_steps
    ]
    ladder = tuple(expert if name == expert.name else load(name) for name in ladder_names)
    medium = next(p for p in ladder if p.name == manifest["medium"])
    return Policies(expert, medium, ladder)


def random_policy(env: str, seed: int) -> Callable[[np.ndarray, int], np.ndarray]:
    act_dim = ACTION_DIMS[env]
    rng = np.random.default_rng(seed)
    return lambda observations, step: rng.uniform(-1.0, 1.0, (len(observations), act_dim))


@jax.jit
def _sample_actions_float64(params, observations, base_key, step):
    from offbench.datasets.generate import sac

    return sac.act(params, observations, jax.random.fold_in(base_key, step), deterministic=False)


def snapshot_policy(policy, seed: int) -> Callable[[np.ndarray, int], np.ndarray]:
    """Sampled actions of a loaded snapshot; one jitted call a step (fold-in, network and sampling).

    The network and the sampling run in float64 and the actions are rounded to float32 at the end, so
    the actions do not depend on the machine. In float32 they did: XLA compiles the network to the
    vector instructions of the CPU it runs on (AVX-512, AVX2, SSE4.2), whose rounding differs in the
    last bits, and MuJoCo amplifies that into other trajectories (the same seed gave 100,349
    transitions on one machine and 100,175 on another). The float64 results differ between
    instruction sets by about 1e-16, which rounding to float32 absorbs unless a value lies that close
    to a float32 rounding boundary (about one number in 1e8).
    """
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float64), policy.params)
        base = jax.random.key(seed)

    def actions(observations: np.ndarray, step: int) -> np.ndarray:
        with jax.enable_x64(True):
            sampled = _sample_actions_float64(params64, np.asarray(observations, np.float64), base, step)
            return np.asarray(sampled).astype(np.float32)

    return actions


# --------------------------------------------------------------------------------------------------
# Reference scores


def collect_episodes_count(env: str, policy, count: int, seed: int) -> list[Episode]:
    """Exactly ``count`` whole episodes (one environment per episode, in lockstep)."""
    return collect_episodes(
        ENVS[env], steps=10**12, policy=policy, seed=seed, num_envs=count, one_episode_each=True
    )


def random_reference(env: str, episodes: int = REFERENCE_EPISODES) -> float:
    """Mean return of the uniform-random policy over ``episodes`` episodes (a fixed seed)."""
    if episodes <= 0:
        raise ValueError(f"reference episodes must be positive, got {episodes}.")
    runs = collect_episodes_count(env, random_policy(env, REFERENCE_SEED), episodes, REFERENCE_SEED)
    return float(np.mean([ep["rewards"].sum(dtype=np.float64) for ep in runs]))


def stored_references(identifier: str) -> tuple[float, float] | None:
    path = minari_datasets_path() / identifier / "data" / "metadata.json"
    try:
        metadata = json.loads(path.read_text())
        return float(metadata["ref_min_score"]), float(metadata["ref_max_score"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------------------------------
# Building each kind


def build_base(env: str, kind: str, size: int, seed: int, policies: Policies) -> list[Episode]:
    env_id = ENVS[env]
    if kind == "random":
        part = kind_seed(seed, kind)
        return collect_episodes(env_id, size, random_policy(env, part), part)
    if kind in ("medium", "expert"):
        part = kind_seed(seed, kind)
        return collect_episodes(env_id, size, snapshot_policy(getattr(policies, kind), part), part)
    if kind != "medium-replay":
        raise ValueError(f"{kind!r} is not a base kind ({', '.join(BASE_KINDS)}).")
    share = max(1, size // (len(policies.ladder) + 1))
    part = kind_seed(seed, kind, 0)
    episodes = collect_episodes(env_id, share, random_policy(env, part), part)
    for index, snapshot in enumerate(policies.ladder, start=1):
        part = kind_seed(seed, kind, index)
        episodes += collect_episodes(env_id, share, snapshot_policy(snapshot, part), part)
    return episodes


def collect_in_parallel(
    env: str, kinds: tuple[str, ...], size: int, seed: int, policies: Policies, workers: int
) -> dict[str, list[Episode]]:
    """``build_base`` of several kinds in ``workers`` fresh (spawned) processes; the slowest first."""
    import concurrent.futures
    import multiprocessing

    order = sorted(kinds, key=lambda k: ("medium-replay", "expert", "medium", "random").index(k))
    context = multiprocessing.get_context("spawn")  # JAX is not fork-safe
    try:
        with concurrent.futures.ProcessPoolExecutor(min(workers, len(kinds)), mp_context=context) as pool:
            futures = {kind: pool.submit(build_base, env, kind, size, seed, policies) for kind in order}
            return {kind: futures[kind].result() for kind in kinds}
    except concurrent.futures.process.BrokenProcessPool as error:
        # e.g. a script without an ``if __name__ == "__main__":`` guard, which spawned processes re-run
        warnings.warn(f"parallel collection failed ({error}); collecting in this process.", stacklevel=2)
        return {kind: build_base(env, kind, size, seed, policies) for kind in kinds}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def mix(good: list[Episode], random: list[Episode], fraction: float, size: int, seed: int) -> list[Episode]:
    """Whole ``good`` episodes drawn with replacement until they hold ``fraction * size`` transitions,
    then whole ``random`` episodes until the total reaches ``size``. Good transitions end within one
    good episode above ``fraction * size`` and the total within one random episode above ``size``.

    With replacement, as Hong et al.'s ``gen_mixed_datasets.py`` draws: since the random base holds
    about ``size`` transitions, about a third of the random episodes appear more than once (as in the
    published files, drawn from the 1M-transition D4RL random set), which is why a mixed set's SACo is
    below the random set's."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the good fraction must lie strictly between 0 and 1, got {fraction}.")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}.")
    if not good or not random:
        raise ValueError("mixing needs at least one good and one random episode.")
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
            "observations": np.asarray(ep.observations, np.float32),
            "actions": np.asarray(ep.actions, np.float32),
            "rewards": np.asarray(ep.rewards, np.float32),
            "terminations": np.asarray(ep.terminations),
            "truncations": np.asarray(ep.truncations),
        }
        for ep in data.iterate_episodes()
    ]


def describe(env: str, kind: str, size: int, seed: int, policies: Policies, refs: tuple[float, float]) -> str:
    sources = {
        "random": "a uniform-random policy",
        "medium": f"the medium SAC snapshot {policies.medium.name if policies.medium else '?'}",
        "expert": f"the expert SAC snapshot {policies.expert.name}",
        "medium-replay": "equal shares of a uniform-random policy and the snapshots "
        + ", ".join(p.name for p in policies.ladder),
        "medium-expert": f"offbench/{env}/medium-v0 followed by offbench/{env}/expert-v0",
    }
    if kind in sources:
        source = sources[kind]
    else:
        good, pct = MIXED_PATTERN.match(kind).groups()
        source = (
            f"whole episodes of offbench/{env}/{good}-v0 drawn with replacement up to {pct}% of {size:,} "
            f"transitions, topped up with whole episodes of offbench/{env}/random-v0"
        )
    return (
        f"offbench-generated {kind} data for {ENVS[env]}: whole episodes, about {size:,} transitions per "
        f"base dataset, from {source}; SAC actions sampled from the stochastic policy; seed {seed}. "
        f"ref_min_score {refs[0]:.2f} = uniform-random mean return, ref_max_score {refs[1]:.2f} = the "
        f"expert's manifest mean return. Recipe: offbench.datasets.generate.catalog."
    )


# --------------------------------------------------------------------------------------------------
# Writing


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one ``generate_env`` call will do, decided (and validated) before anything is collected."""

    env: str
    size: int
    todo: tuple[str, ...]  # kinds to write, bases first
    built: tuple[str, ...]  # base kinds collected from a policy (the others are loaded from disk)
    policies: Policies


def plan_generation(
    env: str,
    size: int = DEFAULT_SIZE,
    overwrite: bool = False,
    kinds: tuple[str, ...] = KINDS,
    policies_dir: Path | str | None = None,
) -> Plan:
    """Validate a generation and load its policies; raises DatasetError with the fix for an unknown
    environment or kind, a size <= 0, a requested dataset that already exists (unless ``overwrite``),
    and missing, undesignated or corrupt behaviour policies."""
    check_env(env)
    size = check_size(size)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise DatasetError(
            f"unknown dataset kind(s) {', '.join(map(repr, unknown))}.{suggest(unknown[0], KINDS)} "
            f"Choose from {', '.join(KINDS)}."
        )
    involved = {dataset_id(env, k) for kind in kinds for k in (kind, *dependencies(kind))}
    root = minari_datasets_path()
    broken = sorted(i for i in involved if (root / i).exists() and not exists(i))
    if broken and not overwrite:
        raise DatasetError(
            f"{', '.join(str(root / i) for i in broken)} hold(s) no complete Minari dataset (interrupted or "
            "damaged); delete it, or pass --overwrite (overwrite=True) to regenerate it."
        )
    present = [dataset_id(env, k) for k in kinds if exists(dataset_id(env, k))]
    if present and not overwrite:
        raise DatasetError(
            f"{len(present)} dataset(s) already exist under {minari_datasets_path()}: {', '.join(present)}. "
            "Pass --missing-only to keep them and generate the missing ones, --overwrite (overwrite=True) to "
            "replace them, or delete them first."
        )
    requested = set(kinds)
    missing_bases = {
        base
        for kind in requested
        for base in dependencies(kind)
        if base not in requested and not exists(dataset_id(env, base))
    }
    todo = tuple(k for k in KINDS if k in requested | missing_bases)  # bases first, in catalog order
    built = tuple(k for k in todo if k in BASE_KINDS)
    # The expert is always loaded: its manifest return is ref_max_score. The medium one (and the ladder up
    # to it) only when a dataset is collected from it.
    need_medium = bool({"medium", "medium-replay"} & set(built))
    policies = load_policies(env, need_medium=need_medium, policies_dir=policies_dir)
    return Plan(env, size, todo, built, policies)


def generate_env(
    env: str,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    overwrite: bool = False,
    kinds: tuple[str, ...] = KINDS,
    log: Callable[[str], Any] | None = None,
    policies_dir: Path | str | None = None,
    reference_episodes: int = REFERENCE_EPISODES,
    quality: bool = False,
    workers: int | None = None,
) -> list[str]:
    """Generate the datasets of one environment; returns the ids written, in order.

    ``kinds`` are generated together with the base datasets they are built from that do not exist yet.
    Everything :func:`plan_generation` checks is checked before any environment is stepped. With
    ``quality`` the TQ/SACo metrics of what was written are stored too (:func:`update_quality`), computed
    from the episodes still in memory rather than read back.

    The base datasets to collect (up to four) are collected by ``workers`` processes side by side
    (default: one per CPU core, and a single process below :data:`PARALLEL_MIN_SIZE` transitions, where
    starting a process costs more than it saves); the arrays are the same for any number of workers.
    """
    plan = plan_generation(env, size, overwrite, kinds, policies_dir)
    todo, built, policies = plan.todo, plan.built, plan.policies
    size = plan.size
    remove_stale_staging()
    kept = [dataset_id(env, k) for k in KINDS if k not in todo and exists(dataset_id(env, k))]
    refs = next((r for r in map(stored_references, kept) if r is not None), None)
    if refs is None:
        refs = random_reference(env, reference_episodes), float(policies.expert.sampled_return_mean)

    if workers is None:
        workers = available_cores() if size >= PARALLEL_MIN_SIZE else 1
    episodes: dict[str, list[Episode]] = {}
    if workers > 1 and len(built) > 1:
        tic = time.perf_counter()
        episodes.update(collect_in_parallel(env, built, size, seed, policies, workers))
        if log is not None:
            log(f"collected {', '.join(built)} in {time.perf_counter() - tic:.1f}s ({workers} processes)")

    def get(kind: str) -> list[Episode]:
        if kind not in episodes:
            if kind in built:
                episodes[kind] = build_base(env, kind, size, seed, policies)
            else:
                episodes[kind] = load_episodes(dataset_id(env, kind))
        return episodes[kind]

    written: dict[str, list[Episode]] = {}
    for kind in todo:
        tic = time.perf_counter()
        if kind in BASE_KINDS:
            data = get(kind)
        elif kind == "medium-expert":
            data = get("medium") + get("expert")
        else:
            good, pct = MIXED_PATTERN.match(kind).groups()
            data = mix(get(good), get("random"), int(pct) / 100.0, size, kind_seed(seed, kind))
        identifier = dataset_id(env, kind)
        description = describe(env, kind, size, seed, policies, refs)
        recipe = {"generator": "offbench.datasets.generate.catalog", "kind": kind, "size": size, "seed": seed}
        write_atomically(identifier, ENVS[env], data, refs, description, overwrite, recipe)
        written[identifier] = data
        if log is not None:
            transitions = sum(len(e["actions"]) for e in data)
            log(f"{identifier}: {transitions:,} transitions in {time.perf_counter() - tic:.1f}s")
    if quality:
        tic = time.perf_counter()
        tables = update_quality(env, list(written), episodes=written)
        if log is not None and tables:
            log(f"quality metrics of {len(tables)} datasets in {time.perf_counter() - tic:.1f}s")
    return list(written)


def generate(
    identifier: str,
    size: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
    policies_dir: Path | str | None = None,
    reference_episodes: int | None = None,
) -> list[str]:
    """Make sure one dataset exists, generating it on demand (``provision.ensure_datasets``), with the
    base datasets it is built from that are missing, and store the quality metrics of what was written.

    Returns the ids written: ``[]`` when the dataset already exists and ``overwrite`` is False (a sweep
    asking for a mixed id and then for its random base finds the base written by the first request).
    ``size`` and ``reference_episodes`` default to :data:`DEFAULT_SIZE` and :data:`REFERENCE_EPISODES`.
    PointMaze ids (``offbench/pointmaze/...``) go to :func:`pointmaze.generate_maze`; OGBench play ids
    (``offbench/ogbench/...``) go to :func:`ogbench_play.generate_play`, which uses
    neither behaviour policies nor reference episodes.
    """
    from offbench.datasets.generate import ogbench_play, pointmaze

    if identifier.startswith(pointmaze.NAMESPACE):
        maze, reward = pointmaze.parse_id(identifier)
        if exists(identifier) and not overwrite:
            return []
        return pointmaze.generate_maze(
            maze,
            rewards=(reward,),
            size=pointmaze.DEFAULT_SIZE if size is None else size,
            seed=seed,
            overwrite=overwrite,
            reference_episodes=pointmaze.REFERENCE_EPISODES
            if reference_episodes is None
            else reference_episodes,
        )
    if identifier.startswith(ogbench_play.NAMESPACE):
        env, task = ogbench_play.parse_id(identifier)
        if exists(identifier) and not overwrite:
            return []
        size = ogbench_play.DEFAULT_SIZE if size is None else size
        return ogbench_play.generate_play(env, tasks=(task,), size=size, seed=seed, overwrite=overwrite)
    env, kind = parse_id(identifier)
    if exists(identifier) and not overwrite:
        return []
    # SACo's bin limits come from the environment's medium-replay set: generate it too when it is missing,
    # so that every dataset offbench generates has its TQ and SACo, whatever else of its family exists.
    reference = "medium-replay"
    kinds = (kind,) if kind == reference or exists(dataset_id(env, reference)) else (kind, reference)
    return generate_env(
        env,
        size=DEFAULT_SIZE if size is None else size,
        seed=seed,
        overwrite=overwrite,
        kinds=kinds,
        policies_dir=policies_dir,
        reference_episodes=REFERENCE_EPISODES if reference_episodes is None else reference_episodes,
        quality=True,
    )


# --------------------------------------------------------------------------------------------------
# Quality metrics, stored beside each dataset


@functools.cache
def action_space(env: str):
    from offbench.datasets.generate.rollout import make_envs

    return make_envs(ENVS[env], 1)[0].action_space


def episodes_dataset(identifier: str, episodes: list[Episode]):
    """The Dataset ``load_dataset(identifier)`` returns, built from the episodes just written instead of
    read back: the same arrays, and a spec with what the quality metrics read (dims, reference scores)."""
    from offbench.datasets.dataset import DatasetSpec, from_episodes

    env, _ = parse_id(identifier)
    refs = stored_references(identifier)
    space = action_space(env)
    spec = DatasetSpec(
        id=identifier,
        source="minari",
        env_id=ENVS[env],
        observation_dim=int(episodes[0]["observations"].shape[1]),
        action_dim=int(space.shape[0]),
        action_low=tuple(float(x) for x in space.low),
        action_high=tuple(float(x) for x in space.high),
        ref_min_score=None if refs is None else refs[0],
        ref_max_score=None if refs is None else refs[1],
        ref_source=None if refs is None else "minari-metadata",
    )
    return from_episodes(spec, episodes)


def compute_quality(
    env: str, identifiers: list[str] | None = None, episodes: dict[str, list[Episode]] | None = None
) -> dict[str, dict[str, Any]]:
    """TQ, SACo and return statistics of the local offbench/<env>/* datasets, stored beside each.

    ``identifiers`` limits the work to those ids (default: every local dataset of ``env``); ``episodes``
    holds episodes of datasets just written, used instead of reading them back. SACo's bin limits come
    from the environment's medium-replay dataset (the paper's D4RL variant); without one nothing is
    computed and ``{}`` is returned.
    """
    from offbench.datasets import quality
    from offbench.datasets.sources import load_dataset

    check_env(env)
    episodes = episodes or {}

    def load(identifier: str):
        if identifier in episodes:
            return episodes_dataset(identifier, episodes[identifier])
        return load_dataset(identifier)

    reference_id = dataset_id(env, "medium-replay")
    if not exists(reference_id):
        return {}
    reference = load(reference_id)
    wanted = None if identifiers is None else set(identifiers)
    tables = {}
    for kind in KINDS:
        identifier = dataset_id(env, kind)
        if (wanted is not None and identifier not in wanted) or not exists(identifier):
            continue
        data = reference if identifier == reference_id else load(identifier)
        table = quality.quality_table(data, reference, data.spec.ref_min_score, data.spec.ref_max_score)
        quality.write_quality(identifier, table)
        tables[identifier] = table
    return tables


def check_recipe(identifier: str) -> None:
    """Refuse a local offbench/<env>/* dataset that an older offbench generated: one without a generation
    record (``storage.GENERATION_FILE``) was collected with the behaviour policy computed in float32,
    whose actions depend on the CPU's vector instructions, so it is not the data this name means now."""
    from offbench.datasets.generate.storage import read_generation_record

    parts = split_id(identifier)
    if parts is None or not exists(identifier):
        return
    if read_generation_record(identifier) is None:
        folder = minari_datasets_path() / "offbench" / parts[0]
        raise DatasetError(
            f"{identifier} under {minari_datasets_path()} was generated by an older offbench, whose "
            "behaviour policies made other data on other CPUs; it is not the dataset this name means now. "
            f"Delete {folder} (`rm -r {folder}`) and it is generated again on first use."
        )


def complete_quality(identifier: str) -> bool:
    """Compute the quality metrics of a generated locomotion dataset that lacks them (a generation killed
    between moving the dataset into place and writing them, or one generated before every generation
    brought its SACo reference). A missing SACo reference (the environment's medium-replay set) is
    generated first, with the size and seed recorded for this dataset. Returns whether they were
    written now."""
    from offbench.datasets.generate.storage import read_generation_record

    parts = split_id(identifier)
    if parts is None:
        return False  # not a locomotion dataset offbench generates
    if not exists(identifier) or read_quality(identifier) is not None:
        return False
    env = parts[0]
    if not exists(dataset_id(env, "medium-replay")):
        record = read_generation_record(identifier) or {}
        generate_env(
            env,
            size=int(record.get("size", DEFAULT_SIZE)),
            seed=int(record.get("seed", 0)),
            kinds=("medium-replay",),
            quality=True,  # every dataset of env, since the reference is among those written
        )
        return read_quality(identifier) is not None
    return identifier in compute_quality(env, [identifier])


def update_quality(
    env: str, written: list[str], episodes: dict[str, list[Episode]] | None = None
) -> dict[str, dict[str, Any]]:
    """Quality metrics after a generation: all datasets of ``env`` when its SACo reference (medium-replay)
    was among those written, since every SACo value depends on it; otherwise only the ones written."""
    if not written:
        return {}
    if dataset_id(env, "medium-replay") in written:
        return compute_quality(env, episodes=episodes)
    return compute_quality(env, written, episodes=episodes)
