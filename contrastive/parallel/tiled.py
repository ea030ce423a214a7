"""Tiled row reductions of a similarity block: online log-sum-exp over column tiles (Inf-CL).

Paper: Cheng et al. 2024, "Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive
Loss" (Inf-CL), Sec. 3 (tile-wise forward with an online log-sum-exp, tile-wise backward).

A loss over a block of rows (local anchors) and columns (candidates) is described by a ``block_fn``
that, for one tile of rows against one tile of columns, returns *terms*: per-pair values and masks,
grouped by how they are reduced along the row::

    lse:  T_i = log sum_{j in mask_i} exp(v_ij)      (combined across tiles with logaddexp)
    sum:  T_i =     sum_{j in mask_i} v_ij           (combined with +)
    max:  T_i =     max_{j in mask_i} v_ij           (combined with max; metrics only, no gradient)

so the row totals never need more than one ``chunk x chunk`` tile of logits. Their gradient needs no
stored tile either: for a per-row cotangent g_i of T_i,

    d T_i / d v_ij = exp(v_ij - T_i)   (lse)          d T_i / d v_ij = 1   (sum)

so the tile's share of the input gradients is the gradient of the *surrogate*
``sum_ij g_i exp(v_ij - sg(T_i))`` (plus ``sum_ij g_i v_ij`` for sums), recomputed tile by tile.

``block_fn(queries, query_meta, keys, key_meta, params) -> (row_terms, col_terms, metric_terms)``, each a
dict ``{kind: {name: (values [r, c], mask [r, c] or None: every pair)}}`` with kind in ``lse``, ``sum`` (and ``max`` for
metrics). Row terms are reduced per query row; column terms per key (the other direction of a symmetric
loss such as CLIP, from the same tile of logits); metric terms per row, without gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

LSE, SUM, MAX = "lse", "sum", "max"


# ----------------------------------------------------------------------------------------- vma helpers
def match_varying(tree, like):
    """Cast ``tree`` to vary over the same shard_map axes as ``like`` (an array or a tree of them; scan
    carries must agree)."""
    axes = tuple(jax.typeof(jax.tree.leaves(like)[0]).manual_axis_type.varying)

    def cast(x):
        missing = tuple(a for a in axes if a not in jax.typeof(x).manual_axis_type.varying)
        return jax.lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree.map(cast, tree)


# ----------------------------------------------------------------------------------------- reductions
ROWS, COLS = 1, 0  # the axis a term is reduced over: per query row, or per key column


def reduce_terms(terms: dict, axis: int = ROWS) -> dict:
    """Totals of one tile's terms, per row (``axis=ROWS``) or per column (``axis=COLS``)."""
    reducers = {
        LSE: lambda v, m: jax.nn.logsumexp(v, axis=axis, where=m),
        SUM: lambda v, m: jnp.sum(v if m is None else jnp.where(m, v, 0.0), axis=axis),
        MAX: lambda v, m: jnp.max(v if m is None else jnp.where(m, v, -jnp.inf), axis=axis),
    }
    return {kind: {name: reducers[kind](*vm) for name, vm in group.items()} for kind, group in terms.items()}


def combine_totals(a: dict, b: dict) -> dict:
    """Merge the totals of two disjoint sets of pairs (also works on stacked tiles of totals)."""
    ops = {LSE: jnp.logaddexp, SUM: jnp.add, MAX: jnp.maximum}
    return {kind: jax.tree.map(ops[kind], a[kind], b[kind]) for kind in a}


def empty_totals(structure: dict) -> dict:
    """Totals over no pairs: log 0 = -inf for lse and max, 0 for sums."""
    fill = {LSE: -jnp.inf, SUM: 0.0, MAX: -jnp.inf}
    return {
        kind: jax.tree.map(lambda s, f=fill[kind]: jnp.full(s.shape, f, s.dtype), group)
        for kind, group in structure.items()
    }


def surrogate(terms: dict, totals: dict, cotangents: dict, axis: int = ROWS) -> Array:
    """A scalar whose gradient is this tile's share of ``sum_i <g_i, d T_i>`` (module docstring)."""
    out = jnp.zeros((), jnp.float32)
    for name, (v, m) in terms.get(LSE, {}).items():
        t = jnp.expand_dims(jax.lax.stop_gradient(totals[LSE][name]), axis)
        g = jnp.expand_dims(cotangents[LSE][name], axis)
        # where before exp: masked-out pairs (and rows whose total is -inf) give exp(-inf) = 0, NaN-free.
        out = out + jnp.sum(g * jnp.exp(v - t if m is None else jnp.where(m, v - t, -jnp.inf)))
    for name, (v, m) in terms.get(SUM, {}).items():
        out = out + jnp.sum(jnp.expand_dims(cotangents[SUM][name], axis) * (v if m is None else jnp.where(m, v, 0.0)))
    return out


def reduce_block(block_fn, *args):
    """(row totals, column totals, metric row totals) of one tile."""
    row_terms, col_terms, metric_terms = block_fn(*args)
    return reduce_terms(row_terms, ROWS), reduce_terms(col_terms, COLS), reduce_terms(metric_terms, ROWS)


# ----------------------------------------------------------------------------------------- tiling
def num_rows(tree) -> int:
    """Rows of a tree of row-aligned arrays (embeddings [r, d] and e.g. per-row scales [r])."""
    return jax.tree.leaves(tree)[0].shape[0]


def add_trees(a, b):
    return jax.tree.map(jnp.add, a, b)


def _tiles(tree, size: int):
    return jax.tree.map(lambda x: x.reshape((x.shape[0] // size, size) + x.shape[1:]), tree)


def _untile(tree):
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), tree)


def check_chunk_size(chunk_size: int | None, **rows: int) -> None:
    """Raise ValueError unless ``chunk_size`` is None or a positive int dividing every row count."""
    if chunk_size is None:
        return
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or a positive int, got {chunk_size!r}")
    for name, n in rows.items():
        if n % chunk_size:
            raise ValueError(f"chunk_size={chunk_size} must divide the {n} {name} of each device")


def tiled_totals(block_fn, queries, query_meta, keys, key_meta, params, chunk_size):
    """(row, column, metric) totals of all query rows against all key rows, one tile at a time.

    Column totals (the key-to-query direction of a symmetric loss) come from the same tiles, so a
    symmetric loss needs one similarity matmul per tile, not two (Inf-CL, Sec. 3.1).
    """
    row_tiles = _tiles((queries, query_meta), chunk_size or num_rows(queries))
    col_tiles = _tiles((keys, key_meta), chunk_size or num_rows(keys))
    first = lambda tree: jax.tree.map(lambda x: x[0], tree)
    structure = jax.eval_shape(lambda: reduce_block(block_fn, *first(row_tiles), *first(col_tiles), params))
    row_init, col_init, metric_init = match_varying(empty_totals_tree(structure), queries)
    num_col_tiles = num_rows(col_tiles)
    col_init = jax.tree.map(lambda x: jnp.broadcast_to(x, (num_col_tiles,) + x.shape), col_init)

    def one_row_tile(col_totals, row):
        def step(acc, col):
            r, c, m = reduce_block(block_fn, *row, *col, params)
            return combine_tree(acc, (r, m)), c

        (row_totals, metric_totals), col_tile_totals = jax.lax.scan(step, (row_init, metric_init), col_tiles)
        return combine_totals(col_totals, col_tile_totals), (row_totals, metric_totals)

    col_totals, (row_totals, metric_totals) = jax.lax.scan(one_row_tile, col_init, row_tiles)
    return _untile(row_totals), _untile(col_totals), _untile(metric_totals)


def tiled_grads(block_fn, queries, query_meta, keys, key_meta, params, totals, cotangents, chunk_size):
    """Gradients of ``sum_i <g_i, T_i>`` (rows and columns) w.r.t. (queries, keys, params), tile by tile.

    ``totals`` and ``cotangents`` are pairs (rows, columns) of loss totals and their cotangents.
    """
    (row_totals, col_totals), (row_ct, col_ct) = totals, cotangents
    row_tiles = _tiles((queries, query_meta, row_totals, row_ct), chunk_size or num_rows(queries))
    col_tiles = _tiles((keys, key_meta, col_totals, col_ct), chunk_size or num_rows(keys))

    def tile_surrogate(q, k, p, q_meta, k_meta, row, col):
        row_terms, col_terms, _ = block_fn(q, q_meta, k, k_meta, p)
        return surrogate(row_terms, *row, ROWS) + surrogate(col_terms, *col, COLS)

    tile_grad = jax.grad(tile_surrogate, argnums=(0, 1, 2))
    zeros = lambda tree: match_varying(jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), tree), queries)

    def one_row_tile(carry, row):
        d_keys, d_params = carry
        q, q_meta, *row_stats = row

        def step(inner, col):
            d_q, d_p = inner
            k, k_meta, *col_stats = col
            g_q, g_k, g_p = tile_grad(q, k, params, q_meta, k_meta, row_stats, col_stats)
            return (add_trees(d_q, g_q), add_trees(d_p, g_p)), g_k

        (d_q, d_params), g_keys = jax.lax.scan(step, (zeros(q), d_params), col_tiles)
        return (add_trees(d_keys, g_keys), d_params), d_q

    init = (zeros(col_tiles[0]), zeros(params))
    (d_keys, d_params), d_queries = jax.lax.scan(one_row_tile, init, row_tiles)
    return _untile(d_queries), _untile(d_keys), d_params


def combine_tree(a, b):
    return tuple(combine_totals(x, y) for x, y in zip(a, b, strict=True))


def empty_totals_tree(structure):
    return tuple(empty_totals(s) for s in structure)
