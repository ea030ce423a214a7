"""Ring row losses: online log-sum-exp over the key blocks of every device, passed around a ppermute ring.

Papers: Cheng et al. 2024, "Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive
Loss" (Inf-CL), Sec. 3.2 (multi-level tiling: a ring across devices, tiles within one); Zhai et al. 2023,
"Sigmoid Loss for Language Image Pre-Training", Sec. 3.3 (the same ring for a sigmoid loss).

Each device keeps its query rows and passes its key block (embeddings + metadata) to the next device, D
steps in all. Per-row totals (``tiled.reduce_terms``: online log-sum-exp, sums, maxima) accumulate as the
blocks go by, so no device ever holds more than its own rows, one visiting key block and one
``chunk x chunk`` tile of logits (``b_local x b_local`` without ``chunk_size``)::

    forward:   T_i = combine_k T_i(block k)                 rows stay home, key blocks travel
               L_i = finalize(T_i)                           per-row loss from its totals
    backward:  g_i = d L / d T_i                             (vjp of finalize, once)
               dq_i += grad_q surrogate(block k)             accumulated at home
               dk   += grad_k surrogate(block k)             travels with its block ...
               ... and one last ppermute brings every key gradient back to its owner.

The backward is a ``jax.custom_vjp`` that re-runs the ring, so memory stays O(b_local * (b_local + d))
in both passes (O(b_local * (chunk + d)) with tiles), and nothing is all-gathered.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from contrastive.parallel.tiled import add_trees, combine_totals, tiled_grads, tiled_totals

Array = jax.Array


def ring_shift(axis_name: str | None, num_dev: int):
    """``tree -> tree of the previous device``; after k shifts a device holds device (i - k)'s block."""
    if axis_name is None or num_dev == 1:
        return lambda tree: tree
    perm = [(d, (d + 1) % num_dev) for d in range(num_dev)]
    return lambda tree: jax.tree.map(lambda x: jax.lax.ppermute(x, axis_name, perm), tree)


def as_varying(tree, axis_name: str | None):
    """Mark replicated values (a learnable scale) as per-device, so a custom VJP may return per-device
    cotangents; the transpose of this cast sums them, giving the gradient of the global loss."""
    if axis_name is None:
        return tree

    def cast(x):
        x = jnp.asarray(x)
        if axis_name in jax.typeof(x).manual_axis_type.varying:
            return x
        return jax.lax.pcast(x, axis_name, to="varying")

    return jax.tree.map(cast, tree)


def _num_devices(axis_name):
    return 1 if axis_name is None else jax.lax.axis_size(axis_name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def ring_row_losses(block_fn, finalize_fn, axis_name, chunk_size, queries, query_meta, keys, key_meta, params, aux):
    """Per-row losses ``finalize_fn(T, aux)`` of the local queries against the keys of every device.

    Args:
      block_fn: ``(q, q_meta, k, k_meta, params) -> (row_terms, col_terms, metric_terms)`` for one tile
        (see ``contrastive.parallel.tiled``); it must not depend on where the tile sits. ``col_terms``
        may be empty; when it is not, the keys get losses too (the other direction of CLIP).
      finalize_fn: ``(loss_totals, aux) -> [rows]`` per-row (or per-key, with ``aux=None``) losses, or a
        dict of such arrays (e.g. the loss and the log-denominator of each row).
      axis_name: mesh axis of the ring (inside ``jax.shard_map``), or None for one block.
      chunk_size: tile size within a block, or None for whole blocks.
      queries, query_meta: this device's rows (a pytree of float [r, ...] arrays: embeddings, and e.g. a
        per-row logit scale, differentiated) and their metadata (pytree of [r] ints).
      keys, key_meta: this device's key block (the same kinds of pytrees); it visits every device and
        comes back.
      params: pytree of float scalars (e.g. the logit scale); varying over ``axis_name``.
      aux: per-row constants for ``finalize_fn`` (e.g. DCLW weights), or None.

    Returns:
      (row_losses [r], key_losses [k] or None, metric_totals) — metric totals are not differentiated.
    """
    return _forward(block_fn, finalize_fn, axis_name, chunk_size, queries, query_meta, keys, key_meta, params, aux)[0]


def _finalize_keys(finalize_fn, col_totals):
    return finalize_fn(col_totals, None) if jax.tree.leaves(col_totals) else None


def _forward(block_fn, finalize_fn, axis_name, chunk_size, queries, query_meta, keys, key_meta, params, aux):
    num_dev = _num_devices(axis_name)
    shift = ring_shift(axis_name, num_dev)
    totals_of = functools.partial(tiled_totals, block_fn, queries, query_meta, params=params, chunk_size=chunk_size)
    rows, cols, metrics = totals_of(keys, key_meta)

    def visit(_, carry):
        # A key block travels with its column totals; the row totals stay home.
        block, cols, rows, metrics = carry
        block, cols = shift((block, cols))
        r, c, m = totals_of(*block)
        return block, combine_totals(cols, c), combine_totals(rows, r), combine_totals(metrics, m)

    if num_dev > 1:
        # Constant metadata (e.g. the view index) must vary over the ring to travel in the loop carry.
        carry = (as_varying((keys, key_meta), axis_name), cols, rows, metrics)
        _, cols, rows, metrics = jax.lax.fori_loop(1, num_dev, visit, carry)
        # After D - 1 shifts a device holds the block of device i + 1: one more step returns it home.
        cols = shift(cols)
    losses = (finalize_fn(rows, aux), _finalize_keys(finalize_fn, cols), jax.lax.stop_gradient(metrics))
    return losses, (queries, query_meta, keys, key_meta, params, aux, rows, cols)


def _backward(block_fn, finalize_fn, axis_name, chunk_size, residuals, cotangents):
    queries, query_meta, keys, key_meta, params, aux, rows, cols = residuals
    _, finalize_vjp = jax.vjp(finalize_fn, rows, aux)
    as_f32 = lambda tree: jax.tree.map(lambda g: g.astype(jnp.float32), tree)
    row_ct, aux_ct = finalize_vjp(as_f32(cotangents[0]))  # metrics are not differentiated
    col_ct = cols
    if jax.tree.leaves(cols):
        col_ct = jax.vjp(lambda c: finalize_fn(c, None), cols)[1](as_f32(cotangents[1]))[0]
    num_dev = _num_devices(axis_name)
    shift = ring_shift(axis_name, num_dev)

    def grads_of(block):
        k, k_meta, c, c_ct = block
        return tiled_grads(block_fn, queries, query_meta, k, k_meta, params, (rows, c), (row_ct, c_ct), chunk_size)

    block = (keys, key_meta, cols, col_ct)
    d_queries, d_keys, d_params = grads_of(block)

    def visit(_, carry):
        # The key gradient travels with its block (and its column totals), collecting every contribution.
        block, d_block, d_q, d_p = carry
        block, d_block = shift((block, d_block))
        g_q, g_k, g_p = grads_of(block)
        return block, add_trees(d_block, g_k), add_trees(d_q, g_q), add_trees(d_p, g_p)

    if num_dev > 1:
        carry = (as_varying(block, axis_name), d_keys, d_queries, d_params)
        _, d_keys, d_queries, d_params = jax.lax.fori_loop(1, num_dev, visit, carry)
        d_keys = shift(d_keys)
    cast = lambda g, x: jax.tree.map(lambda g, x: g.astype(jnp.result_type(x)), g, x)
    return cast(d_queries, queries), None, cast(d_keys, keys), None, cast(d_params, params), aux_ct


ring_row_losses.defvjp(_forward, _backward)
