"""The committed behaviour-policy snapshots: evaluation, the manifest, and loading them back.

A snapshot is ``datasets/policies/<env>/step_<k>/actor.msgpack``: the SAC actor's parameters only, each
evaluated over 100 seeded episodes and listed in ``manifest.json``. ``designate`` marks the best snapshot
``expert`` and the one closest to 40% of its return ``medium``. ``load_policy(env, "expert")`` turns a
snapshot back into a ``BehaviourPolicy`` for the dataset generator. The trainer that writes them is
``behaviour_training``; their command line is ``policies_cli``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, NamedTuple

import flax.serialization
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console

from offbench.datasets.dataset import DatasetSpec
from offbench.datasets.evaluate import Evaluator
from offbench.datasets.generate import LOCOMOTION_ENVS, sac
from offbench.files import write_bytes_atomic, write_text_atomic

POLICIES_DIR = Path(__file__).resolve().parent.parent / "policies"
MANIFEST = "manifest.json"
ACTOR_FILE = "actor.msgpack"
# Evaluation episode i always starts from reset(seed=EVAL_SEED + i), whatever the training seed, so all
# snapshots of all runs are scored on the same 100 initial states.
EVAL_SEED = 1_000_000
# D4RL's "medium" policy reached about a third of the expert's return; offbench aims for 40% and accepts
# anything between a quarter and a half. The lower edge is below a third because SAC's return on Hopper
# jumps from ~30% to ~99% of the expert's within one 50k-step snapshot interval (1019 at step 250k, 3396 at
# 300k for seed 0), so a strict third would leave Hopper without a medium policy.
MEDIUM_FRACTION = 0.4
MEDIUM_WINDOW = (0.25, 0.5)


def train_command_hint(env: str) -> str:
    return f"`make policies` or `python -m offbench.datasets.generate.policies_cli train --env {env}`"


def env_id(env: str) -> str:
    if env not in LOCOMOTION_ENVS:
        raise ValueError(f"unknown environment {env!r}; choose one of {', '.join(LOCOMOTION_ENVS)}.")
    return LOCOMOTION_ENVS[env]


def locomotion_env(env: str) -> gym.Env:
    # The passive checker only inspects the first calls; it is skipped to keep stepping lean.
    return gym.make(env_id(env), disable_env_checker=True)


# --------------------------------------------------------------------------------------------------
# Evaluation and the manifest
# --------------------------------------------------------------------------------------------------

_policy_actions = jax.jit(sac.act, static_argnames="deterministic")


class Evaluation(NamedTuple):
    returns: np.ndarray
    lengths: np.ndarray
    sampled_returns: np.ndarray
    sampled_lengths: np.ndarray


def _consecutive_seeds(first: int, episodes: int) -> list[int]:
    return [first + i for i in range(episodes)]


def snapshot_evaluator(env: str, episodes: int = 100) -> Evaluator:
    """``episodes`` environments of ``env`` for scoring snapshots, episode i reset with EVAL_SEED + i."""
    probe = locomotion_env(env)
    observation_space, action_space = probe.observation_space, probe.action_space
    probe.close()
    spec = DatasetSpec(
        id=env_id(env),
        source="gymnasium",
        env_id=env_id(env),
        observation_dim=int(observation_space.shape[0]),
        action_dim=int(action_space.shape[0]),
        action_low=tuple(float(x) for x in action_space.low),
        action_high=tuple(float(x) for x in action_space.high),
    )
    return Evaluator(
        spec,
        seeds=[EVAL_SEED],
        episodes=episodes,
        env_factory=lambda: locomotion_env(env),
        episode_seeds=_consecutive_seeds,
    )


def evaluate_snapshot(evaluator: Evaluator, actor_params: sac.Params) -> Evaluation:
    """Both modes: deterministic (the policy's own quality) and sampled (what its dataset will hold).

    Deterministic acts with tanh of the mean; sampled draws from the tanh-Gaussian as the dataset
    generator does, policy call t using ``fold_in(PRNGKey(EVAL_SEED), t)``.
    """
    key = jax.random.PRNGKey(EVAL_SEED)

    def deterministic(observations: np.ndarray, t: int) -> jax.Array:
        return _policy_actions(actor_params, observations[0], None, deterministic=True)[None]

    def sampled(observations: np.ndarray, t: int) -> jax.Array:
        step_key = jax.random.fold_in(key, t)
        return _policy_actions(actor_params, observations[0], step_key, deterministic=False)[None]

    plain, noisy = evaluator.run(deterministic), evaluator.run(sampled)
    # EVAL_SEED is the evaluator's only seed: row 0 holds every episode.
    return Evaluation(plain.returns[0], plain.lengths[0], noisy.returns[0], noisy.lengths[0])


def designate(manifest: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``manifest`` whose ``expert`` and ``medium`` name snapshots (or are None).

    Both are chosen on ``sampled_return_mean``, the return with actions sampled from the policy: that
    is how the generator collects data, so it is the return the expert and medium datasets hold (a
    stochastic SAC policy scores below its deterministic self; Hopper's expert 2.9k vs 3.4k).
    expert: the highest such return (the earliest on ties). medium: the trained snapshot (steps > 0;
    the untrained step_0 can score in the window while the expert is still weak) closest to
    ``MEDIUM_FRACTION`` of the expert's return among those within ``MEDIUM_WINDOW`` of it; None when
    no snapshot falls in the window yet (or the expert's return is not positive).
    """
    snapshots = manifest.get("snapshots", [])
    expert = max(snapshots, key=lambda s: (s["sampled_return_mean"], -s["steps"]), default=None)
    medium = None
    if expert is not None and expert["sampled_return_mean"] > 0:
        best = expert["sampled_return_mean"]
        low, high = MEDIUM_WINDOW[0] * best, MEDIUM_WINDOW[1] * best
        candidates = [s for s in snapshots if s["steps"] > 0 and low <= s["sampled_return_mean"] <= high]
        medium = min(
            candidates,
            key=lambda s: (abs(s["sampled_return_mean"] - MEDIUM_FRACTION * best), s["steps"]),
            default=None,
        )
    return {
        **manifest,
        "expert": None if expert is None else expert["name"],
        "medium": None if medium is None else medium["name"],
    }


def read_manifest(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it with `git checkout -- {path}`.") from e


def save_snapshot(
    out_dir: Path,
    env: str,
    step: int,
    seed: int,
    actor_params: sac.Params,
    evaluation: Evaluation,
) -> dict[str, Any]:
    """Write ``step_<k>/actor.msgpack``, add its entry to the manifest and re-designate; returns the manifest.

    Snapshots use flax msgpack rather than orbax: one ~280 KB file whose bytes depend only on the
    parameters, so re-running training rewrites identical files, and git sees no churn. An orbax
    checkpoint is a directory of about a dozen files with random blob names that change on every save.
    """
    name = f"step_{step}"
    payload = flax.serialization.to_bytes(jax.device_get(actor_params))
    (out_dir / name).mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out_dir / name / ACTOR_FILE, payload, durable=True)
    actor = sac.actor_from_params(actor_params)
    entry = {
        "name": name,
        "file": f"{name}/{ACTOR_FILE}",
        "sha256": hashlib.sha256(payload).hexdigest(),
        "steps": step,
        "seed": seed,
        "env_id": env_id(env),
        "obs_dim": int(actor_params["params"]["MLP_0"]["Dense_0"]["kernel"].shape[0]),
        "act_dim": actor.action_dim,
        "hidden_dims": list(actor.hidden_dims),
        **evaluation_fields(evaluation),
    }
    manifest_path = out_dir / MANIFEST
    manifest = read_manifest(manifest_path) if manifest_path.exists() else {"env": env, "env_id": env_id(env)}
    snapshots = [s for s in manifest.get("snapshots", []) if s["name"] != name] + [entry]
    manifest = designate({**manifest, "snapshots": sorted(snapshots, key=lambda s: s["steps"])})
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n", durable=True)
    return manifest


def evaluation_fields(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "eval_episodes": len(evaluation.returns),
        "return_mean": float(np.mean(evaluation.returns)),
        "return_std": float(np.std(evaluation.returns)),
        "length_mean": float(np.mean(evaluation.lengths)),
        "sampled_return_mean": float(np.mean(evaluation.sampled_returns)),
        "sampled_return_std": float(np.std(evaluation.sampled_returns)),
        "sampled_length_mean": float(np.mean(evaluation.sampled_lengths)),
    }


def check_snapshot_dir(out_dir: Path, env: str, seed: int, cfg: sac.Config) -> None:
    """Refuse to mix snapshots of different seeds or network sizes under one manifest."""
    path = out_dir / MANIFEST
    if not path.exists():
        return
    for s in read_manifest(path).get("snapshots", []):
        if s["seed"] != seed or s["hidden_dims"] != list(cfg.hidden_dims) or s["env_id"] != env_id(env):
            raise ValueError(
                f"{path} already lists {s['name']} "
                f"(seed {s['seed']}, {s['env_id']}, hidden {s['hidden_dims']}); "
                f"this run (seed {seed}, {env_id(env)}, hidden {list(cfg.hidden_dims)}) would mix with it. "
                "Pass another --out-dir or remove that directory."
            )


def reevaluate(env: str, policies_dir: Path | None = None, episodes: int = 100, quiet: bool = False) -> None:
    """Evaluate every committed snapshot of ``env`` again, in both modes, and rewrite its manifest.

    For manifests written before the sampled-action return was recorded. Each snapshot's checksum is
    verified first; the manifest is replaced atomically once all snapshots are scored.
    """
    env_dir = Path(policies_dir or POLICIES_DIR) / env
    manifest = read_manifest(env_dir / MANIFEST)
    evaluator = snapshot_evaluator(env, episodes)
    console = Console(quiet=quiet)
    snapshots = []
    for entry in manifest.get("snapshots", []):
        evaluation = evaluate_snapshot(evaluator, _read_actor_params(env_dir, entry, env))
        snapshots.append({**entry, **evaluation_fields(evaluation)})
        console.log(
            f"{env} {entry['name']}: {np.mean(evaluation.returns):.1f} deterministic, "
            f"{np.mean(evaluation.sampled_returns):.1f} sampled"
        )
    evaluator.close()
    manifest = designate({**manifest, "snapshots": snapshots})
    write_text_atomic(env_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n", durable=True)
    console.log(f"{env}: expert={manifest['expert']} medium={manifest['medium']}")


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BehaviourPolicy:
    """A trained SAC actor, ready to label or collect data."""

    env: str
    name: str
    steps: int
    obs_dim: int
    act_dim: int
    return_mean: float
    sampled_return_mean: float
    params: sac.Params

    def actions(
        self, observations: jax.Array | np.ndarray, key: jax.Array | None, deterministic: bool = False
    ) -> jax.Array:
        """Actions in [-1, 1] for a batch ``[n, obs_dim]`` of observations.

        Stochastic (the default) samples the tanh-Gaussian as D4RL/Minari data collection did and needs
        ``key``; deterministic returns tanh(mean) and ignores it.
        """
        observations = jnp.asarray(observations, jnp.float32)
        if observations.ndim != 2 or observations.shape[1] != self.obs_dim:
            raise ValueError(f"expected observations of shape [n, {self.obs_dim}], got {observations.shape}.")
        return _policy_actions(
            self.params, observations, None if deterministic else key, deterministic=deterministic
        )


def _read_actor_params(env_dir: Path, entry: dict[str, Any], env: str) -> sac.Params:
    """The actor parameters of one manifest entry, checksum and shapes verified."""
    fix = train_command_hint(env)
    manifest_path = env_dir / MANIFEST
    path = env_dir / entry["file"]
    restore_fix = f"restore it with `git checkout -- {path}` or re-create it with {fix}"
    if not path.exists():
        raise FileNotFoundError(f"snapshot file {path} is missing; {restore_fix}.")
    payload = path.read_bytes()
    if hashlib.sha256(payload).hexdigest() != entry["sha256"]:
        raise ValueError(
            f"snapshot file {path} is corrupt (its sha256 differs from {manifest_path}); {restore_fix}."
        )
    cfg = sac.Config(hidden_dims=tuple(entry["hidden_dims"]))
    # Shapes only: nothing is initialised or compiled to learn what the file should contain.
    template = jax.eval_shape(
        lambda key: sac.init(key, entry["obs_dim"], entry["act_dim"], cfg), jax.random.PRNGKey(0)
    ).actor_params
    try:
        params = flax.serialization.from_bytes(template, payload)
    except Exception as e:  # msgpack raises several unrelated types for damaged input
        raise ValueError(f"snapshot file {path} cannot be decoded ({e}); {restore_fix}.") from e
    for (where, want), got in zip(
        jax.tree_util.tree_flatten_with_path(template)[0], jax.tree.leaves(params), strict=True
    ):
        if np.shape(got) != want.shape:
            raise ValueError(
                f"snapshot file {path}: {jax.tree_util.keystr(where)} has shape {np.shape(got)} "
                f"but the manifest "
                f"entry implies {want.shape}; {restore_fix}."
            )
    return jax.tree.map(jnp.asarray, params)


def load_policy(env: str, name: str = "expert", policies_dir: Path | None = None) -> BehaviourPolicy:
    """Load a committed snapshot: ``expert``, ``medium`` or a snapshot name such as ``step_300000``."""
    env_dir = Path(policies_dir or POLICIES_DIR) / env
    manifest_path = env_dir / MANIFEST
    fix = train_command_hint(env)
    if not manifest_path.exists():
        raise FileNotFoundError(
            f"no behaviour policies for {env}: {manifest_path} does not exist. Train them with {fix}."
        )
    manifest = read_manifest(manifest_path)
    snapshot_name = manifest.get(name, name) if name in ("expert", "medium") else name
    if snapshot_name is None:
        raise ValueError(
            f"{manifest_path} designates no {name!r} snapshot yet (medium needs a return between a quarter "
            f"and a half of the expert's); continue training with {fix}."
        )
    entries = {s["name"]: s for s in manifest.get("snapshots", [])}
    if snapshot_name not in entries:
        raise ValueError(
            f"{manifest_path} has no snapshot {snapshot_name!r} (it lists {', '.join(entries) or 'none'}); "
            f"train it with {fix}."
        )
    entry = entries[snapshot_name]
    if "sampled_return_mean" not in entry:
        raise ValueError(
            f"{manifest_path} lists no sampled-action return for {snapshot_name} (it predates them); add it "
            f"with `python -m offbench.datasets.generate.policies_cli evaluate --env {env}`."
        )
    params = _read_actor_params(env_dir, entry, env)
    return BehaviourPolicy(
        env=env,
        name=snapshot_name,
        steps=entry["steps"],
        obs_dim=entry["obs_dim"],
        act_dim=entry["act_dim"],
        return_mean=entry["return_mean"],
        sampled_return_mean=entry["sampled_return_mean"],
        params=params,
    )
