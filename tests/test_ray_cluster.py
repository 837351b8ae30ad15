"""The Ray executor on a real two-node cluster (``ray start``, see ray_cluster.py), whose nodes share no
dataset folder: results and checkpoints travel to the driver, a GPU request without CUDA fails in one
line, and a worker node killed mid-job loses nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import tomllib
from pathlib import Path

import pandas as pd
import pytest
from ray_cluster import HEAD_RESOURCE, WORKER_RESOURCE, Cluster
from same_tables import assert_same_tables

from offbench.bench import results
from offbench.bench.ray_executor import Resources
from offbench.bench.suite import parse_suite
from offbench.bench.sweep import sweep

ray = pytest.importorskip("ray", reason="the Ray cluster tests need `pip install 'offbench[ray]'`")



def suite_text(dataset: str, alphas: list[float], steps: int = 20) -> str:
    return f"""
name = "cluster"
datasets = ["{dataset}"]
seeds = "0-1"
steps = {steps}
eval_every = 10
eval_episodes = 1
final_k = 2

[[algorithms]]
name = "td3bc"
hparams = {{ hidden_dims = [8], batch_size = 16 }}
grid = {{ alpha = {alphas} }}
"""


@pytest.fixture(scope="module")
def cluster(hopper_minari, minari_root):
    patcher = pytest.MonkeyPatch()
    patcher.setenv("RAY_AUTH_MODE", "disabled")
    started = Cluster(minari_root)
    try:
        ray.init(address=started.address, log_to_driver=False)
        yield started
    finally:
        ray.shutdown()
        left = started.stop()
        patcher.undo()
        shutil.rmtree(started.base, ignore_errors=True)
    assert not left, f"Ray processes left running: {left}"


def node_ids() -> dict[str, str]:
    """Node id -> 'head' or 'worker', by the custom resource each node advertises."""
    names = {}
    for node in ray.nodes():
        if HEAD_RESOURCE in node["Resources"]:
            names[node["NodeID"]] = "head"
        elif WORKER_RESOURCE in node["Resources"]:
            names[node["NodeID"]] = "worker"
    return names


def where(summary, names: dict[str, str]) -> list[str]:
    return [
        f"{job}: ran on the {names[placed['node']]} node"
        + (f", resumed from update {placed['resumed_from']}" if placed["resumed_from"] else "")
        for job, placed in sorted(summary.placements.items())
    ]


def offbench_files(folder: Path) -> list[Path]:
    """Anything offbench would have written on a node: rows, policies, checkpoints, datasets, scratch."""
    return [
        path
        for path in folder.rglob("*")
        if path.suffix in (".parquet", ".hdf5", ".npz")
        or path.name in ("progress.json", "policy.json")
        or path.name.startswith("offbench")
    ]


def test_four_jobs_over_two_nodes_equal_the_local_executors_tables(cluster, hopper_minari, tmp_path):
    suite = parse_suite(tomllib.loads(suite_text(hopper_minari, [1.0, 2.0, 3.0, 4.0])))
    summary = sweep(suite, tmp_path / "ray", executor="ray", address=cluster.address)
    lines = where(summary, node_ids())
    print(*lines, sep="\n")
    assert len(summary.finished) == 4 and not summary.failed, summary.failed
    assert {line.split(" ran on the ")[1] for line in lines} == {"head node", "worker node"}
    local = sweep(suite, tmp_path / "local", workers=1, threads_per_worker=1)
    assert len(local.finished) == 4
    assert_same_tables(tmp_path / "ray", tmp_path / "local")
    assert not list(cluster.worker_minari.iterdir())
    assert not list(cluster.worker_tmp.iterdir())
    assert not offbench_files(cluster.base / "worker")


def test_a_gpu_request_without_cuda_fails_that_job_in_one_line_before_training(
    cluster, hopper_minari, tmp_path
):
    suite = parse_suite(tomllib.loads(suite_text(hopper_minari, [1.0])))
    summary = sweep(suite, tmp_path, executor="ray", address=cluster.address, resources=Resources(1, 1))
    ((name, message),) = summary.failed.items()
    print(message)
    assert "\n" not in message and "offbench[cuda12]" in message and "--gpus-per-job 1" in message
    assert node_ids()[summary.placements[name]["node"]] == "worker"  # the only node with a GPU resource
    assert not (tmp_path / "runs").exists() and not (tmp_path / "checkpoints").exists()
    assert json.loads((tmp_path / "failures" / f"{name}.json").read_text())["error"] == message


def test_a_plugin_file_reaches_the_worker_node_as_its_source(cluster, hopper_minari, tmp_path, monkeypatch):
    """A file plug-in (TD3+BC copied and renamed) trains on the worker node from the source its job carries:
    the file is gone before the sweep starts, and the rows equal the local executor's."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from offbench.bench import ray_executor

    plugin = tmp_path / "mytd3.py"
    text = (Path(results.__file__).parents[1] / "algorithms" / "td3bc.py").read_text()
    plugin.write_text(text.replace('name="td3bc"', 'name="mytd3"'))
    suite = parse_suite(tomllib.loads(suite_text(hopper_minari, [1.0]).replace('"td3bc"', f'"{plugin}"')))
    plugin.unlink()
    names = node_ids()
    worker = next(node for node, name in names.items() if name == "worker")
    original = ray_executor.run_ray
    prefer_worker = {"scheduling_strategy": NodeAffinitySchedulingStrategy(worker, soft=False)}
    monkeypatch.setattr(
        ray_executor, "run_ray", lambda *a, **k: original(*a, **k, task_options=lambda planned: prefer_worker)
    )
    summary = sweep(suite, tmp_path / "ray", executor="ray", address=cluster.address)
    print(*where(summary, names), sep="\n")
    assert len(summary.finished) == 1 and not summary.failed, summary.failed
    assert names[next(iter(summary.placements.values()))["node"]] == "worker"
    monkeypatch.setattr(ray_executor, "run_ray", original)
    sweep(suite, tmp_path / "local", workers=1, threads_per_worker=1)
    assert_same_tables(tmp_path / "ray", tmp_path / "local")
    assert set(pd.read_parquet(tmp_path / "ray" / "runs")["algorithm"]) == {"mytd3"}


# Slow (35-86 s on 2 shared cores): it keeps the default test run within its 15-minute budget.
@pytest.mark.slow
def test_a_worker_node_killed_mid_job_resumes_elsewhere_from_its_checkpoint(cluster, hopper_minari, tmp_path):
    """Runs last: the worker node does not come back."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    suite = parse_suite(tomllib.loads(suite_text(hopper_minari, [1.0], steps=400)))
    names = node_ids()
    worker = next(node for node, name in names.items() if name == "worker")
    # Soft affinity: the job starts on the worker node, and Ray may rerun it elsewhere once that node is gone.
    prefer_worker = {"scheduling_strategy": NodeAffinitySchedulingStrategy(worker, soft=True)}
    out = tmp_path / "ray"
    killed: list[str] = []

    def kill_the_worker_node_after_a_checkpoint() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for progress in out.glob("checkpoints/*/progress.json"):
                with_step = json.loads(progress.read_text())["step"]
                os.kill(cluster.raylet(cluster.base / "worker"), signal.SIGKILL)
                killed.append(
                    f"killed the worker node's raylet with the driver's checkpoint at update {with_step}"
                )
                return
            time.sleep(0.05)

    from offbench.bench import ray_executor

    original = ray_executor.run_ray

    def placed_on_the_worker(*args, **kwargs):
        return original(*args, **kwargs, task_options=lambda planned: prefer_worker)

    watcher = threading.Thread(target=kill_the_worker_node_after_a_checkpoint, daemon=True)
    watcher.start()
    ray_executor.run_ray = placed_on_the_worker
    try:
        summary = sweep(suite, out, executor="ray", address=cluster.address)
    finally:
        ray_executor.run_ray = original
    watcher.join(timeout=5)
    lines = where(summary, names)
    print(*killed, *lines, sep="\n")
    assert killed and len(summary.finished) == 1 and not summary.failed, summary.failed
    (placed,) = summary.placements.values()
    assert names[placed["node"]] == "head" and placed["resumed_from"] > 0
    reference = tmp_path / "local"
    sweep(suite, reference, workers=1, threads_per_worker=1)
    assert_same_tables(out, reference)
    assert not (out / "checkpoints").exists()
