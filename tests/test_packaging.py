"""The package as pip users get it: a build with no warning of the build backend, a wheel and sdist that
hold the code, the suites and the behaviour policies, metadata that twine accepts, and (slow) the wheel
installed into a fresh virtual environment and used in a directory with no checkout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

REPOSITORY = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
# What a source tree holds that is no part of the package or its sdist: a build must not depend on them.
NOT_SOURCE = (".git", ".venv", "build", "dist", "runs", "results", "notebooks", "*.egg-info", "__pycache__")
NOT_SOURCE += (".pytest_cache", ".ruff_cache")


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist, and the wheel built from it, of a copy of the source tree, built by the virtual
    environment's setuptools (the range [build-system] allows) with every warning turned into an error: a
    deprecation or a data folder setuptools does not know is a failed build, not a line in a log."""
    source = tmp_path_factory.mktemp("source") / "offbench"
    shutil.copytree(REPOSITORY, source, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    out = tmp_path_factory.mktemp("dist")
    built = run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert built.returncode == 0, (
        f"the build failed or warned:\n{built.stdout[-6000:]}\n{built.stderr[-6000:]}"
    )
    return out


def wheel_of(dist: Path) -> Path:
    return dist / f"offbench-{VERSION}-py3-none-any.whl"


def sdist_of(dist: Path) -> Path:
    return dist / f"offbench-{VERSION}.tar.gz"


def package_data() -> set[str]:
    """The data files of the source tree, as paths inside the installed package."""
    suites = (REPOSITORY / "bench" / "suites").glob("*.toml")
    policies = (path for path in (REPOSITORY / "datasets" / "policies").rglob("*") if path.is_file())
    return {"offbench/" + path.relative_to(REPOSITORY).as_posix() for path in (*suites, *policies)}


def test_the_build_backend_is_bounded_and_new_enough_for_the_license_expression():
    """[build-system] names a range with an upper bound (a release cannot break a fresh install) whose
    floor understands the SPDX `license` string and `license-files`, and the setuptools running these tests
    is inside it."""
    from importlib.metadata import version

    (requirement,) = PYPROJECT["build-system"]["requires"]
    name, specifier = re.fullmatch(r"(setuptools)(.*)", requirement).groups()
    bounds = SpecifierSet(specifier)
    assert any(spec.operator == "<" for spec in bounds), f"{requirement} has no upper bound"
    assert "77.0.3" in bounds and "77.0.2" not in bounds
    assert version(name) in bounds


def test_requires_python_is_the_version_the_tests_run_on():
    project = PYPROJECT["project"]
    floor = re.fullmatch(r">=(\d+\.\d+)", project["requires-python"]).group(1)
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in SpecifierSet(project["requires-python"])
    claimed = {c.rsplit(" :: ", 1)[1] for c in project["classifiers"] if re.search(r":: 3\.\d+$", c)}
    assert claimed == {floor}, "classifiers claim only the Python version the tests cover"
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py" + floor.replace(".", "")


def test_the_wheel_holds_the_code_the_suites_the_policies_and_the_license(dist):
    with zipfile.ZipFile(wheel_of(dist)) as wheel:
        names = set(wheel.namelist())
        metadata = wheel.read(f"offbench-{VERSION}.dist-info/METADATA").decode()
    assert package_data() <= names
    assert {
        "offbench/bench/cli.py",
        "offbench/datasets/provision.py",
        "offbench/algorithms/__init__.py",
    } <= names
    assert f"offbench-{VERSION}.dist-info/licenses/LICENSE" in names
    assert not [name for name in names if name.startswith(("tests/", "results/", "notebooks/"))]
    assert "License-Expression: MIT" in metadata and "License-File: LICENSE" in metadata
    assert "Requires-Python: >=3.11" in metadata


def test_the_sdist_holds_what_a_wheel_is_built_from(dist):
    with tarfile.open(sdist_of(dist)) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    prefix = len("offbench/")
    assert {name[prefix:] for name in package_data()} <= names
    assert {"LICENSE", "README.md", "pyproject.toml", "bench/cli.py"} <= names


def test_twine_and_check_wheel_contents_accept_the_distributions(dist):
    checked = run(
        [sys.executable, "-m", "twine", "check", "--strict", str(wheel_of(dist)), str(sdist_of(dist))]
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # cwd: check-wheel-contents reads its configuration ([tool.check-wheel-contents]) from pyproject.toml.
    contents = run(
        [str(Path(sys.executable).parent / "check-wheel-contents"), str(wheel_of(dist))], cwd=REPOSITORY
    )
    assert contents.returncode == 0, contents.stdout + contents.stderr


@pytest.mark.slow  # about 2 minutes on 2 cores: a virtual environment, its dependencies, a JAX compile
def test_the_wheel_works_in_a_fresh_environment_with_no_checkout(dist, tmp_path):
    """What a pip user does first, in a directory that is not a checkout, with a dataset store of its own:
    every command reads its suites and policies from the installed package, not the repository."""
    venv, work, store = tmp_path / "venv", tmp_path / "work", tmp_path / "minari"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"MINARI_DATASETS_PATH": str(store), "PATH": f"{venv / 'bin'}{os.pathsep}{env['PATH']}"}
    transcript = []

    def step(*command: str) -> str:
        started = time.monotonic()
        done = run(list(command), cwd=work, env=env)
        took = time.monotonic() - started
        transcript.append(
            f"$ {' '.join(command)}   [{took:.0f} s, exit {done.returncode}]\n{done.stdout}{done.stderr}"
        )
        assert done.returncode == 0, "\n".join(transcript)
        return done.stdout

    step(sys.executable, "-m", "venv", str(venv))
    step(str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel_of(dist)))
    where = step("python", "-c", "import offbench; print(offbench.__file__)")
    assert Path(where.strip()).is_relative_to(venv), where
    assert step("offbench", "--version").splitlines() == [
        f"offbench {VERSION}",
        f"code version offbench-{VERSION} (installed package, no git checkout)",
    ]
    assert {"bc", "iql", "td3bc"} <= set(step("offbench", "algorithms").split())
    step("offbench", "datasets", "generate", "--env", "hopper", "--size", "5000")
    assert (store / "offbench" / "hopper" / "medium-v0" / "data" / "main_data.hdf5").is_file()
    step(
        "offbench", "run", "--algorithm", "td3bc", "--dataset", "offbench/hopper/medium-v0",
        "--seeds", "0-1", "--steps", "300", "--eval-every", "150", "--eval-episodes", "2",
    )  # fmt: skip
    assert len(list((work / "runs" / "adhoc" / "runs").glob("*.parquet"))) == 1
    step("offbench", "report", "runs/adhoc", "--reps", "200", "--profile-reps", "100")
    assert (work / "runs" / "adhoc" / "LEADERBOARD.md").is_file()
    (tmp_path / "transcript.log").write_text("\n".join(transcript))
