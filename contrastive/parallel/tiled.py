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

``block_fn(queries, query_meta, keys, key_meta, params) -> (loss_terms, metric_terms)``, each a dict
``{kind: {name: (values [r, c], mask [r, c])}}`` with kind in ``lse``, ``sum`` (and ``max`` for metrics).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

LSE, SUM, MAX = "lse", "sum", "max"


# ----------------------------------------------------------------------------------------- vma helpers
def match_varying(tree, like: Array):
    """Cast ``tree`` to vary over the same shard_map axes as ``like`` (scan carries must agree)."""
    axes = tuple(jax.typeof(like).manual_axis_type.varying)

    def cast(x):
        missing = tuple(a for a in axes if a not in jax.typeof(x).manual_axis_type.varying)
        return jax.lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree.map(cast, tree)


# ----------------------------------------------------------------------------------------- reductions
def reduce_terms(terms: dict) -> dict:
    """Row totals of one tile's terms."""
    reducers = {
        LSE: lambda v, m: jax.nn.logsumexp(v, axis=-1, where=m),
        SUM: lambda v, m: jnp.sum(jnp.where(m, v, 0.0), axis=-1),
        MAX: lambda v, m: jnp.max(jnp.where(m, v, -jnp.inf), axis=-1),
    }
    return {kind: {name: reducers[kind](*vm) for name, vm in group.items()} for kind, group in terms.items()}


def combine_totals(a: dict, b: dict) -> dict:
    """Merge the row totals of two disjoint sets of columns."""
    ops = {LSE: jnp.logaddexp, SUM: jnp.add, MAX: jnp.maximum}
    return {kind: jax.tree.map(ops[kind], a[kind], b[kind]) for kind in a}


def empty_totals(structure: dict) -> dict:
    """Totals over no columns: log 0 = -inf for lse and max, 0 for sums."""
    fill = {LSE: -jnp.inf, SUM: 0.0, MAX: -jnp.inf}
    return {
        kind: jax.tree.map(lambda s, f=fill[kind]: jnp.full(s.shape, f, s.dtype), group)
        for kind, group in structure.items()
    }


def surrogate(terms: dict, totals: dict, cotangents: dict) -> Array:
    """A scalar whose gradient is this tile's share of ``sum_i <g_i, d T_i>`` (module docstring)."""
    out = 0.0
    for name, (v, m) in terms.get(LSE, {}).items():
        t, g = jax.lax.stop_gradient(totals[LSE][name]), cotangents[LSE][name]
        # where before exp: masked-out pairs (and rows whose total is -inf) give exp(-inf) = 0, NaN-free.
        out = out + jnp.sum(g[:, None] * jnp.exp(jnp.where(m, v - t[:, None], -jnp.inf)))
    for name, (v, m) in terms.get(SUM, {}).items():
        out = out + jnp.sum(cotangents[SUM][name][:, None] * jnp.where(m, v, 0.0))
    return out


# ----------------------------------------------------------------------------------------- tiling
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
    """Row totals (loss, metrics) of all query rows against all key rows, one tile at a time."""
    row_chunk = chunk_size or queries.shape[0]
    col_chunk = chunk_size or keys.shape[0]
    row_tiles = _tiles((queries, query_meta), row_chunk)
    col_tiles = _tiles((keys, key_meta), col_chunk)
    first_col = jax.tree.map(lambda x: x[0], col_tiles)

    def one_row_tile(row):
        structure = jax.eval_shape(lambda: reduce_tree(block_fn(*row, *first_col, params)))
        init = match_varying(empty_totals_tree(structure), row[0])

        def step(acc, col):
            return combine_tree(acc, reduce_tree(block_fn(*row, *col, params))), None

        return jax.lax.scan(step, init, col_tiles)[0]

    return _untile(jax.lax.map(one_row_tile, row_tiles))


def tiled_grads(block_fn, queries, query_meta, keys, key_meta, params, totals, cotangents, chunk_size):
    """Gradients of ``sum_i <g_i, T_i>`` w.r.t. (queries, keys, params), recomputing tile by tile."""
    row_chunk = chunk_size or queries.shape[0]
    col_chunk = chunk_size or keys.shape[0]
    row_tiles = _tiles((queries, query_meta, totals, cotangents), row_chunk)
    col_tiles = _tiles((keys, key_meta), col_chunk)

    def tile_surrogate(q, k, p, q_meta, k_meta, tot, ct):
        return surrogate(block_fn(q, q_meta, k, k_meta, p)[0], tot, ct)

    tile_grad = jax.grad(tile_surrogate, argnums=(0, 1, 2))
    zeros = lambda tree: match_varying(jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), tree), queries)

    def one_row_tile(carry, row):
        d_keys, d_params = carry
        q, q_meta, tot, ct = row

        def step(inner, col):
            d_q, d_p = inner
            g_q, g_k, g_p = tile_grad(q, col[0], params, q_meta, col[1], tot, ct)
            return (d_q + g_q, jax.tree.map(jnp.add, d_p, g_p)), g_k

        (d_q, d_params), g_keys = jax.lax.scan(step, (zeros(q), d_params), col_tiles)
        return (d_keys + g_keys, d_params), d_q

    init = (zeros(col_tiles[0]), zeros(params))
    (d_keys, d_params), d_queries = jax.lax.scan(one_row_tile, init, row_tiles)
    return _untile(d_queries), _untile(d_keys), d_params


# Loss and metric terms travel together as a pair of dicts.
def reduce_tree(pair):
    return tuple(reduce_terms(t) for t in pair)


def combine_tree(a, b):
    return tuple(combine_totals(x, y) for x, y in zip(a, b, strict=True))


def empty_totals_tree(structure):
    return tuple(empty_totals(s) for s in structure)
