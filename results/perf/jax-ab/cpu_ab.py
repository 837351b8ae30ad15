"""CPU seconds per update (process CPU time, all threads) and wall seconds, after compilation, for one
algorithm at one seed on a synthetic 200k Hopper-shaped dataset. CPU time is steadier than wall time on a
machine other processes share. Usage: cpu_ab.py ALGO [chunk] [chunks]"""
import sys, time, json
import jax
from offbench.algorithms import get_algorithm
from offbench.bench.engine import init_states, make_train_chunk, seed_keys, shared_arrays, training_data
from offbench.bench.perf.updates import random_dataset

name = sys.argv[1]; chunk = int(sys.argv[2]) if len(sys.argv) > 2 else 100; chunks = int(sys.argv[3]) if len(sys.argv) > 3 else 3
algorithm = get_algorithm(name)
cfg = algorithm.Config(**({"hidden_dims": (256, 256)} if name == "dqc" else {}))
dataset = random_dataset(200_000)
data = training_data(algorithm, dataset, cfg)
shared = shared_arrays(algorithm, data, cfg)
init_keys, keys = seed_keys((0,))
states = init_states(algorithm, data, cfg, init_keys)
train = make_train_chunk(algorithm, cfg, chunk).lower(states, keys, data, shared).compile()
out = train(states, keys, data, shared); jax.block_until_ready(out); states, keys = out[0], out[1]
cpu, wall = [], []
for _ in range(chunks):
    c0, w0 = time.process_time(), time.perf_counter()
    out = train(states, keys, data, shared); jax.block_until_ready(out); states, keys = out[0], out[1]
    cpu.append((time.process_time() - c0) / chunk * 1000); wall.append((time.perf_counter() - w0) / chunk * 1000)
print(json.dumps({"algorithm": name, "jax": jax.__version__, "cpu_ms_per_update": sorted(cpu), "wall_ms_per_update": sorted(wall)}))
