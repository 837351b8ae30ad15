"""Where a row came from: the code version, the library versions and the device.

The code version is what a sweep compares before it mixes rows in one directory and what a checkpoint
must match before it resumes: the git commit, plus a digest of the uncommitted changes when the tree
is dirty (two different dirty states are two versions). Without a git checkout rooted at the package (an
installed wheel) it is the package version.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# The libraries whose versions can change what a row holds: the engine, the networks and optimisers,
# the environments that evaluate, and the dataset reader.
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "gymnasium", "mujoco", "minari")
# What the code version covers: the package's code and its install metadata. Results, tests, notebooks and
# docs are left out, so a sweep writing new result files into a tracked folder does not change the version
# of the code that writes them.
CODE_PATHS = ("__init__.py", "algorithms", "datasets", "bench", "pyproject.toml")
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=10, check=True
    ).stdout


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


@cache
def code_version() -> dict[str, Any]:
    """``{"code_version", "git_sha", "git_dirty", "offbench_version"}`` of the running code.

    ``code_version`` is the commit's first 12 hex digits, with ``+dirty.<digest>`` of ``git diff HEAD``
    and the untracked files' names and contents when the code (``CODE_PATHS``) has uncommitted changes.
    """
    offbench_version = package_version("offbench")
    installed = {
        "code_version": f"offbench-{offbench_version}",
        "git_sha": None,
        "git_dirty": None,
        "offbench_version": offbench_version,
    }
    try:
        toplevel = Path(_git("rev-parse", "--show-toplevel").strip()).resolve()
        # An installed package inside some other repository (a virtual environment in a checkout, a home
        # folder under git) is not that repository's code: only a checkout rooted at the package counts.
        if toplevel != PACKAGE_ROOT:
            return installed
        sha = _git("rev-parse", "HEAD").strip()
        diff = _git("diff", "HEAD", "--binary", "--", *CODE_PATHS)
        untracked = _git("ls-files", "--others", "--exclude-standard", "-z", "--", *CODE_PATHS).split("\0")
    except (OSError, subprocess.SubprocessError):
        return installed
    digest = hashlib.sha256(diff.encode())
    for name in sorted(filter(None, untracked)):
        digest.update(name.encode())
        try:
            digest.update((PACKAGE_ROOT / name).read_bytes())
        except OSError:
            continue  # removed since git listed it
    dirty = bool(diff) or any(untracked)
    return {
        "code_version": sha[:12] + (f"+dirty.{digest.hexdigest()[:8]}" if dirty else ""),
        "git_sha": sha,
        "git_dirty": dirty,
        "offbench_version": offbench_version,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    """Cores this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@cache
def device() -> dict[str, Any]:
    """The device JAX trains on: ``device`` reads e.g. "cpu: AMD EPYC 7B13 (2 cores)" or
    "gpu: NVIDIA H200 x1"; the host CPU is recorded too, since evaluation runs there."""
    import jax  # here: readers of results (the report, notebooks) need no jax

    devices = jax.devices()
    platform_name = devices[0].platform
    if platform_name == "cpu":
        model, count = cpu_model(), cpu_cores()
        described = f"cpu: {model} ({count} cores)"
    else:
        model, count = devices[0].device_kind, len(devices)
        described = f"{platform_name}: {model} x{count}"
    return {
        "device": described,
        "device_platform": platform_name,
        "device_model": model,
        "device_count": count,
        "host_cpu": cpu_model(),
        "host_cpu_cores": cpu_cores(),
    }


@cache
def libraries() -> dict[str, str]:
    return {"python_version": platform.python_version()} | {
        f"{name}_version": package_version(name) for name in LIBRARIES
    }


def provenance() -> dict[str, Any]:
    """Everything above, as the provenance columns of a results row."""
    return {**code_version(), **libraries(), **device()}
