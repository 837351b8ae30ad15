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


@cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


# The x86-64 micro-architecture levels (the psABI's), each by the /proc/cpuinfo flags it adds to the one
# below. They decide which vector code XLA, NumPy and BLAS pick at run time.
X86_64_LEVELS = (
    ("x86-64-v2", {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"}),
    ("x86-64-v3", {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"}),
    ("x86-64-v4", {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}),
)


def cpu_isa() -> str:
    """The instruction-set level: ``x86-64-v4`` (AVX-512), ``-v3`` (AVX2, FMA), ``-v2``, ``x86-64``; on
    ARM ``aarch64`` plus ``+sve``/``+sve2`` where present; else the machine name."""
    machine = platform.machine().lower()
    flags = set((_cpuinfo().get("flags") or _cpuinfo().get("Features") or "").split())
    if machine in ("x86_64", "amd64"):
        level = "x86-64"
        for name, required in X86_64_LEVELS:
            if not required <= flags:
                break
            level = name
        return level
    if machine in ("aarch64", "arm64"):
        return "aarch64" + "".join(f"+{f}" for f in ("sve", "sve2") if f in flags)
    return machine or "unknown"


def cpu_id() -> str:
    """Vendor, family, model and stepping (x86: ``AuthenticAMD family 25 model 17 stepping 1``; ARM:
    implementer and part), which name the micro-architecture where the model name does not (a cloud
    VM's ``AMD EPYC``)."""
    info = _cpuinfo()
    if "vendor_id" in info:
        return (
            f"{info['vendor_id']} family {info.get('cpu family', '?')} model {info.get('model', '?')} "
            f"stepping {info.get('stepping', '?')}"
        )
    if "CPU implementer" in info:
        return f"arm implementer {info['CPU implementer']} part {info.get('CPU part', '?')}"
    return platform.processor() or platform.machine() or "unknown"


def cpu_cores() -> int:
    """Cores this process may run on (a container's share, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def xla_cpu_threads() -> int:
    """The size of XLA's CPU intra-op thread pool: JAX's CPU client takes it from ``NPROC`` when that is set
    (the sweep's workers set it, see :func:`offbench.bench.workers.thread_environment`), else the cores."""
    try:
        return max(1, int(os.environ["NPROC"]))
    except (KeyError, ValueError):
        return cpu_cores()


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
        "host_cpu_id": cpu_id(),
        "host_cpu_isa": cpu_isa(),
        "host_cpu_cores": cpu_cores(),
        "xla_cpu_threads": xla_cpu_threads(),
    }


@cache
def libraries() -> dict[str, str]:
    return {"python_version": platform.python_version()} | {
        f"{name}_version": package_version(name) for name in LIBRARIES
    }


# What a generated dataset's arrays can depend on besides its recipe: the simulator, the libraries that
# step it or compute the behaviour policy, the code, and the CPU (see ``generation_facts``).
GENERATION_LIBRARIES = (
    "mujoco",
    "gymnasium",
    "gymnasium-robotics",
    "numpy",
    "jax",
    "jaxlib",
    "flax",
    "minari",
)


def generation_facts() -> dict[str, Any]:
    """What a dataset generated now is made with, recorded beside it (``offbench_generation.json``)."""
    return {
        "code_version": code_version()["code_version"],
        "offbench_version": code_version()["offbench_version"],
        "python": platform.python_version(),
        **{name: package_version(name) for name in GENERATION_LIBRARIES},
        "cpu": f"{cpu_model()} ({cpu_id()})",
        "cpu_isa": cpu_isa(),
    }


def provenance() -> dict[str, Any]:
    """Everything above, as the provenance columns of a results row."""
    return {**code_version(), **libraries(), **device()}
