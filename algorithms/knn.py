"""Exact nearest-neighbour search inside a jitted update (PRDC's BC target).

PRDC's actor needs, every actor step, the dataset row nearest to each query concat(beta * s, pi(s)).
Brute force (batch x N x dim distances per step) makes a PRDC update many times a TD3+BC update
(``offbench perf`` measures both). Instead the key table is arranged once, on the host, as a balanced
k-d tree: leaves of ~16 rows with tight bounding boxes, plus the boxes of a few coarser levels (a
densely searched top level of <= 256 nodes, then fan-out 8). Any real row's distance bounds the nearest
one's, and a box whose lower bound exceeds it can be skipped. Two bounds are cheap: the batch row's own
key concat(beta * s, a), which is in the table, and the best row of the leaf reached by always following
the closest child. A pass walks the levels breadth first over the (query, node) pairs within each
query's bound, keeping at most a fixed number of pairs per level (static shapes), and ranks the rows of
the surviving leaves. A query is certified when none of its pairs was dropped and its best distance is
within its bound: every skipped box then lies strictly farther than that row. Passes repeat in a while
loop for the queries not yet certified, with bounds tightened by what the last pass found; a query that
the tree could not certify with the whole budget to itself is brute-forced, a few at a time, in a second
while loop. Both loops run zero times when nothing is left, also under vmap over seeds (where a lax.cond
would compute both branches). Hints and data only change how long this takes: nothing is ever returned
uncertified.

Ties: among equal distances the lowest dataset index wins, on every path. Distances and box bounds are
sums over dimensions in one fixed order, so every path rounds a row's distance identically (XLA
contracts these to FMAs inside fusions, the same way everywhere), and a box's bound never exceeds the
distance of a row inside it; the margins below cover the remaining rounding.
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

TOP_LEVEL_DEPTH = 8  # the densely searched level has at most 2^8 nodes
LEVEL_STEP = 3  # each further level has 2^3 children per node
# Relative margins for float rounding: a box is searched when its bound is within ``bound * (1 +
# SEARCH_MARGIN)`` and a query is certified when its best distance is within ``bound * (1 +
# CERTIFY_MARGIN)``. Float32 sums of D squares are accurate to ~D * 6e-8, so every row of a skipped box
# is then strictly farther than the best row for any D below ~1000.
SEARCH_MARGIN = 2.0**-12
CERTIFY_MARGIN = 2.0**-14
BRUTE_FORCE_BLOCK = 4096  # rows per step of a full scan


@flax.struct.dataclass
class SearchTable:
    """Every dataset row's key concat(beta * s, a), as the leaves of a balanced k-d tree."""

    rows: jax.Array  # [leaves, leaf_size, dim] keys, leaf by leaf (short leaves repeat real rows)
    index: jax.Array  # [leaves, leaf_size] the dataset row of each key
    # Per searched level, coarse to fine, the (low, high) corners of each node's box grouped by parent:
    # [parents, fan-out, 2, dim], node ``p * fan-out + j`` at [p, j]. One gather per parent fetches all
    # its children (the top level has a single parent).
    boxes: tuple[jax.Array, ...]
    actions: jax.Array  # [N, act] the dataset actions, the search's answer


def squared_distances(queries: jax.Array, rows: jax.Array) -> jax.Array:
    """||q - r||^2 summed in dimension order, so every caller rounds a given pair identically."""
    total = jnp.zeros(jnp.broadcast_shapes(queries.shape[:-1], rows.shape[:-1]), rows.dtype)
    for k in range(rows.shape[-1]):
        total = total + (queries[..., k] - rows[..., k]) ** 2
    return total


def box_lower_bound(queries: jax.Array, boxes: jax.Array) -> jax.Array:
    """Squared distance from each query to each box [..., 2, dim]; never above a row's inside it."""
    total = jnp.zeros(jnp.broadcast_shapes(queries.shape[:-1], boxes.shape[:-2]), boxes.dtype)
    for k in range(boxes.shape[-1]):
        low, high = boxes[..., 0, k], boxes[..., 1, k]
        gap = jnp.maximum(jnp.maximum(low - queries[..., k], queries[..., k] - high), 0.0)
        total = total + gap * gap
    return total


def build_search_table(keys: np.ndarray, actions: np.ndarray, leaf_size: int) -> SearchTable:
    """Median splits on the widest dimension, level by level, so all leaves hold the same count."""
    n, dim = keys.shape
    leaf_depth = max(math.ceil(math.log2(max(n / leaf_size, 1.0))), 0)
    num_leaves = 2**leaf_depth
    per_leaf = -(-n // num_leaves)
    # Padding repeats real rows with their own index: a duplicate can never change the answer.
    order = np.concatenate([np.arange(n), np.arange(num_leaves * per_leaf - n) % n])
    for depth in range(leaf_depth):
        nodes = order.reshape(2**depth, -1)
        points = keys[nodes]
        widest = (points.max(axis=1) - points.min(axis=1)).argmax(axis=1)
        values = np.take_along_axis(points, widest[:, None, None], axis=2)[..., 0]
        halves = np.argpartition(values, nodes.shape[1] // 2, axis=1)
        order = np.take_along_axis(nodes, halves, axis=1).reshape(-1)
    index = order.reshape(num_leaves, per_leaf)
    rows = keys[index]
    depths = [leaf_depth]
    while depths[0] > TOP_LEVEL_DEPTH:
        depths.insert(0, depths[0] - LEVEL_STEP)
    corners = np.stack([rows.min(axis=1), rows.max(axis=1)], axis=1)  # [leaves, 2, dim]
    boxes = []
    for parent_depth, depth in zip([0, *depths[:-1]], depths, strict=True):
        nodes = corners.reshape(2**depth, -1, 2, dim)
        boxes.append(
            np.stack([nodes[:, :, 0].min(axis=1), nodes[:, :, 1].max(axis=1)], axis=1).reshape(
                2**parent_depth, -1, 2, dim
            )
        )
    return jax.device_put(
        SearchTable(rows=rows, index=index.astype(np.int32), boxes=tuple(boxes), actions=np.asarray(actions))
    )


def lexicographic_min(distances: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(smallest distance, lowest index among the rows at that distance) along the last axis."""
    best = distances.min(axis=-1)
    ties = jnp.where(distances == best[..., None], index, jnp.iinfo(jnp.int32).max)
    return best, ties.min(axis=-1)


def brute_force(
    rows: jax.Array, index: jax.Array, queries: jax.Array, block: int = BRUTE_FORCE_BLOCK
) -> tuple[jax.Array, jax.Array]:
    """(squared distance, index) of each query's nearest row, lowest index on ties, by full scan."""
    n = rows.shape[0]
    block = min(block, n)
    if n % block:
        # Repeating rows to fill the last block cannot change the answer (same rows, same index).
        fill = jnp.arange(block - n % block) % n
        rows, index = jnp.concatenate([rows, rows[fill]]), jnp.concatenate([index, index[fill]])
    blocks = (rows.reshape(-1, block, rows.shape[-1]), index.reshape(-1, block))

    def scan_block(carry, block_rows):
        best, best_index = carry
        distance, found = lexicographic_min(
            squared_distances(queries[:, None, :], block_rows[0][None]),
            jnp.broadcast_to(block_rows[1], (queries.shape[0], block)),
        )
        better = (distance < best) | ((distance == best) & (found < best_index))
        return (jnp.where(better, distance, best), jnp.where(better, found, best_index)), None

    init = (jnp.full(queries.shape[0], jnp.inf, rows.dtype), jnp.full(queries.shape[0], n, jnp.int32))
    (best, best_index), _ = jax.lax.scan(scan_block, init, blocks)
    return best, best_index


def first_argmin(values: jax.Array) -> jax.Array:
    """Index of the smallest value along the last axis, the lowest among equals (as ``jnp.argmin``).

    On the CPU backend (read when traced) two plain reductions: XLA's CPU backend runs argmin's paired
    (value, index) reduction ~6x slower than a min (measured on this project's 2-core CPU), and the
    descent takes one per level. Elsewhere, not measured, ``jnp.argmin``.
    """
    count = values.shape[-1]
    if jax.default_backend() == "cpu":
        _, lowest = lexicographic_min(values, jnp.arange(count, dtype=jnp.int32))
    else:
        lowest = jnp.where(jnp.isnan(values).any(axis=-1), count, jnp.argmin(values, axis=-1))
    # A NaN row (a diverged query) has no minimum: clipped to the last index, a valid node, and the query
    # is never searched.
    return jnp.minimum(lowest, count - 1)


def top_level_bounds(table: SearchTable, queries: jax.Array) -> jax.Array:
    """[batch, top-level nodes] lower bounds from each query to each box of the densely searched level."""
    return box_lower_bound(queries[:, None], table.boxes[0][0])


def descend(table: SearchTable, queries: jax.Array, top_bounds: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(distance, index) of the best row in the leaf reached by following the lowest-bound child.

    A cheap first guess: in dense data it is already close, and its distance, a real row's, bounds the
    exact search far tighter than a hint. (A beam of several nodes would need top_k, which XLA's CPU
    backend turns into a full sort here.) ``top_bounds`` are the queries' bounds to the top level's boxes.
    """
    node = first_argmin(top_bounds)
    for boxes in table.boxes[1:]:
        node = node * boxes.shape[1] + first_argmin(box_lower_bound(queries[:, None], boxes[node]))
    return lexicographic_min(squared_distances(queries[:, None], table.rows[node]), table.index[node])


def tree_search(
    table: SearchTable, queries: jax.Array, top_bounds: jax.Array, bound: jax.Array, pairs: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(distance, index, certified) from the leaves whose boxes lie within ``bound`` of each query.

    ``top_bounds`` are ``top_level_bounds(table, queries)``, computed once for all passes of a search.
    """
    batch = queries.shape[0]
    limit = jnp.append(bound * (1.0 + SEARCH_MARGIN), -jnp.inf)  # entry ``batch``: padding pairs

    def compact(keep: jax.Array, query: jax.Array, node: jax.Array, overflow: jax.Array):
        """The first ``pairs`` kept (query, child) pairs, in order; flags the queries that lost some."""
        counts = keep.sum(axis=1)
        ends = jnp.cumsum(counts)
        slot = (ends - counts)[:, None] + jnp.cumsum(keep, axis=1) - 1
        slot = jnp.where(keep, slot, pairs).reshape(-1)
        kept = jnp.stack([jnp.broadcast_to(query[:, None], keep.shape).reshape(-1), node.reshape(-1)], axis=1)
        kept = jnp.tile(jnp.array([batch, 0], jnp.int32), (pairs, 1)).at[slot].set(kept, mode="drop")
        # Pairs are sorted by query, so every query from the first one cut short on lost pairs (or had
        # none to lose: flagging it only costs a later pass).
        first_cut = jnp.min(jnp.where(ends > pairs, query, batch))
        return kept[:, 0], kept[:, 1], overflow | (jnp.arange(batch) >= first_cut)

    keep = top_bounds <= limit[:batch, None]
    nodes = jnp.broadcast_to(jnp.arange(keep.shape[1]), keep.shape)
    query, node, overflow = compact(keep, jnp.arange(batch), nodes, jnp.zeros(batch, bool))
    for boxes in table.boxes[1:]:
        fanout = boxes.shape[1]
        mine = queries.at[query].get(mode="clip")[:, None]
        keep = box_lower_bound(mine, boxes[node]) <= limit[query][:, None]
        query, node, overflow = compact(keep, query, node[:, None] * fanout + jnp.arange(fanout), overflow)

    distance, index = lexicographic_min(
        squared_distances(queries.at[query].get(mode="clip")[:, None], table.rows[node]), table.index[node]
    )
    distance = jnp.where(query < batch, distance, jnp.inf)
    best = jnp.full(batch, jnp.inf, distance.dtype).at[query].min(distance, mode="drop")
    tied = jnp.where(distance == best.at[query].get(mode="clip"), index, jnp.iinfo(jnp.int32).max)
    best_index = jnp.full(batch, jnp.iinfo(jnp.int32).max, jnp.int32).at[query].min(tied, mode="drop")
    return best, best_index, ~overflow & (best <= bound * (1.0 + CERTIFY_MARGIN))


def nearest_neighbour(
    table: SearchTable,
    queries: jax.Array,
    hints: jax.Array,
    pairs_per_query: int = 16,
    fallback_queries: int = 8,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Exact nearest table row (L2, lowest index on ties) of each query, and search statistics.

    ``hints`` are keys expected to be table rows (PRDC: the batch's own rows); they only decide how much
    to search, so a wrong hint costs time, never exactness. Queries with non-finite values get index
    -1 (a diverged seed must not make every later step brute-force the table).
    """
    batch = queries.shape[0]
    # Every pass compares the same queries with the same top-level boxes: computed once.
    top_bounds = top_level_bounds(table, queries)
    guess, _ = descend(table, queries, top_bounds)
    bound = jnp.minimum(squared_distances(queries, hints), guess)

    def tree_pass(carry):
        index, bound, pending, brute, passes = carry
        best, found, certified = tree_search(
            table, queries, top_bounds, jnp.where(pending, bound, -jnp.inf), pairs_per_query * batch
        )
        certified = certified & pending
        # The first pending query had the whole budget to itself: if that did not certify it, brute
        # force it, so every pass settles at least one query.
        stuck = (jnp.arange(batch) == jnp.argmax(pending)) & pending & ~certified
        # A pass's best rows are real rows even where it ran out of room: they tighten the next pass.
        return (
            jnp.where(certified, found, index),
            jnp.minimum(bound, best),
            pending & ~certified & ~stuck,
            brute | stuck,
            passes + 1,
        )

    finite = jnp.isfinite(queries).all(axis=-1)
    start = (jnp.full(batch, -1, jnp.int32), bound, finite, jnp.zeros(batch, bool), jnp.zeros((), jnp.int32))
    index, _, _, brute, passes = jax.lax.while_loop(lambda carry: carry[2].any(), tree_pass, start)

    leaves, leaf_size, dim = table.rows.shape
    rows, row_index = table.rows.reshape(-1, dim), table.index.reshape(-1)
    block = leaf_size * min(leaves, 2 ** max(math.ceil(math.log2(BRUTE_FORCE_BLOCK / leaf_size)), 0))
    group = min(fallback_queries, batch)

    def brute_force_pass(carry):
        index, waiting = carry
        (chosen,) = jnp.nonzero(waiting, size=group, fill_value=batch)
        _, found = brute_force(rows, row_index, queries.at[chosen].get(mode="clip"), block)
        return index.at[chosen].set(found, mode="drop"), waiting.at[chosen].set(False, mode="drop")

    index, _ = jax.lax.while_loop(lambda carry: carry[1].any(), brute_force_pass, (index, brute))
    return index, {
        "search_tree_passes": passes.astype(jnp.float32),
        "search_brute_force_fraction": brute.mean(),
    }
