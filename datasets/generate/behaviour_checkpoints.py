"""Resume checkpoints of the SAC behaviour-policy trainer: everything needed to continue a run.

A checkpoint in ``work_dir`` (``~/.cache/offbench/sac/<env>/`` by default, outside the repo) holds the
networks, targets, optimiser states, temperature, the replay buffer, RNG keys and numpy RNG state, and is
written atomically; the trainer continues from the newest readable one. Because the replay buffer is
never overwritten when ``buffer_size >= total_steps``, the final checkpoint also holds the whole training
stream (``load_replay_buffer``), which is what a medium-replay dataset needs.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from rich.console import Console

from offbench.datasets.generate import sac
from offbench.datasets.generate.policies import train_command_hint
from offbench.datasets.generate.replay_buffer import BUFFER_FIELDS, ReplayBuffer
from offbench.files import write_bytes_atomic

WORK_ROOT = Path.home() / ".cache" / "offbench" / "sac"
CHECKPOINT_FORMAT = 1
KEEP_CHECKPOINTS = 2


def default_work_dir(env: str) -> Path:
    return WORK_ROOT / env


class Progress(NamedTuple):
    """Everything a run carries from one iteration to the next, i.e. what a resume checkpoint holds."""

    state: sac.State
    buffer: ReplayBuffer
    key: jax.Array
    rng: np.random.Generator
    step: int
    pending_actions: np.ndarray


def _checkpoint_path(work_dir: Path, step: int) -> Path:
    return work_dir / f"checkpoint_{step:010d}.npz"


def checkpoint_steps(work_dir: Path) -> list[int]:
    """Steps of the complete checkpoints in ``work_dir``, newest first (temp files are ignored)."""
    return sorted((int(p.stem.split("_")[1]) for p in work_dir.glob("checkpoint_*.npz")), reverse=True)


def run_meta(env: str, seed: int, num_envs: int, cfg: sac.Config) -> dict[str, Any]:
    """The settings a checkpoint can only be resumed under."""
    return {"env": env, "seed": seed, "num_envs": num_envs, "cfg": dataclasses.asdict(cfg)}


def save_checkpoint(work_dir: Path, progress: Progress, meta: dict[str, Any]) -> Path:
    arrays: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(progress.state)[0]:
        arrays["state" + jax.tree_util.keystr(path)] = np.asarray(leaf)
    size = int(progress.buffer.size)
    for f in BUFFER_FIELDS:
        arrays[f"buffer/{f}"] = np.asarray(progress.buffer.data[f])[:size]
    arrays["buffer/ptr"] = np.asarray(progress.buffer.ptr)
    arrays["key"] = np.asarray(progress.key)
    arrays["pending_actions"] = progress.pending_actions
    full_meta = {
        **meta,
        "format": CHECKPOINT_FORMAT,
        "step": progress.step,
        "numpy_rng": progress.rng.bit_generator.state,
    }
    arrays["meta"] = np.asarray(json.dumps(full_meta))
    path = _checkpoint_path(work_dir, progress.step)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue(), durable=True)
    for old in checkpoint_steps(work_dir)[KEEP_CHECKPOINTS:]:
        _checkpoint_path(work_dir, old).unlink(missing_ok=True)
    return path


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        return json.loads(str(arrays.pop("meta"))), arrays
    except Exception as e:  # a zip, npy or JSON error all mean the same thing here: unreadable
        raise ValueError(f"resume checkpoint {path} is unreadable ({e}); delete it to fall back.") from e


def _restore(
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray],
    expected: dict[str, Any],
    fresh: Progress,
    path: Path,
) -> Progress:
    """Rebuild a run from checkpoint arrays, using a fresh run of the same settings as the shape template."""
    stored = {k: meta.get(k) for k in expected}
    if meta.get("format") != CHECKPOINT_FORMAT or stored != json.loads(json.dumps(expected)):
        raise ValueError(
            f"resume checkpoint {path} was written by a different run "
            f"({stored}, format {meta.get('format')}) "
            f"than this one ({expected}); pass another --work-dir or delete {path.parent}."
        )
    leaves, treedef = jax.tree_util.tree_flatten_with_path(fresh.state)
    restored = []
    for key_path, leaf in leaves:
        name = "state" + jax.tree_util.keystr(key_path)
        value = arrays[name]
        if value.shape != leaf.shape or value.dtype != leaf.dtype:
            raise ValueError(
                f"resume checkpoint {path}: {name} is {value.shape} {value.dtype}, expected {leaf.shape}."
            )
        restored.append(jnp.asarray(value))
    state = jax.tree_util.tree_unflatten(treedef, restored)

    size = arrays["buffer/rewards"].shape[0]
    data = {f: fresh.buffer.data[f].at[:size].set(arrays[f"buffer/{f}"]) for f in BUFFER_FIELDS}
    buffer = ReplayBuffer(data, jnp.asarray(size, jnp.int32), jnp.asarray(arrays["buffer/ptr"], jnp.int32))

    rng = np.random.default_rng()
    rng.bit_generator.state = meta["numpy_rng"]
    return Progress(
        state, buffer, jnp.asarray(arrays["key"]), rng, int(meta["step"]), arrays["pending_actions"]
    )


def latest_checkpoint(
    work_dir: Path, expected: dict[str, Any], fresh: Progress, console: Console
) -> Progress:
    """The newest readable checkpoint matching this run, or ``fresh`` when there is none."""
    for step in checkpoint_steps(work_dir):
        path = _checkpoint_path(work_dir, step)
        try:
            meta, arrays = _read_checkpoint(path)
        except ValueError as e:
            # Atomic renames make this unexpected (it needs disk corruption); an older checkpoint still works.
            console.log(f"[yellow]skipping {e}")
            continue
        return _restore(meta, arrays, expected, fresh, path)
    return fresh


def load_replay_buffer(env: str, work_dir: Path | None = None) -> dict[str, np.ndarray]:
    """The replay buffer of the newest resume checkpoint, in insertion order, plus its ``step``.

    With ``buffer_size >= total_steps`` nothing is ever overwritten, so ``buffer[:k]`` is exactly the
    data SAC had seen after k environment steps (e.g. a medium-replay dataset up to the medium snapshot).
    """
    work_dir = Path(work_dir or default_work_dir(env))
    steps = checkpoint_steps(work_dir) if work_dir.is_dir() else []
    if not steps:
        raise FileNotFoundError(
            f"no resume checkpoint in {work_dir}; train first with {train_command_hint(env)}."
        )
    meta, arrays = _read_checkpoint(_checkpoint_path(work_dir, steps[0]))
    ptr, size = int(arrays["buffer/ptr"]), arrays["buffer/rewards"].shape[0]
    order = np.roll(np.arange(size), -ptr) if size == meta["cfg"]["buffer_size"] else np.arange(size)
    return {"step": np.asarray(meta["step"]), **{f: arrays[f"buffer/{f}"][order] for f in BUFFER_FIELDS}}
