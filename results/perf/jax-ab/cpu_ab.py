"""CPU seconds per update (process CPU time, all threads) and wall seconds, after compilation, for one
algorithm at one seed on a synthetic 200k Hopper-shaped dataset. CPU time is steadier than wall time on a
machine other processes share. Usage: cpu_ab.py ALGORITHM [updates per chunk] [timed chunks]"""

import json
import sys
import time

import jax

from offbench.algorithms.registry import get_algorithm
from offbench.bench.engine import init_states, make_train_chunk, seed_keys, shared_arrays, training_data
from offbench.bench.perf.updates import random_dataset

name = sys.argv[1]
chunk = int(sys.argv[2]) if len(sys.argv) > 2 else 100
chunks = int(sys.argv[3]) if len(sys.argv) > 3 else 3
algorithm = get_algorithm(name)
cfg = algorithm.Config(**({"hidden_dims": (256, 256)} if name == "dqc" else {}))
data = training_data(algorithm, random_dataset(200_000), cfg)
shared = shared_arrays(algorithm, data, cfg)
init_keys, keys = seed_keys((0,))
states = init_states(algorithm, data, cfg, init_keys)
train = make_train_chunk(algorithm, cfg, chunk).lower(states, keys, data, shared).compile()
states, keys = jax.block_until_ready(train(states, keys, data, shared))[:2]  # warm-up
cpu_ms, wall_ms = [], []
for _ in range(chunks):
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    states, keys = jax.block_until_ready(train(states, keys, data, shared))[:2]
    cpu_ms.append((time.process_time() - cpu_start) / chunk * 1000)
    wall_ms.append((time.perf_counter() - wall_start) / chunk * 1000)
result = {"algorithm": name, "jax": jax.__version__, "cpu_ms_per_update": sorted(cpu_ms)}
print(json.dumps({**result, "wall_ms_per_update": sorted(wall_ms)}))
