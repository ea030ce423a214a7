"""``softmax_xent_rows`` as streamed row totals: the ring (``impl='ring'``) and tiled (``chunk_size``) paths.

Papers: Cheng et al. 2024, "Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive
Loss" (Inf-CL); Khosla et al. 2020 (the L_out form of ``core.softmax_xent_rows``).

``core.softmax_xent_rows`` needs, per anchor row i, only these totals over its candidates j::

    log sum_{P(i)} exp(l+_ij)     sum_{P(i)} l+_ij     |P(i)|     |N(i)|      (l+ = margin logits)
    log sum_{N(i)} exp(w_ij)                           (w = l + alpha sg(s), LLaVE weights)
    log sum_{N(i)} exp(w_ij + beta l_ij), log sum_{N(i)} exp(beta l_ij)      (Robinson et al. hardness)
    log sum_{N(i)} exp(c s_min)                        (Chuang et al. debiasing floor)

each a log-sum-exp or a sum, so it can be accumulated over key blocks and tiles without ever holding a
row of logits (``contrastive.parallel.tiled`` / ``ring``); :func:`finalize_rows` then applies the same
formula as the dense core. Only ``hardest_negatives`` (top-k of the whole row) does not decompose.

Which pairs are positives is decided from per-row metadata instead of masks: every row and column
carries ``(sample id, view, label)``; self = same id and view, positive = same label and not self,
negative = neither. Cross-modal layouts give queries view 0 and keys view 1 (so no pair is "self")
and use the sample id as the label.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from contrastive.losses.core import (
    PLAIN,
    Variants,
    _log_debiased_mass,
    gather_rows,
    global_sum,
    l2_normalize,
    margin_similarity,
    num_devices,
    row_offset,
    similarity,
)
from contrastive.parallel.ring import as_varying, ring_row_losses
from contrastive.parallel.tiled import LSE, MAX, SUM, check_chunk_size

Array = jax.Array
IMPLS = ("auto", "gather", "ring")

# impl='auto' (the default of the softmax losses) at trace time, from static shapes. Measured in
# experiments/results/loss_memory.md (CLIP forward + backward, 2 shared CPU cores, tiles of 512, one run of
# the full sweep): from B = 4,096 global candidate rows on, the streamed paths are 1.7-3.8x faster than
# gather on 1 and 8 devices, d = 128 and 512 (e.g. 8 devices, d = 128: 0.608 s gather vs 0.268 s ring at
# 4,096), while gather's peak grows as b_local x B (8.47 GiB at 16,384 vs 0.40 GiB tiled). Below 4,096
# neither is faster in every run on this noisy machine (8 devices, d = 128: gather 0.032 / 0.100 s vs ring
# 0.035 / 0.116 s at 1,024 / 2,048; one device had tiled 2.2x faster there in that run, gather faster at
# 1,024 in an earlier one), so the dense reference path is kept below 4,096 (then at most 16 M logits).
AUTO_MIN_GLOBAL_ROWS = 4096
AUTO_MAX_TILE = 512  # the benchmark's tile (B = 16,384: 45% / 65% of the square-matmul FLOP/s at d = 128 / 512)
AUTO_MIN_TILE = 128  # smaller tiles are mostly loop overhead; then no tiling (or gather on 1 device)


def auto_chunk_size(rows: int) -> int | None:
    """The tile ``impl='auto'`` uses for ``rows`` local rows, or None (one block: no tiling).

    The largest power of two in [AUTO_MIN_TILE, AUTO_MAX_TILE] dividing ``rows``, else the largest
    divisor in that range; None when there is none or the block is no larger than one tile.
    """
    if rows <= AUTO_MAX_TILE:
        return None
    tiles = [t for t in range(AUTO_MAX_TILE, AUTO_MIN_TILE - 1, -1) if rows % t == 0]
    powers_of_two = [t for t in tiles if t & (t - 1) == 0]
    return (powers_of_two or tiles or [None])[0]


def auto_impl(
    local_rows: int, axis_size: int, *, sharded: bool, whole_rows: bool = False, scalar_scale: bool = True
) -> tuple[str, int | None]:
    """(impl, chunk_size) that ``impl='auto'`` resolves to; pure Python on static shapes.

    Args:
      local_rows: this device's candidate (key) rows, e.g. 2b for nt_xent, b for clip, b V for supcon.
      axis_size: size of the sharded axis (1 without one); global rows = local_rows x axis_size.
      sharded: whether the loss runs with an ``axis_name``.
      whole_rows: a variant needs the whole row of logits (``hardest_negatives``).
      scalar_scale: whether the temperature / logit scale is a scalar (the streamed paths need one).

    Rule: ``('gather', None)`` (dense b_local x B logits, the reference) when a variant needs whole rows,
    the scale is not a scalar, or the global rows are fewer than ``AUTO_MIN_GLOBAL_ROWS`` (4,096; where
    the benchmark measured the streamed paths faster, see the comment above). Otherwise, sharded:
    ``('ring', auto_chunk_size(local_rows))`` (b x b blocks around the ring, tiled when the local block
    is larger than one tile); one device: ``('gather', auto_chunk_size(local_rows))`` (the tiled path),
    or the dense path when no tile divides the rows.
    """
    if whole_rows or not scalar_scale or local_rows * axis_size < AUTO_MIN_GLOBAL_ROWS:
        return "gather", None
    chunk = auto_chunk_size(local_rows)
    return ("ring" if sharded else "gather"), chunk


def check_impl(impl: str, chunk_size, variants: Variants = PLAIN, scale=1.0) -> bool:
    """Validate a resolved ``impl`` / ``chunk_size``; True when the streamed (ring or tiled) path is asked for."""
    if impl not in IMPLS or impl == "auto":
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    check_chunk_size(chunk_size)
    streamed = impl == "ring" or chunk_size is not None
    if streamed and variants.hardest_negatives is not None:
        raise ValueError(
            "hardest_negatives needs the whole row of logits (top-k) and is only supported with "
            "impl='gather' and chunk_size=None"
        )
    if streamed and jnp.ndim(scale) != 0:
        raise ValueError(f"the ring/tiled paths need a scalar temperature / logit_scale, got shape {jnp.shape(scale)}")
    return streamed


def resolve_impl(
    impl: str, chunk_size, *, local_rows: int, axis_name: str | None, variants: Variants = PLAIN, scale=1.0
) -> tuple[str, int | None, bool]:
    """(impl, chunk_size, streamed) of a softmax loss, validated; resolves ``impl='auto'`` (trace time).

    ``'gather'`` and ``'ring'`` are returned as given. ``'auto'`` picks the impl by :func:`auto_impl`
    from ``local_rows``, the axis size, ``variants`` and the shape of ``scale``; an explicit
    ``chunk_size`` is kept, otherwise auto's tile is used.
    """
    if impl == "auto":
        check_chunk_size(chunk_size)
        impl, auto_chunk = auto_impl(
            local_rows,
            num_devices(axis_name),
            sharded=axis_name is not None,
            whole_rows=variants.hardest_negatives is not None,
            scalar_scale=jnp.ndim(scale) == 0,
        )
        chunk_size = auto_chunk if chunk_size is None else chunk_size
    return impl, chunk_size, check_impl(impl, chunk_size, variants, scale)


# ----------------------------------------------------------------------------------------- metadata
def multi_view_meta(num_local: int, num_views: int, labels: Array | None, axis_name: str | None):
    """(id, view, label) of this device's view-major rows ``v * b + i``."""
    ids = jnp.tile(row_offset(num_local, axis_name) + jnp.arange(num_local), num_views)
    views = jnp.repeat(jnp.arange(num_views), num_local)
    return ids, views, ids if labels is None else jnp.tile(labels, num_views)


def cross_modal_meta(num_local: int, view: int, axis_name: str | None):
    ids = row_offset(num_local, axis_name) + jnp.arange(num_local)
    return ids, jnp.full((num_local,), view), ids


# ----------------------------------------------------------------------------------------- block terms
def softmax_block_terms(queries, query_meta, keys, key_meta, params, *, variants, min_similarity, symmetric):
    """(row, column, metric) terms of one tile (``contrastive.parallel.tiled`` format).

    With ``symmetric`` the keys are anchors too (CLIP's text->image direction): the positive relation
    and every term are symmetric in the pair, so the column terms are the row terms reduced per key.
    """
    (q_id, q_view, q_label), (k_id, k_view, k_label) = query_meta, key_meta
    is_self = (q_id[:, None] == k_id[None, :]) & (q_view[:, None] == k_view[None, :])
    pos = (q_label[:, None] == k_label[None, :]) & ~is_self
    neg = ~is_self & ~pos
    scale = params["scale"]
    sim = similarity(queries, keys)
    logits = sim * scale
    pos_logits = margin_similarity(sim, variants) * scale
    weighted = logits
    if variants.hardness_weight:
        weighted = logits + variants.hardness_weight * jax.lax.stop_gradient(sim)
    ones = jnp.ones_like(sim)
    lse = {"pos": (pos_logits, pos), "neg": (weighted, neg)}
    if variants.hardness_concentration:
        beta = variants.hardness_concentration
        lse |= {"concentrated": (weighted + beta * logits, neg), "beta": (beta * logits, neg)}
    if variants.false_negative_prior:
        lse["floor"] = (jnp.broadcast_to(min_similarity * scale, sim.shape), neg)
    loss_terms = {LSE: lse, SUM: {"pos_logit": (pos_logits, pos), "num_pos": (ones, pos), "num_neg": (ones, neg)}}
    return loss_terms, loss_terms if symmetric else {}, pair_metric_terms(sim, pos, neg)


def pair_metric_terms(sim, pos, neg):
    """Metric terms of one tile: the sums and maxima behind :func:`streamed_metrics`."""
    sim, ones = jax.lax.stop_gradient(sim), jnp.ones_like(sim)
    return {
        SUM: {"pos": (sim, pos), "num_pos": (ones, pos), "neg": (sim, neg), "num_neg": (ones, neg)},
        MAX: {"best_pos": (sim, pos), "best_neg": (sim, neg)},
    }


def finalize_rows(totals, positive_weight, *, positives_in_denominator: bool, variants: Variants):
    """Per-anchor ``L_i`` of ``core.softmax_xent_rows`` from its row totals."""
    lse, sums = totals[LSE], totals[SUM]
    has_pos = sums["num_pos"] > 0
    safe_num_pos = jnp.maximum(sums["num_pos"], 1.0)
    mean_pos_logit = sums["pos_logit"] / safe_num_pos
    log_pos_mass = lse["pos"]
    log_mean_pos = jnp.where(has_pos, log_pos_mass, 0.0) - jnp.log(safe_num_pos)
    log_count = jnp.log(jnp.maximum(sums["num_neg"], 1.0))
    log_mass = lse["neg"]
    if variants.hardness_concentration:
        log_mass = log_count + lse["concentrated"] - lse["beta"]
    if variants.false_negative_prior:
        prior = variants.false_negative_prior
        log_prior_mass = math.log(prior) + log_count + log_mean_pos
        log_mass = _log_debiased_mass(log_mass, log_prior_mass, lse["floor"], prior)
    log_denominator = jnp.logaddexp(log_pos_mass, log_mass) if positives_in_denominator else log_mass
    if positive_weight is not None:
        mean_pos_logit = positive_weight * mean_pos_logit
    return jnp.where(has_pos, log_denominator - mean_pos_logit, 0.0)


def streamed_metrics(metric_totals, axis_name: str | None) -> dict[str, Array]:
    """``core.pair_metrics`` from streamed totals (a hit: the best positive beats the best negative)."""
    sums, best = metric_totals[SUM], metric_totals[MAX]
    has_pos = sums["num_pos"] > 0
    hits = jnp.sum(has_pos & (best["best_pos"] > best["best_neg"]), dtype=jnp.float32)
    totals = {name: jnp.sum(v) for name, v in sums.items()}
    totals = global_sum(totals | {"hits": hits, "anchors": jnp.sum(has_pos, dtype=jnp.float32)}, axis_name)
    ratio = lambda a, b: totals[a] / jnp.maximum(totals[b], 1.0)
    return {
        "pos_sim": ratio("pos", "num_pos"),
        "neg_sim": ratio("neg", "num_neg"),
        "top1_acc": ratio("hits", "anchors"),
    }


# ----------------------------------------------------------------------------------------- entry point
def keys_for(impl: str, keys: Array, key_meta, axis_name: str | None):
    """(keys, key_meta, ring axis): the local block to pass around the ring, or the gathered batch."""
    if impl == "ring" or axis_name is None:
        return keys, key_meta, axis_name
    # Gathered keys are O(B d), small; their gradient goes home through all_gather's transpose.
    return gather_rows(keys, axis_name), jax.tree.map(lambda m: gather_rows(m, axis_name), key_meta), None


def streamed_softmax_xent(
    queries: Array,
    query_meta,
    keys: Array,
    key_meta,
    *,
    scale,
    axis_name: str | None,
    impl: str,
    chunk_size: int | None,
    positives_in_denominator: bool = True,
    variants: Variants = PLAIN,
    min_similarity: float = -1.0,
    positive_weight: Array | None = None,
    symmetric: bool = False,
):
    """Per-anchor losses [rows], per-key losses [keys] (or None) and global metrics, without b_local x B logits.

    ``queries`` are this device's anchors; ``keys`` this device's candidates. With ``impl='ring'`` the
    key blocks travel around ``axis_name`` (``contrastive.parallel.ring``); with ``impl='gather'`` the
    keys are all-gathered (O(B d), small) and only the logits are tiled. ``chunk_size`` tiles both.
    ``symmetric`` also returns the keys' own losses from the same tiles (the keys must not be gathered).
    """
    check_chunk_size(chunk_size, anchor_rows=queries.shape[0], candidate_rows=keys.shape[0])
    if impl == "gather" and axis_name is not None and symmetric:
        raise ValueError("symmetric streamed losses need impl='ring' when the batch is sharded")
    keys, key_meta, ring_axis = keys_for(impl, keys, key_meta, axis_name)
    block_fn = functools.partial(
        softmax_block_terms, variants=variants, min_similarity=min_similarity, symmetric=symmetric
    )
    finalize_fn = functools.partial(
        finalize_rows, positives_in_denominator=positives_in_denominator, variants=variants
    )
    params = as_varying({"scale": jnp.asarray(scale, jnp.float32)}, axis_name)
    row_losses, key_losses, metric_totals = ring_row_losses(
        block_fn, finalize_fn, ring_axis, chunk_size, queries, query_meta, keys, key_meta, params, positive_weight
    )
    return row_losses, key_losses, streamed_metrics(metric_totals, axis_name)


def multi_view_xent(z: Array, labels: Array | None, *, scale, axis_name, impl, chunk_size, **core_options):
    """Streamed ``softmax_xent_rows`` on the multi-view layout of ``pairs.multi_view_pairs`` (cosine)."""
    b, num_views, _ = z.shape
    rows = jnp.swapaxes(l2_normalize(z), 0, 1).reshape(b * num_views, -1)  # view-major, like the dense path
    meta = multi_view_meta(b, num_views, labels, axis_name)
    row_losses, _, metrics = streamed_softmax_xent(
        rows, meta, rows, meta, scale=scale, axis_name=axis_name, impl=impl, chunk_size=chunk_size, **core_options
    )
    return row_losses, metrics


def cross_modal_xent(queries: Array, keys: Array, *, scale, axis_name, impl, chunk_size, **core_options):
    """Streamed ``softmax_xent_rows`` on the cross-modal layout of ``pairs.cross_modal_pairs``.

    Returns (query losses, key losses or None, metrics); pass ``symmetric=True`` for the key losses.
    """
    b = queries.shape[0]
    return streamed_softmax_xent(
        queries,
        cross_modal_meta(b, 0, axis_name),
        keys,
        cross_modal_meta(b, 1, axis_name),
        scale=scale,
        axis_name=axis_name,
        impl=impl,
        chunk_size=chunk_size,
        **core_options,
    )
