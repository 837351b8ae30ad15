#!/bin/bash
# Interleaved JAX A/B on process CPU time per update, same code: VENV_A and VENV_B are two environments that
# differ only in jax/jaxlib (here 0.10.2 and 0.9.2). Writes one JSON line per (algorithm, version, round).
cd "$(dirname "$0")/../../.."
for round in 1 2 3; do
  for algo in dqc td3bc bc iql cql a2pr prdc; do
    for bin in "$VENV_A/bin" "$VENV_B/bin"; do
      $bin/python results/perf/jax-ab/cpu_ab.py $algo 50 3 2>/dev/null | tail -1
    done
  done
done
