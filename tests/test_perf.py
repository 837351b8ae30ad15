"""The perf benchmark's plumbing on tiny settings (timings themselves belong in the benchmark)."""

from __future__ import annotations

import io
import math

import jax
import jax.numpy as jnp
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from offbench.algorithms import sampling
from offbench.algorithms.registry import get_algorithm
from offbench.bench.cli import app
from offbench.bench.engine import init_states, make_train_chunk, seed_keys, shared_arrays
from offbench.bench.perf import benchmark as perf_benchmark
from offbench.bench.perf import datasets as perf_datasets
from offbench.bench.perf import evaluation as perf_evaluation
from offbench.bench.perf import gpu_check
from offbench.bench.perf import measure as perf_measure
from offbench.bench.perf import render as perf_render
from offbench.bench.perf import targets as perf_targets
from offbench.bench.perf import updates as perf_updates

TINY = {"hidden_dims": (32, 32), "batch_size": 16}


def test_measure_reports_consistent_flops_and_rates():
    dataset = perf_updates.random_dataset(2_000)
    shapes = []

    def stub_roofline(seeds: int, rows: int, width: int) -> float:
        shapes.append((seeds, rows, width))
        return 1e9

    m = perf_updates.measure_algorithm(
        "bc", dataset, num_seeds=2, chunk=5, repeats=1, min_seconds=0.0, hparams=TINY, roofline=stub_roofline
    )
    # Forward + backward of the MLP is about 3x the forward pass, 2*B*(in*h + h*h + h*out).
    forward = 2 * 16 * (11 * 32 + 32 * 32 + 32 * 3)
    assert 2 * forward < m.flops_per_update < 10 * forward
    assert m.flops_complete
    assert m.updates_per_second_per_seed > 0 and m.compile_seconds > 0 and m.setup_seconds > 0
    # The roofline is asked for the vmapped hidden layer's shape: seeds x batch rows x width.
    assert shapes == [(2, 16, 32)] and m.roofline_shape == "2x16x32"
    assert math.isclose(m.achieved_flops_per_second, m.flops_per_update * m.updates_per_second_per_seed * 2)
    assert math.isclose(m.roofline_fraction, m.achieved_flops_per_second / 1e9)
    row = m.row()
    assert row["roofline_fraction"] == m.roofline_fraction and row["algorithm"] == "bc"
    assert row["dataset"] == "synthetic-2000" and row["warmup_updates"] == 0


def test_warmup_is_whole_chunks_trained_before_the_timing():
    dataset = perf_updates.random_dataset(2_000)
    m = perf_updates.measure_algorithm(
        "bc",
        dataset,
        1,
        chunk=5,
        repeats=1,
        min_seconds=0.0,
        hparams=TINY,
        roofline=lambda *_: 1e9,
        warmup_updates=7,
    )
    assert m.warmup_updates == 10


def flops_of(name: str, **hparams) -> perf_updates.UpdateFlops:
    algorithm = get_algorithm(name)
    cfg = algorithm.Config(**TINY, **hparams)
    data = sampling.prepare(perf_updates.random_dataset(500), cfg)
    init_keys, keys = seed_keys((0,))
    states = init_states(algorithm, data, cfg, init_keys)
    return perf_updates.update_flops(algorithm, cfg, states, keys, data, shared_arrays(algorithm, data, cfg))


def test_update_flops_average_the_delayed_actor_step():
    # With policy_freq=2 the actor steps every other update; counting the lax.cond's costlier branch
    # every time would give the policy_freq=1 count.
    every_update = flops_of("td3bc", policy_freq=1).per_update
    every_other = flops_of("td3bc", policy_freq=2).per_update
    assert 0.5 * every_update < every_other < 0.95 * every_update


def test_contains_loop_ignores_single_iteration_scans():
    def scanned(x, length):
        return jax.lax.scan(lambda h, _: (h * 2, None), x, None, length=length)[0]

    x = jnp.ones(3)
    assert not perf_updates.contains_loop(jax.make_jaxpr(lambda x: jnp.sin(x) @ x)(x).jaxpr)
    assert not perf_updates.contains_loop(jax.make_jaxpr(lambda x: scanned(x, 1))(x).jaxpr)
    assert perf_updates.contains_loop(jax.make_jaxpr(lambda x: scanned(x, 4))(x).jaxpr)
    looped = jax.make_jaxpr(lambda x: jax.lax.while_loop(lambda h: h.sum() < 10, lambda h: h * 2, x))
    assert perf_updates.contains_loop(looped(x).jaxpr)
    # Loops nested in a jitted call or a cond's branch count too.
    nested = jax.make_jaxpr(lambda x: jax.lax.cond(x[0] > 0, jax.jit(lambda y: scanned(y, 4)), jnp.sin, x))
    assert perf_updates.contains_loop(nested(x).jaxpr)


def test_matmul_roofline_is_positive():
    assert perf_updates.matmul_roofline(seeds=2, rows=8, width=16, length=3, min_seconds=0.0, repeats=1) > 0


def test_every_cell_is_judged_against_the_best_roofline_of_its_shape(monkeypatch):
    ceilings = iter([1e9, 3e9, 2e9, 5e9])  # three cells of one shape, then one of another

    def measure(name, dataset, num_seeds, *args, roofline, **kwargs):
        shape = (num_seeds, 256, 256)
        return perf_updates.Measurement(
            name, dataset.spec.id, dataset.size, 0, num_seeds, 10, 256, 100.0, 1.0, 1.0, 1e8, True,
            "x".join(map(str, shape)),
            roofline(*shape),
        )  # fmt: skip

    monkeypatch.setattr(perf_updates, "measure_algorithm", measure)
    monkeypatch.setattr(perf_updates, "matmul_roofline", lambda *shape: next(ceilings))
    updates = perf_updates.measure_updates(["bc", "td3bc", "iql"], [1], [1_000]).set_index("algorithm")
    assert updates.roofline_flops_per_second.to_dict() == {"bc": 3e9, "td3bc": 3e9, "iql": 3e9}
    assert updates.roofline_fraction["bc"] == pytest.approx(1e8 * 100.0 / 3e9)
    single = perf_updates.measure_updates(["bc"], [4], [1_000])
    assert single.roofline_flops_per_second.tolist() == [5e9]


def updates_stub() -> pd.DataFrame:
    rows = []
    for algorithm, rate_1, rate_16, compile_seconds in (
        ("td3bc", 100.0, 95.0, 10.0),
        ("prdc", 40.0, 50.0, 25.0),
        ("bc", 300.0, 200.0, 3.0),
    ):
        for seeds, rate, fraction in ((1, rate_1, 0.5), (16, rate_16, 0.8)):
            rows.append(
                {
                    "algorithm": algorithm,
                    "dataset": "synthetic-200000",
                    "dataset_size": 200_000,
                    "warmup_updates": 0,
                    "seeds": seeds,
                    "updates_per_second_per_seed": rate,
                    "compile_seconds": compile_seconds,
                    "roofline_fraction": fraction,
                }
            )
    rows.append(
        {
            **rows[2],
            "dataset": "synthetic-1000000",
            "dataset_size": 1_000_000,
            "updates_per_second_per_seed": 10.0,
        }
    )  # prdc alone
    # The PRDC target's cells: real data, trained first.
    trained = {
        "dataset": perf_updates.PRDC_DATASET, "dataset_size": 202_260, "warmup_updates": 2_000, "seeds": 1
    }
    rows.append({**rows[0], **trained, "updates_per_second_per_seed": 90.0})
    rows.append({**rows[2], **trained, "updates_per_second_per_seed": 60.0})
    return pd.DataFrame(rows)


def test_cost_relative_to_td3bc():
    updates = perf_updates.with_td3bc_cost(updates_stub()).set_index(["algorithm", "dataset", "seeds"])
    assert updates.cost_vs_td3bc["prdc", "synthetic-200000", 1] == pytest.approx(100 / 40)
    assert updates.cost_vs_td3bc["prdc", "synthetic-200000", 16] == pytest.approx(95 / 50)
    assert updates.cost_vs_td3bc["td3bc", "synthetic-200000", 16] == pytest.approx(1.0)
    assert math.isnan(updates.cost_vs_td3bc["prdc", "synthetic-1000000", 1])  # no td3bc at that size
    # Compared with TD3+BC on the same data after the same training, not with the synthetic cell.
    assert updates.cost_vs_td3bc["prdc", perf_updates.PRDC_DATASET, 1] == pytest.approx(90 / 60)


def test_targets_on_a_stub():
    updates = perf_updates.with_td3bc_cost(updates_stub())
    evaluation = pd.DataFrame(
        [
            {"backend": perf_evaluation.EVALUATOR_BACKEND, "overhead_fraction": 0.3},
            {"backend": "gymnasium SyncVectorEnv", "overhead_fraction": 0.1},
        ]
    )
    targets = perf_targets.check_targets(updates, evaluation)
    assert set(targets.target) == {t.name for t in perf_targets.TARGETS}

    def cells(target: perf_targets.Target) -> pd.DataFrame:
        return targets[targets.target == target.name]

    roofline = cells(perf_targets.ROOFLINE_TARGET).set_index(["algorithm", "seeds", "dataset_size"])
    assert roofline.passed.to_dict() == {  # prdc has no roofline target
        ("td3bc", 1, 200_000): False,
        ("td3bc", 16, 200_000): True,
        ("bc", 1, 200_000): False,
        ("bc", 16, 200_000): True,
        ("td3bc", 1, 202_260): False,
    }
    prdc = cells(perf_targets.PRDC_TARGET)
    # Only the trained real-data cell: the synthetic ones are reported, not judged.
    assert prdc.value.tolist() == pytest.approx([90 / 60]) and prdc.passed.tolist() == [True]
    scaling = cells(perf_targets.SCALING_TARGET)
    assert scaling.value.tolist() == pytest.approx([0.95]) and scaling.passed.tolist() == [True]
    compile_cells = cells(perf_targets.COMPILE_TARGET)
    assert (
        len(compile_cells) == len(updates) and compile_cells.passed.sum() == len(updates) - 4
    )  # prdc's four
    overhead = cells(perf_targets.OVERHEAD_TARGET)
    assert overhead.value.tolist() == [0.3] and overhead.passed.tolist() == [False]


def test_targets_without_their_measurements_say_not_measured():
    updates = perf_updates.with_td3bc_cost(updates_stub().query("algorithm == 'bc'"))
    targets = perf_targets.check_targets(updates, None).set_index("target")
    for target in (perf_targets.PRDC_TARGET, perf_targets.SCALING_TARGET, perf_targets.OVERHEAD_TARGET):
        assert math.isnan(targets.value[target.name]) and targets.passed[target.name] is None


def test_render_and_write(tmp_path):
    rows = [
        perf_updates.Measurement(
            algorithm=name,
            dataset=perf_updates.PRDC_DATASET,
            dataset_size=202_260,
            warmup_updates=2_000,
            seeds=1,
            chunk=20,
            batch_size=256,
            updates_per_second_per_seed=rate,
            compile_seconds=5.0,
            setup_seconds=1.0,
            flops_per_update=4e8,
            flops_complete=name != "prdc",
            roofline_shape="1x256x256",
            roofline_flops_per_second=3e10,
        ).row()
        for name, rate in (("td3bc", 60.0), ("prdc", 40.0))
    ]
    updates = perf_updates.with_td3bc_cost(pd.DataFrame(rows))
    evaluation = pd.DataFrame(
        [
            perf_evaluation.evaluation_row(perf_evaluation.EVALUATOR_BACKEND, 10, 1_000, 2.0, 1.5),
            {"backend": "envpool", "environments": 10, "status": "not measured: not installed"},
        ]
    )
    datasets = pd.DataFrame(
        [
            perf_datasets.dataset_row("load", "offbench/hopper/medium-v0", status="not measured: not found"),
            perf_datasets.dataset_row("generate", "offbench/hopper/medium-v0", 5_000, 2.5),
        ]
    )
    tables = perf_benchmark.PerfTables(
        "cpu: test", updates, evaluation, datasets, perf_targets.check_targets(updates, evaluation)
    )
    rendered = perf_render.render(tables)
    assert [table.row_count for table in rendered] == [2, 2, 2, len(perf_targets.TARGETS)]
    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(rendered[0])
    assert "1.50 ✓" in console.export_text()  # prdc's cost relative to td3bc, beside its target
    assert evaluation.overhead_fraction[0] == pytest.approx(0.25)
    paths = perf_benchmark.write(tables, tmp_path / perf_measure.device_slug(tables.device))
    assert sorted(path.name for path in paths) == [
        "datasets.parquet",
        "evaluation.parquet",
        "targets.parquet",
        "updates.parquet",
    ]
    written = pd.read_parquet(tmp_path / "cpu-test" / "updates.parquet")
    assert set(written.device) == {"cpu: test"} and "git_sha" in written
    assert {"updates_per_second_per_seed", "flops_per_update", "roofline_fraction", "cost_vs_td3bc"} <= set(
        written.columns
    )


def test_evaluation_throughput_rows():
    evaluation = perf_evaluation.evaluation_throughput(seeds=1, episodes=2)
    assert evaluation.backend.iloc[0] == perf_evaluation.EVALUATOR_BACKEND
    assert evaluation.backend.iloc[1] == "gymnasium SyncVectorEnv"
    assert evaluation.backend.iloc[2].startswith("envpool")
    measured = evaluation[evaluation.status == "ok"]
    assert (measured.environments == 2).all() and (measured.env_steps > 0).all()
    assert ((measured.overhead_fraction > 0) & (measured.overhead_fraction < 1)).all()
    assert (measured.stepping_only_env_steps_per_second > measured.env_steps_per_second).all()


def test_perf_command_help_documents_full_and_quick_runs():
    result = CliRunner().invoke(app, ["perf", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--quick" in result.output and "offbench perf --quick" in result.output
    assert "--size 200000,1000000" in result.output


def test_perf_command_rejects_bad_lists():
    result = CliRunner().invoke(app, ["perf", "--seeds", "1,x"])
    assert result.exit_code != 0 and "positive integers" in result.output


def test_the_dataset_is_counted_once_whatever_the_seed_count():
    """XLA's memory analysis of the chunk: the dataset is one unbatched argument, each seed adds its state."""
    algorithm = get_algorithm("bc")
    cfg = algorithm.Config(**TINY)
    data = sampling.prepare(perf_updates.random_dataset(2_000), cfg)
    dataset_arguments = []
    for num_seeds in (1, 3):
        init_keys, keys = seed_keys(tuple(range(num_seeds)))
        states = init_states(algorithm, data, cfg, init_keys)
        compiled = make_train_chunk(algorithm, cfg, 2).lower(states, keys, data, None).compile()
        memory = perf_measure.chunk_memory(compiled)
        dataset_arguments.append(memory.arguments - perf_measure.tree_bytes((states, keys)))
        assert memory.peak >= memory.arguments
    # BC reads float32 observations (11) and actions (3) of 2,000 transitions; jit drops the unread arrays.
    assert dataset_arguments == [2_000 * (11 + 3) * 4] * 2


@pytest.mark.slow  # about 2 minutes on an idle 2-core CPU: five compiles and two evaluations
def test_gpu_check_runs_on_cpu_and_writes_its_tables(tmp_path):
    settings = gpu_check.Settings(
        seed_counts=(1, 2), dataset_size=2_000, chunk=2, repeats=1, min_seconds=0.0, matmul_size=64,
        run_seeds=1, run_steps=2, run_eval_every=1, run_episodes=1,
    )  # fmt: skip
    tables = gpu_check.run(settings, algorithms=("bc", "td3bc"))
    updates = tables.updates
    cells = updates[["algorithm", "seeds"]].values.tolist()
    assert cells == [["bc", 1], ["bc", 2], ["td3bc", 1], ["td3bc", 2]]
    assert (updates.updates_per_second_per_seed > 0).all() and (updates.chunk_peak_bytes > 0).all()
    assert updates.dataset_bytes.nunique() == 1  # one dataset, whatever the algorithm or seed count
    assert updates.device_peak_bytes.isna().all()  # the CPU backend keeps no peak
    assert tables.roofline.flops_per_second.iloc[0] > 0
    share = tables.evaluation_share.iloc[0]
    assert share.evaluations == 2 and 0 < share.evaluation_share < share.evaluation_share_without_compile < 1
    assert [table.row_count for table in gpu_check.render(tables)] == [4, 1, 1, 1]
    paths = gpu_check.write(tables, tmp_path / "cpu-test-gpu-check")
    assert sorted(path.name for path in paths) == [
        "evaluation_share.parquet", "memory.parquet", "roofline.parquet", "updates.parquet",
    ]  # fmt: skip
    assert set(pd.read_parquet(tmp_path / "cpu-test-gpu-check" / "memory.parquet").device) == {tables.device}


def test_gpu_check_rejects_a_custom_plan():
    result = CliRunner().invoke(app, ["perf", "--gpu-check", "-a", "bc"])
    assert result.exit_code != 0 and "fixed plan" in result.output
