"""Algorithms from outside the package: by path, module and entry point; their code's identity; the
conformance check over every built-in, the ReBRAC example and broken copies; `offbench algorithms new`."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from toy import SMALL_CONFIGS
from typer.testing import CliRunner

from offbench.algorithms import registry
from offbench.bench import conformance
from offbench.bench.cli import app
from offbench.bench.suite import SuiteError, parse_suite
from offbench.bench.sweep import plan, sweep
from offbench.bench.train import Job, run_job

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
REBRAC = ROOT / "examples" / "rebrac.py"
STARTER = ROOT / "algorithms" / "starter_td3bc.py"
TINY = {"hidden_dims": (8,), "batch_size": 16}
# Columns that differ between two algorithms computing the same numbers: names, identity and timings.
NOT_COMPARED = {
    "job",
    "job_id",
    "algorithm",
    "label",
    "code_version",
    "algorithm_origin",
    "algorithm_digest",
    "written_at",
    "wall_time_s",
    "train_seconds",
    "compile_seconds",
    "eval_seconds",
    "updates_per_second_per_seed",
}


def td3bc_copy(folder: Path, name: str = "mytd3", edit: str = "") -> Path:
    """``algorithms/td3bc.py`` copied outside the repository and renamed; ``edit`` is appended."""
    text = (ROOT / "algorithms" / "td3bc.py").read_text().replace('name="td3bc"', f'name="{name}"')
    path = folder / f"{name}.py"
    path.write_text(text + edit)
    return path


def suite(dataset: str, *algorithms: str, steps: int = 10) -> str:
    entries = "".join(
        f'\n[[algorithms]]\nname = "{name}"\nhparams = {{ hidden_dims = [8], batch_size = 16 }}\n'
        for name in algorithms
    )
    return (
        f'name = "plugins"\ndatasets = ["{dataset}"]\nseeds = "0-1"\nsteps = {steps}\neval_every = 5\n'
        f"eval_episodes = 1\nfinal_k = 2\n{entries}"
    )


def load(text: str, base: Path | None = None):
    return parse_suite(tomllib.loads(text), base=base)


def table(out: Path, name: str, algorithm: str) -> pd.DataFrame:
    frame = pd.read_parquet(out / name)
    frame = frame[frame["algorithm"] == algorithm].drop(columns=[c for c in frame if c in NOT_COMPARED])
    keys = [c for c in ("seed", "step", "name") if c in frame]
    return frame.sort_values(keys).reset_index(drop=True)


def test_a_td3bc_copy_and_a_new_starter_run_by_path_give_td3bcs_rows(hopper_minari, tmp_path, monkeypatch):
    """About 15 s: three tiny jobs (2 seeds, 10 updates, 1 evaluation episode)."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    copy = td3bc_copy(folder)
    monkeypatch.chdir(folder)
    result = runner.invoke(app, ["algorithms", "new", "mine"])
    assert result.exit_code == 0, result.output
    assert "written: mine.py (from td3bc)" in result.output
    out = tmp_path / "out"
    summary = sweep(load(suite(hopper_minari, "td3bc", str(copy), "mine.py"), base=folder), out)
    assert len(summary.finished) == 3 and not summary.failed
    runs = pd.read_parquet(out / "runs").set_index("algorithm")
    assert runs.loc["mytd3", "algorithm_origin"].iloc[0] == f"file:{copy}"
    assert runs.loc["mytd3", "algorithm_digest"].iloc[0] == registry.file_source(str(copy)).digest
    assert runs.loc["td3bc", "algorithm_origin"].iloc[0] == "builtin"
    assert runs.loc["td3bc", "algorithm_digest"].isna().all()
    assert (
        runs.loc["mine", "code_version"]
        .iloc[0]
        .endswith(f"+mine.{registry.file_source('mine.py').digest[:12]}")
    )
    for name in ("evals", "runs", "metrics"):
        for plugin in ("mytd3", "mine"):
            pd.testing.assert_frame_equal(table(out, name, "td3bc"), table(out, name, plugin))
    # The report reads each plug-in's hyper-parameters from its own declaration, found by its origin.
    from offbench.bench import report, report_facts

    runs = report.load_results(out).runs
    facts = report_facts.hyperparameters(runs.assign(method=runs["label"]))
    assert set(facts.loc[facts["name"] == "alpha", "method"]) == {"td3bc", "mytd3", "mine"}
    assert (facts["source"] != "unknown").all()


def test_editing_a_plugin_is_a_change_of_code(hopper_minari, tmp_path):
    """About 15 s: finished rows of the old code are refused, then rerun; an interrupted job's checkpoint
    of the old code is discarded with one line."""
    folder, out = tmp_path / "algos", tmp_path / "out"
    folder.mkdir()
    copy = td3bc_copy(folder)
    text = suite(hopper_minari, str(copy))
    assert len(sweep(load(text), out).finished) == 1
    old = registry.file_source(str(copy)).digest[:12]
    copy.write_text(copy.read_text() + "# an edit\n")
    new = registry.file_source(str(copy)).digest[:12]
    with pytest.raises(
        SuiteError, match=rf"written by other code \(\S+\+mytd3\.{old}; this is \S+\+mytd3\.{new}\)"
    ):
        plan(load(text), out)
    rerun = sweep(load(text), out, on_code_change="rerun")
    assert len(rerun.finished) == 1
    assert pd.read_parquet(out / "runs")["code_version"].str.endswith(f"+mytd3.{new}").all()

    job = load(text).jobs([hopper_minari])[0]

    class Interrupted(Exception):
        pass

    def stop_at_ten(chunk) -> None:
        if chunk.step == 10:
            raise Interrupted

    checkpoints = tmp_path / "checkpoint"
    long_job = Job(**{**job.__dict__, "steps": 15})
    with pytest.raises(Interrupted):
        run_job(long_job, checkpoint_dir=checkpoints, on_chunk=stop_at_ten)
    copy.write_text(copy.read_text() + "# another edit\n")
    edited = load(text).jobs([hopper_minari])[0]
    logged = []
    run_job(Job(**{**edited.__dict__, "steps": 15}), checkpoint_dir=checkpoints, log=logged.append)
    newest = registry.file_source(str(copy)).digest[:12]
    assert len(logged) == 1
    assert logged[0].startswith(f"discarding checkpoint {checkpoints}: it was written by other code (")
    assert f"+mytd3.{new}, this is " in logged[0] and logged[0].endswith(
        f"+mytd3.{newest}); the job starts from update 0."
    )


BROKEN = {
    "metrics": (
        'return loss, {"critic_loss": loss, "q_mean": q.mean()}',
        'return loss, {"critic_loss": loss, "q_mean": q}',
    ),
    "update-shapes": (
        "state = state.replace(critic=critic_params, critic_opt=critic_opt, step=state.step + 1)",
        "state = state.replace(critic=jax.tree.map(lambda p: p.astype(jnp.bfloat16), critic_params), "
        "critic_opt=critic_opt, step=state.step + 1)",
    ),
    # A host callback that sees every vmapped seed at once and mixes them.
    "vmap": (
        "    return state, {**critic_info, **actor_info}",
        "    shared = jax.pure_callback(lambda x: np.broadcast_to(x.mean(), x.shape).astype(np.float32), "
        "jax.ShapeDtypeStruct((), jnp.float32), jax.random.normal(key), vmap_method='broadcast_all')\n"
        "    state = state.replace(actor=jax.tree.map(lambda p: p + 0.01 * shared, state.actor))\n"
        "    return state, {**critic_info, **actor_info}",
    ),
}


def broken_copy(folder: Path, rule: str) -> Path:
    old, new = BROKEN[rule]
    text = STARTER.read_text()
    assert old in text
    path = folder / f"broken_{rule.replace('-', '_')}.py"
    text = text.replace("import flax.struct\n", "import flax.struct\nimport numpy as np\n")
    path.write_text(text.replace(old, new).replace('NAME = "td3bc-starter"', f'NAME = "broken-{rule}"'))
    return path


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_the_check_names_the_broken_rule_and_exits_2(tmp_path, rule):
    """A few seconds each: the abstract rules catch two of them before anything compiles."""
    path = broken_copy(tmp_path, rule)
    result = runner.invoke(
        app, ["algorithms", "check", str(path), "-p", "hidden_dims=8", "-p", "batch_size=16"]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) >= 1 and all(line.startswith(f"broken-{rule}: ") for line in lines)
    assert any(line.startswith(f"broken-{rule}: {rule}: ") and "Fix: " in line for line in lines), lines


# The starter `algorithms new` copies is not here: its rows equal built-in TD3+BC's (tested above).
CHECKED = [*registry.builtin_names(), str(REBRAC)]


@pytest.mark.parametrize("reference", CHECKED, ids=lambda r: Path(r).stem)
def test_every_builtin_and_the_example_pass_the_check(reference):
    """The contract the engine relies on, for every algorithm offbench ships (5-30 s each on 2 cores,
    compilation dominating): tiny networks, where the rules do not depend on the size."""
    _, source = registry.resolve(reference)
    report = conformance.check(source, SMALL_CONFIGS.get(reference, TINY))
    assert report.passed, [str(failure) for failure in report.failures]


def test_the_sweep_refuses_a_plugin_that_fails_the_cheap_rules_before_any_dataset(tmp_path):
    path = broken_copy(tmp_path, "metrics")
    text = suite("offbench/hopper/not-generated-v0", str(path))
    with pytest.raises(
        SuiteError, match=r"fails the conformance check: metrics: metric 'q_mean' is float32\[2, 256\]"
    ):
        plan(load(text), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_bad_plugins_are_refused_with_one_line_and_exit_2(tmp_path):
    not_python = write(tmp_path, "awr.txt", "")
    failing = write(tmp_path, "failing.py", "import math\n\nx = undefined_name\n")
    empty = write(tmp_path, "empty.py", "VALUE = 1\n")
    wrong = write(tmp_path, "wrong.py", "ALGORITHM = 3\n")
    shadow = td3bc_copy(tmp_path, name="td3bc")
    cases = {
        str(tmp_path / "missing.py"): f"algorithm file {tmp_path / 'missing.py'} does not exist",
        str(not_python): f"{not_python} is not a Python file",
        str(failing): f"{failing} fails to import: NameError: name 'undefined_name' is not defined (line 3)",
        str(empty): f"{empty} declares no ALGORITHM",
        str(wrong): f"{wrong}: ALGORITHM is a int, not an offbench.algorithms.Algorithm",
        str(shadow): f"file:{shadow} declares the algorithm 'td3bc', the name of a built-in",
        "td3_bc": "unknown algorithm 'td3_bc': not a built-in",
        "no_such_package.awr": "no module named 'no_such_package.awr'",
    }
    for reference, message in cases.items():
        result = runner.invoke(
            app, ["run", "--algorithm", reference, "--dataset", "x", "--out", str(tmp_path / "o")]
        )
        assert result.exit_code == 2, (reference, result.output)
        assert result.output.startswith(f"error: {message}"), result.output
        assert result.output.count("\n") == 1, result.output
    assert not (tmp_path / "o").exists()


def test_two_plugins_of_one_name_in_a_suite_are_refused(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    one, other = td3bc_copy(first), td3bc_copy(second, edit="# different code\n")
    with pytest.raises(SuiteError, match="two plug-ins that declare the algorithm 'mytd3'"):
        load(suite("x", str(one), str(other)))


def test_a_suite_file_resolves_plugin_paths_from_its_own_folder(tmp_path, monkeypatch):
    folder = tmp_path / "suites"
    folder.mkdir()
    td3bc_copy(folder)
    (folder / "mine.toml").write_text(suite("x", "mytd3.py"))
    monkeypatch.chdir(tmp_path)
    from offbench.bench.suite import load_suite

    entry = load_suite("suites/mine.toml").algorithms[0]
    assert entry.name == "mytd3" and entry.plugin.path == str(folder / "mytd3.py")


def test_a_plugin_loads_again_from_its_source_alone(tmp_path):
    """What a remote worker does: the source carries the file's code, so the file is not needed."""
    copy = td3bc_copy(tmp_path, name="remote-td3")
    _, source = registry.resolve(str(copy))
    copy.unlink()
    assert registry.load(source).name == "remote-td3"
    assert registry.load(source).update is registry.load(source).update


def test_the_examples_suite_names_rebrac_and_the_baselines():
    from offbench.bench.suite import load_suite

    loaded = load_suite(str(ROOT / "examples" / "plugins.toml"))
    assert [entry.name for entry in loaded.algorithms] == ["rebrac", "td3bc", "bc"]
    assert loaded.algorithms[0].plugin.path == str(REBRAC)
    assert loaded.steps == 2000 and loaded.seeds == (0, 1, 2)
    assert loaded.datasets == ("offbench/hopper/medium-v0", "offbench/hopper/medium-replay-v0")


def test_rebrac_takes_its_published_coefficients_per_dataset():
    from offbench.algorithms.config import resolve_config

    rebrac, _ = registry.resolve(str(REBRAC))
    medium = resolve_config(rebrac.Config, "offbench/hopper/medium-v0", rebrac.dataset_overrides)
    replay = resolve_config(rebrac.Config, "offbench/hopper/medium-replay-v0", rebrac.dataset_overrides)
    expert = resolve_config(rebrac.Config, "mujoco/walker2d/medium-expert-v0", rebrac.dataset_overrides)
    assert (medium.actor_bc_coef, medium.critic_bc_coef) == (0.01, 0.01)
    assert (replay.actor_bc_coef, replay.critic_bc_coef) == (0.05, 0.5)
    assert (expert.actor_bc_coef, expert.critic_bc_coef) == (0.01, 0.01)
    assert medium.batch_size == 1024 and medium.hidden_dims == (256, 256, 256)


def build_wheel(folder: Path, files: dict[str, str]) -> Path:
    """A wheel of the distribution awr-demo 0.3 holding ``files``, written with zipfile: the test machine
    has no build backend offline, and a wheel is all pip installs."""
    info = "awr_demo-0.3.dist-info"
    files = {
        **files,
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: awr-demo\nVersion: 0.3\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": "[offbench.algorithms]\nawr-demo = awr_demo\n",
    }
    record = [f"{name},sha256={_record_hash(text)},{len(text.encode())}" for name, text in files.items()]
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    path = folder / "awr_demo-0.3-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return path


def _record_hash(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def test_an_installed_package_is_listed_with_its_origin(tmp_path):
    """About 10 s: a package announcing an offbench.algorithms entry point, installed by pip into a
    temporary folder, then listed by `offbench algorithms` and resolved by name in fresh processes."""
    text = STARTER.read_text().replace('NAME = "td3bc-starter"', 'NAME = "awr-demo"')
    wheel = build_wheel(tmp_path, {"awr_demo/__init__.py": text})
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    listed = subprocess.run(
        [sys.executable, "-m", "offbench.bench.cli", "algorithms"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    lines = listed.stdout.splitlines()
    assert any(line.split() == ["awr-demo", "entry_point:awr-demo", "0.3:awr_demo"] for line in lines), lines
    assert [line.split()[0] for line in lines[:7]] == registry.builtin_names()
    probe = (
        "from offbench.algorithms import registry\n"
        "algorithm, source = registry.resolve('awr-demo')\n"
        "print(algorithm.name, source.kind, source.distribution, source.version, len(source.digest))\n"
    )
    resolved = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    assert resolved.stdout.split() == ["awr-demo", "entry_point", "awr-demo", "0.3", "64"]


def test_gather_gives_the_next_action_inside_an_episode_and_repeats_at_its_end(toy_dataset):
    from offbench.algorithms import sampling

    dataset = toy_dataset(6, terminals_at=[2], timeouts_at=[5])
    batch = sampling.gather(dataset, jax.numpy.arange(6))
    actions = np.asarray(dataset.actions)
    expected = np.stack([actions[1], actions[2], actions[2], actions[4], actions[5], actions[5]])
    np.testing.assert_array_equal(np.asarray(batch.next_actions), expected)


def test_the_documented_example_passes_the_check(tmp_path):
    """About 8 s: the complete example of docs/algorithms.md, as a file plug-in."""
    page = (ROOT / "docs" / "algorithms.md").read_text()
    code = page.split("```python\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "my_bc.py"
    path.write_text(code)
    _, source = registry.resolve(str(path))
    report = conformance.check(source, TINY)
    assert source.name == "my-bc" and report.passed, [str(failure) for failure in report.failures]
