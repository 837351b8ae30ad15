"""PRDC: the exact nearest-neighbour search against brute force, the actor loss by hand."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from offbench.algorithms import knn, prdc, sampling
from offbench.algorithms.config import resolve_config
from offbench.algorithms.registry import get_algorithm
from offbench.bench.engine import shared_arrays

search = jax.jit(knn.nearest_neighbour, static_argnums=(3, 4))


@jax.jit
def brute_force(keys: jax.Array, queries: jax.Array) -> jax.Array:
    """The reference: index of the nearest row of ``keys`` [N, dim] to each query, lowest on ties."""
    return knn.brute_force(keys, jnp.arange(keys.shape[0], dtype=jnp.int32), queries)[1]


def numpy_nearest(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Float64 brute force; argmin returns the first (lowest) index among equal distances."""
    distances = ((queries[:, None, :].astype(np.float64) - keys[None].astype(np.float64)) ** 2).sum(-1)
    return distances.argmin(axis=1)


def prdc_like(rng: np.random.Generator, keys: np.ndarray, batch: int, action_dim: int, noise: float):
    """Queries whose state part is a table row's (as in PRDC) and whose action part is perturbed."""
    rows = rng.integers(0, len(keys), batch)
    queries = keys[rows].copy()
    noisy = queries[:, -action_dim:] + noise * rng.normal(size=(batch, action_dim))
    queries[:, -action_dim:] = np.clip(noisy, -1, 1)
    return queries.astype(np.float32), keys[rows]


@pytest.mark.parametrize(
    ("n", "dim", "leaf_size", "pairs_per_query"),
    [(1, 3, 16, 16), (7, 4, 2, 16), (300, 5, 4, 1), (3000, 6, 2, 16)],
)
def test_search_equals_brute_force(n, dim, leaf_size, pairs_per_query):
    """One pair per query forces many passes and brute-forced queries; 16 is the default budget."""
    rng = np.random.default_rng(n)
    keys = rng.normal(size=(n, dim)).astype(np.float32)
    keys[n // 2 :: 5] = keys[: len(keys[n // 2 :: 5])]  # exact duplicate rows at higher indices
    keys[:, -2:] = np.clip(keys[:, -2:], -1, 1)
    table = knn.build_search_table(keys, keys[:, -2:], leaf_size)
    cases = [
        prdc_like(rng, keys, 64, 2, 0.3),
        (100.0 * rng.normal(size=(64, dim)).astype(np.float32), keys[rng.integers(0, n, 64)]),  # far away
        (keys[rng.integers(0, n, 64)], keys[rng.integers(0, n, 64)]),  # table rows: distance 0, duplicated
    ]
    queries, hints = (np.concatenate(x) for x in zip(*cases, strict=True))
    expected = np.asarray(brute_force(jnp.asarray(keys), jnp.asarray(queries)))
    np.testing.assert_array_equal(expected, numpy_nearest(keys, queries))
    index, _ = search(table, jnp.asarray(queries), jnp.asarray(hints), pairs_per_query, 8)
    np.testing.assert_array_equal(np.asarray(index), expected)


def test_the_tree_alone_certifies_prdc_queries_and_is_then_exact():
    rng = np.random.default_rng(0)
    keys = np.concatenate([2.0 * rng.normal(size=(5000, 6)), rng.uniform(-1, 1, (5000, 3))], 1)
    keys = keys.astype(np.float32)
    table = knn.build_search_table(keys, keys[:, -3:], 4)
    assert len(table.boxes) == 2  # a dense top level and one compacted level
    queries, hints = prdc_like(rng, keys, 256, 3, 0.1)
    bound = knn.squared_distances(jnp.asarray(queries), jnp.asarray(hints))
    tree_search = jax.jit(partial(knn.tree_search, pairs=256 * 16))
    top_bounds = knn.top_level_bounds(table, jnp.asarray(queries))
    _, index, certified = tree_search(table, jnp.asarray(queries), top_bounds, bound)
    certified = np.asarray(certified)
    assert certified.mean() > 0.9
    np.testing.assert_array_equal(np.asarray(index)[certified], numpy_nearest(keys, queries)[certified])
    _, info = search(table, jnp.asarray(queries), jnp.asarray(hints), 16, 8)
    assert float(info["search_brute_force_fraction"]) == 0.0


def test_ties_go_to_the_lowest_index():
    # Rows 1 and 3 are the same point; rows 0 and 2 are at distance 1 from the query (1, 0), exactly.
    keys = np.array([[0.0, 0.0], [5.0, 5.0], [2.0, 0.0], [5.0, 5.0], [9.0, 9.0]], np.float32)
    table = knn.build_search_table(keys, keys, 1)
    queries = jnp.array([[1.0, 0.0], [5.0, 5.0], [2.0, 0.0]])
    hints = jnp.array([[2.0, 0.0], [5.0, 5.0], [2.0, 0.0]])  # hints tied with, or equal to, the answer
    expected = [0, 1, 2]
    np.testing.assert_array_equal(np.asarray(brute_force(jnp.asarray(keys), queries)), expected)
    np.testing.assert_array_equal(np.asarray(search(table, queries, hints, 16, 8)[0]), expected)


def test_a_wrong_hint_costs_time_not_exactness():
    rng = np.random.default_rng(1)
    keys = rng.normal(size=(2000, 4)).astype(np.float32)
    table = knn.build_search_table(keys, keys, 4)
    queries = rng.normal(size=(32, 4)).astype(np.float32)
    for hints in (queries, queries + 1e-3, np.zeros_like(queries)):  # closer than any row, or arbitrary
        index, _ = search(table, jnp.asarray(queries), jnp.asarray(hints), 16, 8)
        np.testing.assert_array_equal(np.asarray(index), numpy_nearest(keys, queries))


def test_non_finite_queries_get_no_neighbour():
    keys = np.eye(3, dtype=np.float32)
    table = knn.build_search_table(keys, keys, 1)
    queries = jnp.array([[np.nan, 0.0, 0.0], [1.0, 0.1, 0.0], [np.inf, 0.0, 0.0]])
    index, info = search(table, queries, jnp.asarray(keys), 16, 8)
    np.testing.assert_array_equal(np.asarray(index), [-1, 0, -1])
    assert float(info["search_brute_force_fraction"]) == 0.0


def test_search_is_identical_inside_jit_and_vmap():
    rng = np.random.default_rng(2)
    keys = np.concatenate([2.0 * rng.normal(size=(3000, 5)), rng.uniform(-1, 1, (3000, 2))], 1)
    keys = keys.astype(np.float32)
    table = knn.build_search_table(keys, keys[:, -2:], 4)
    sets = [prdc_like(rng, keys, 64, 2, noise) for noise in (0.05, 0.5, 2.0)]
    queries, hints = (jnp.asarray(np.stack(x)) for x in zip(*sets, strict=True))
    vmapped = jax.jit(jax.vmap(lambda q, h: knn.nearest_neighbour(table, q, h, 2)[0]))(queries, hints)
    for i in range(len(sets)):
        alone = search(table, queries[i], hints[i], 2, 8)[0]
        np.testing.assert_array_equal(np.asarray(vmapped[i]), np.asarray(alone))
        np.testing.assert_array_equal(np.asarray(alone), numpy_nearest(keys, np.asarray(queries[i])))


def test_search_table_keys_are_the_batches_keys(toy_dataset):
    cfg = prdc.Config(beta=7.5)  # not a power of two: beta * s rounds
    data = sampling.prepare(toy_dataset(50), cfg)
    table = shared_arrays(get_algorithm("prdc"), data, cfg)
    batch = sampling.gather(data.dataset, jnp.arange(50))
    own = jax.jit(prdc.search_keys, static_argnums=0)(cfg, batch.observations, batch.actions)
    # Bit for bit, so a batch row's own key is found at distance exactly |pi - a|^2.
    np.testing.assert_array_equal(np.asarray(table.rows), np.asarray(own)[np.asarray(table.index)])
    np.testing.assert_array_equal(np.asarray(table.actions), np.asarray(data.dataset.actions))


def constant_network(params, output_bias):
    """Every weight zero except the output bias: the network outputs ``output_bias`` everywhere."""
    zeroed = jax.tree.map(jnp.zeros_like, params)
    flat = jax.tree_util.tree_flatten_with_path(zeroed)[0]
    last_bias = [path for path, _ in flat if "bias" in jax.tree_util.keystr(path)][-1]

    def set_bias(path, leaf):
        if path != last_bias:
            return leaf
        bias = jnp.asarray(output_bias, leaf.dtype).reshape(leaf.shape[:-1] + (-1,))
        return jnp.broadcast_to(bias, leaf.shape)

    return jax.tree_util.tree_map_with_path(set_bias, zeroed)


def test_actor_loss_by_hand(toy_dataset):
    cfg = prdc.Config(hidden_dims=(4,), alpha=2.5, beta=2.0)
    data = sampling.prepare(toy_dataset(40), cfg)
    table = shared_arrays(get_algorithm("prdc"), data, cfg)
    state = prdc.init(jax.random.key(0), data.dataset, cfg)
    state = state.replace(critic=constant_network(state.critic, [[-4.0], [7.0]]))
    actor = constant_network(state.actor, [0.3, -0.2])
    batch = sampling.gather(data.dataset, jnp.array([3, 17, 29]))
    loss_fn = jax.jit(jax.value_and_grad(prdc.actor_loss, has_aux=True), static_argnums=4)
    (loss, info), grads = loss_fn(actor, state, batch, table, cfg)

    pi = np.tanh([0.3, -0.2])
    observations, actions = np.asarray(data.dataset.observations), np.asarray(data.dataset.actions)
    keys = np.concatenate([2.0 * observations, actions], 1)
    queries = np.concatenate([2.0 * np.asarray(batch.observations), np.broadcast_to(pi, (3, 2))], 1)
    neighbours = actions[numpy_nearest(keys, queries)]
    bc_loss = np.mean((pi - neighbours) ** 2)
    # lambda = alpha / mean|Q1| = 2.5 / 4, so -lambda * mean(Q1) = 2.5
    assert float(info["bc_loss"]) == pytest.approx(bc_loss, rel=1e-6)
    assert float(loss) == pytest.approx(2.5 + bc_loss, rel=1e-6)
    # The neighbour is a constant target: the output bias's gradient is pi's, through tanh.
    output_bias = grads["params"]["MLP_0"]["Dense_1"]["bias"]
    expected_grad = 2.0 * (pi - neighbours).mean(0) / 2.0 * (1.0 - pi**2)
    np.testing.assert_allclose(np.asarray(output_bias), expected_grad, rtol=1e-5)


def test_dataset_overrides():
    algorithm = get_algorithm("prdc")
    cheetah = resolve_config(prdc.Config, "mujoco/halfcheetah/medium-v0", algorithm.dataset_overrides)
    assert (cheetah.alpha, cheetah.beta) == (40.0, 2.0)
    antmaze = resolve_config(prdc.Config, "D4RL/antmaze/large-diverse-v1", algorithm.dataset_overrides)
    assert (antmaze.alpha, antmaze.beta) == (7.5, 7.5)
    assert (antmaze.reward_scale, antmaze.reward_shift) == (10000.0, -1.0)
    hopper = resolve_config(prdc.Config, "mujoco/hopper/medium-v0", algorithm.dataset_overrides)
    assert (hopper.alpha, hopper.beta) == (2.5, 2.0)


def test_first_argmin_is_equal_on_both_backends_paths(monkeypatch):
    """The CPU path (two reductions) and the argmin path give the same index: lowest on ties, the last
    index on a row with a NaN."""
    nan, inf = jnp.nan, jnp.inf
    rows = [[3, 1, 1, 2], [nan, 0, 1, 2], [0, 1, nan, -1], [inf, inf, inf, inf], [5, 4, 3, 3]]
    values = jnp.array(rows, jnp.float32)
    expected = [1, 3, 3, 0, 2]
    for backend in ("cpu", "gpu"):
        monkeypatch.setattr(knn.jax, "default_backend", lambda backend=backend: backend)
        assert knn.first_argmin(values).tolist() == expected, backend
