"""The perf benchmark's plumbing on tiny settings (timings themselves belong in the benchmark)."""

from __future__ import annotations

import math

from offbench.bench import perf


def test_measure_reports_consistent_flops_and_rates():
    dataset = perf.random_dataset(2_000)
    m = perf.measure_algorithm(
        "bc", dataset, num_seeds=2, chunk=10, repeats=1, hparams={"hidden_dims": (32, 32), "batch_size": 16}
    )
    # Forward + backward of the MLP is about 3x the forward pass, 2*B*(in*h + h*h + h*out).
    forward = 2 * 16 * (11 * 32 + 32 * 32 + 32 * 3)
    assert 2 * forward < m.flops_per_update < 10 * forward
    assert m.updates_per_second_per_seed > 0 and m.compile_seconds > 0
    assert math.isclose(m.achieved_flops_per_second, m.flops_per_update * m.updates_per_second_per_seed * 2)
    assert m.roofline_fraction > 0


def test_matmul_roofline_is_positive():
    assert perf.matmul_roofline(rows=32, width=32, length=5, repeats=1) > 0
