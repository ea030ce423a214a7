"""How a loss is computed: the dense, ring and tiled paths of one block function, and ``impl='auto'``.

Papers: Cheng et al. 2024, "Breaking the Memory Barrier: Near Infinite Batch Size Scaling for Contrastive
Loss" (Inf-CL); Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training", Sec. 3.3 (the ring).

A loss is a *block function* (``contrastive.parallel.tiled`` format: per-pair terms whose row totals are
log-sum-exps, sums or maxima) and a *finalize* function (row totals -> per-row losses). It runs as

* dense (``impl='gather'``, no ``chunk_size``): the keys are all-gathered and the block function sees the
  whole b_local x B block once; JAX differentiates it (the reference path);
* tiled (``chunk_size``): the same block in chunk_size x chunk_size tiles, totals combined on the fly;
* ring (``impl='ring'``): key blocks travel around the devices (``contrastive.parallel.ring``, a custom
  VJP that recomputes the tiles), so no device holds b_local x B logits.

The softmax losses share :func:`softmax_block_terms` (the terms of ``core.softmax_terms``, with masks
made from per-row metadata) and ``core.finalize_rows``; ``siglip`` has its own block of sigmoid terms.
Every row and column carries ``(sample id, view, label)``: self = same id and view, positive = same label
and not self, negative = neither. Cross-modal layouts give queries view 0 and keys view 1 (so no pair is
"self") and use the sample id as the label. A per-row logit scale (one temperature per anchor) travels
with its rows, so it works on every path; a per-pair scale needs the dense path. Only
``hardest_negatives`` (top-k of the whole row) needs the dense path too.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from contrastive.losses.core import (
    PLAIN,
    Variants,
    finalize_rows,
    gather_rows,
    global_mean,
    global_sum,
    l2_normalize,
    num_devices,
    pair_metric_terms,
    pair_metrics,
    row_offset,
    similarity,
    softmax_terms,
)
from contrastive.parallel.ring import as_varying, ring_row_losses
from contrastive.parallel.tiled import LSE, MAX, check_chunk_size, num_rows, reduce_block

Array = jax.Array
IMPLS = ("auto", "gather", "ring")
REDUCTIONS = ("mean", "none")

# impl='auto' (the default of every loss on these paths) at trace time, from static shapes. Measured by
# experiments/loss_speed.py (experiments/results/loss_speed.md: CLIP and SigLIP forward + backward, one
# device, 2 CPU cores, B = 256-16,384, d = 128 and 512). The dense path holds b_local x B logits and makes
# several elementwise passes over them (memory-bound once they leave the cache); the tiled softmax losses
# keep each tile in cache but recompute the similarities in their backward (4 B x B x d matmuls instead of
# 3). So the tiled path wins earlier when the matmuls are cheap against the elementwise work: at 4,096 rows
# it was 1.31x dense for CLIP at d = 128 but 0.79x at d = 512, and 1.59x / 1.24x for SigLIP's fused tiled
# path (3 matmuls, its gradient in the forward pass) at d = 128 / 512; below 4,096 rows dense was the
# faster or within noise everywhere. From 8,192 rows the tiled path is kept at any d: memory linear in B,
# and faster than naive JAX at 16,384 (CLIP 2.64x / 1.49x at d = 128 / 512, SigLIP 1.62x / 1.23x).
# Several devices (8 virtual CPU devices, experiments/results/loss_speed_8dev.md): the ring beat the dense
# all-gather from 4,096 global rows at d = 128 and 512 (CLIP 1.50x / 1.65x, SigLIP's fused ring 1.10x /
# 1.08x; at 1,024 rows CLIP's ring 1.08-1.12x, SigLIP's 0.84-0.96x), so sharded losses ring from 4,096
# global rows at any d. Virtual devices share the host's memory: on an accelerator the ppermute latency
# differs and the crossover should be measured there (loss_speed.py --devices).
AUTO_MIN_GLOBAL_ROWS = 8192
AUTO_MIN_ROWS_CHEAP = 4096  # sharded, or one device where the tiled path is fused or d <= AUTO_CHEAP_DIM
AUTO_CHEAP_DIM = 256
AUTO_MAX_TILE = 512  # the benchmark's tile (loss_speed.md)
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
    local_rows: int, axis_size: int, *, sharded: bool, whole_rows: bool = False, pair_scale: bool = False,
    dim: int | None = None, fused: bool = False,
) -> tuple[str, int | None]:
    """(impl, chunk_size) that ``impl='auto'`` resolves to; pure Python on static shapes.

    Args:
      local_rows: this device's candidate (key) rows, e.g. 2b for nt_xent, b for clip, b V for supcon.
      axis_size: size of the sharded axis (1 without one); global rows = local_rows x axis_size.
      sharded: whether the loss runs with an ``axis_name``.
      whole_rows: a variant needs the whole row of logits (``hardest_negatives``).
      pair_scale: whether the temperature / logit scale is per pair (an array of rank >= 2, broadcast
        against the b_local x B logits); the streamed paths take a scalar or one value per row.
      dim: the embedding dimension (None: unknown, treated as large).
      fused: the one-device tiled path computes its gradient in the forward pass (3 matmuls, SigLIP).

    Rule: ``('gather', None)`` (dense b_local x B logits, the reference) when a variant needs whole rows,
    the scale is per pair, or the global rows are fewer than ``AUTO_MIN_GLOBAL_ROWS`` (8,192; below it
    the dense path is the faster and its b_local x B logits are small, see the comment above); the
    threshold is ``AUTO_MIN_ROWS_CHEAP`` (4,096) when sharded (the ring beat the all-gather from there) and
    on one device when the tiled path is ``fused`` or ``dim <= AUTO_CHEAP_DIM`` (256), where tiles beat
    dense's elementwise passes. Otherwise, sharded:
    ``('ring', auto_chunk_size(local_rows))`` (b x b blocks around the ring, tiled when the local block
    is larger than one tile); one device: ``('gather', auto_chunk_size(local_rows))`` (the tiled path),
    or the dense path when no tile divides the rows.
    """
    cheap = sharded or fused or (dim is not None and dim <= AUTO_CHEAP_DIM)
    if whole_rows or pair_scale or local_rows * axis_size < (AUTO_MIN_ROWS_CHEAP if cheap else AUTO_MIN_GLOBAL_ROWS):
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
    if streamed and jnp.ndim(scale) > 1:
        raise ValueError(
            "the ring/tiled paths need a scalar or per-row ([rows]) temperature / logit_scale, "
            f"got shape {jnp.shape(scale)}"
        )
    return streamed


def resolve_impl(
    impl: str, chunk_size, *, local_rows: int, axis_name: str | None, variants: Variants = PLAIN, scale=1.0,
    dim: int | None = None, fused: bool = False,
) -> tuple[str, int | None, bool]:
    """(impl, chunk_size, streamed) of a loss, validated; resolves ``impl='auto'`` (trace time).

    ``'gather'`` and ``'ring'`` are returned as given. ``'auto'`` picks the impl by :func:`auto_impl`
    from ``local_rows``, the axis size, ``variants``, the shape of ``scale``, ``dim`` and ``fused``; an explicit
    ``chunk_size`` is kept, otherwise auto's tile is used.
    """
    if impl == "auto":
        check_chunk_size(chunk_size)
        impl, auto_chunk = auto_impl(
            local_rows,
            num_devices(axis_name),
            sharded=axis_name is not None,
            whole_rows=variants.hardest_negatives is not None,
            pair_scale=jnp.ndim(scale) > 1,
            dim=dim,
            fused=fused,
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


def pair_masks(query_meta, key_meta):
    """(positive, negative) masks [rows, cols] of a tile from the rows' and columns' (id, view, label)."""
    (q_id, q_view, q_label), (k_id, k_view, k_label) = query_meta, key_meta
    is_self = (q_id[:, None] == k_id[None, :]) & (q_view[:, None] == k_view[None, :])
    pos = (q_label[:, None] == k_label[None, :]) & ~is_self
    return pos, ~is_self & ~pos


def split_scale(scale, rows: int, num_views: int = 1):
    """(params, row_scale): a scalar or per-pair scale is a parameter of the block; a per-sample [rows] (or
    [rows * num_views], view-major) one travels with its rows, tiled over the views."""
    scale = jnp.asarray(scale, jnp.float32)
    if jnp.ndim(scale) != 1:
        return {"scale": scale}, None
    if scale.shape[0] == rows:
        scale = jnp.tile(scale, num_views)
    if scale.shape[0] != rows * num_views:
        raise ValueError(f"a per-row scale must have shape [{rows}] or [{rows * num_views}], got {scale.shape}")
    return {}, scale


# ----------------------------------------------------------------------------------------- block terms
def softmax_block_terms(queries, query_meta, keys, key_meta, params, *, variants, min_similarity, symmetric):
    """(row, column, metric) terms of one tile: ``core.softmax_terms`` with masks from the metadata.

    ``queries`` and ``keys`` are (embeddings, per-row scale or None). With ``symmetric`` the keys are
    anchors too (CLIP's text->image direction): the positive relation is symmetric in the pair, so the
    column terms are the row terms (with the keys' own scales, if any) reduced per key.
    """
    (q, q_scale), (k, k_scale) = queries, keys
    pos, neg = pair_masks(query_meta, key_meta)
    sim = similarity(q, k)
    terms = functools.partial(softmax_terms, sim, positive_mask=pos, negative_mask=neg, variants=variants,
                              min_similarity=min_similarity)
    row_terms = terms(params["scale"] if q_scale is None else q_scale[:, None])
    col_terms = {}
    if symmetric:
        col_terms = row_terms if k_scale is None else terms(k_scale[None, :])
    return row_terms, col_terms, pair_metric_terms(sim, pos, neg)


# ----------------------------------------------------------------------------------------- the paths
def keys_for(impl: str, keys, key_meta, axis_name: str | None):
    """(keys, key_meta, ring axis): the local block to pass around the ring, or the gathered batch."""
    if impl == "ring" or axis_name is None:
        return keys, key_meta, axis_name
    # Gathered keys are O(B d), small; their gradient goes home through all_gather's transpose.
    return jax.tree.map(lambda x: gather_rows(x, axis_name), (keys, key_meta)) + (None,)


def block_row_losses(block_fn, finalize_fn, queries, query_meta, keys, key_meta, params, aux, *, axis_name, impl,
                     chunk_size):
    """(per-row losses, per-key losses or None, metric totals) of a block loss on the path ``impl`` asks for.

    ``impl`` is resolved ('gather' or 'ring'); see the module docstring. Per-key losses (the column terms)
    need the keys to stay local: one device, or the ring.
    """
    check_chunk_size(chunk_size, anchor_rows=num_rows(queries), candidate_rows=num_rows(keys))
    keys, key_meta, ring_axis = keys_for(impl, keys, key_meta, axis_name)
    if impl == "gather" and chunk_size is None:  # dense: one whole tile, differentiated by JAX
        rows, cols, metrics = reduce_block(block_fn, queries, query_meta, keys, key_meta, params)
        key_losses = finalize_fn(cols, None) if jax.tree.leaves(cols) else None
        return finalize_fn(rows, aux), key_losses, jax.lax.stop_gradient(metrics)
    queries, params = as_varying((queries, params), axis_name)
    return ring_row_losses(block_fn, finalize_fn, ring_axis, chunk_size, queries, query_meta, keys, key_meta, params,
                           aux)


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce_rows(rows: dict, reduction: str, axis_name: str | None):
    """``reduction='mean'``: the global mean of ``rows['loss']``; ``'none'``: the per-row dict itself."""
    return global_mean(rows["loss"], axis_name) if reduction == "mean" else rows


# ----------------------------------------------------------------------------------------- softmax entry points
def softmax_xent(queries, query_meta, keys, key_meta, params, *, axis_name, impl, chunk_size,
                 positives_in_denominator=True, variants: Variants = PLAIN, min_similarity=-1.0, positive_weight=None,
                 symmetric=False):
    """Per-anchor ``core.finalize_rows`` dicts of the queries (and of the keys, with ``symmetric``) and the
    global metrics, on the (resolved) path ``impl`` / ``chunk_size``."""
    block_fn = functools.partial(softmax_block_terms, variants=variants, min_similarity=min_similarity,
                                 symmetric=symmetric)
    finalize_fn = functools.partial(finalize_rows, positives_in_denominator=positives_in_denominator,
                                    variants=variants)
    rows, key_rows, metric_totals = block_row_losses(
        block_fn, finalize_fn, queries, query_meta, keys, key_meta, params, positive_weight,
        axis_name=axis_name, impl=impl, chunk_size=chunk_size,
    )
    return rows, key_rows, pair_metrics(metric_totals, axis_name)


def multi_view_xent(z: Array, labels: Array | None, *, scale, axis_name, impl, chunk_size, **options):
    """Per-anchor rows and metrics of the multi-view layout (NT-Xent, DCL, SupCon; cosine similarity).

    ``z`` is [b, V, D]; the anchors are the V b local views in view-major order (row ``v * b + i`` is view
    v of sample i) against the V B global views; positives are the other views of the same sample (or
    of any sample with the same label). ``scale``: scalar, per sample [b], per row [V b] or per pair.
    Plain InfoNCE without labels runs on :func:`infonce_xent` (the positives are local).
    """
    b, num_views, _ = z.shape
    params, row_scale = split_scale(scale, b, num_views)
    impl, chunk_size, _ = resolve_impl(impl, chunk_size, local_rows=b * num_views, axis_name=axis_name,
                                       variants=options.get("variants", PLAIN), scale=params.get("scale", 1.0),
                                       dim=z.shape[-1])
    unit = l2_normalize(z)
    rows = (jnp.swapaxes(unit, 0, 1).reshape(b * num_views, -1), row_scale)
    meta = multi_view_meta(b, num_views, labels, axis_name)
    if labels is None and is_plain(params, options):
        # Sample i's views against each other: [b, V, V] cosines; row (v, i)'s positives are w != v.
        gram = jnp.einsum("bvd,bwd->bvw", unit, unit)
        off = ~jnp.eye(num_views, dtype=bool)
        pos_sim = jnp.sum(jnp.where(off, gram, 0.0), -1) / (num_views - 1)
        best_pos = jnp.max(jnp.where(off, gram, -jnp.inf), -1)
        view_major = lambda x: jnp.swapaxes(x, 0, 1).reshape(-1)
        all_keys = global_sum(jnp.sum(rows[0], 0), axis_name)
        positives = LocalPositives(
            sim=view_major(pos_sim), best=view_major(best_pos), per_row=num_views - 1, self_pairs=True,
            sim_total=jnp.sum(rows[0] @ all_keys) - jnp.sum(rows[0] * rows[0]),
        )
        row_losses, _, metrics = infonce_xent(rows, meta, rows, meta, params, positives, axis_name=axis_name,
                                              impl=impl, chunk_size=chunk_size,
                                              positives_in_denominator=options.get("positives_in_denominator", True))
        return row_losses, metrics
    row_losses, _, metrics = softmax_xent(rows, meta, rows, meta, params, axis_name=axis_name, impl=impl,
                                          chunk_size=chunk_size, **options)
    return row_losses, metrics


def cross_modal_xent(queries: Array, keys: Array, *, scale, axis_name, impl, chunk_size, **options):
    """(query rows, key rows, metrics) of the cross-modal layout: both directions of CLIP-like losses.

    The positive of local query i is the key of the same global index; the keys are anchors of the other
    direction. ``scale``: scalar, per pair index [b] (pair i's scale in both directions) or per pair.
    Metrics are the query->key ones (the pair similarities are the same in both directions). Plain
    InfoNCE runs on :func:`infonce_xent` (the positives are local).
    """
    b = queries.shape[0]
    params, row_scale = split_scale(scale, b)
    impl, chunk_size, _ = resolve_impl(impl, chunk_size, local_rows=b, axis_name=axis_name,
                                       variants=options.get("variants", PLAIN), scale=params.get("scale", 1.0),
                                       dim=queries.shape[-1])
    q = ((queries, row_scale), cross_modal_meta(b, 0, axis_name))
    k = ((keys, row_scale), cross_modal_meta(b, 1, axis_name))
    if is_plain(params, options):
        lean = functools.partial(infonce_xent, params=params, positives=cross_modal_positives(queries, keys, axis_name),
                                 axis_name=axis_name, impl=impl, chunk_size=chunk_size,
                                 positives_in_denominator=options.get("positives_in_denominator", True))
        if impl == "ring" or axis_name is None:
            return lean(*q, *k, symmetric=True)  # both directions from the same tiles of logits
        query_rows, _, metrics = lean(*q, *k)
        key_rows, _, _ = lean(*k, *q)
        return query_rows, key_rows, metrics
    stream = functools.partial(softmax_xent, params=params, axis_name=axis_name, impl=impl, chunk_size=chunk_size,
                               **options)
    whole_rows = options.get("variants", PLAIN).hardest_negatives is not None  # a top-k per row, not per column
    if (impl == "ring" or axis_name is None) and jnp.ndim(params.get("scale", 1.0)) == 0 and not whole_rows:
        return stream(*q, *k, symmetric=True)  # both directions from the same tiles of logits
    # Gathered keys (a key's totals would need every device's queries), a per-pair scale or top-k: one pass each.
    query_rows, _, metrics = stream(*q, *k)
    key_rows, _, _ = stream(*k, *q)
    return query_rows, key_rows, metrics


# ----------------------------------------------------------------------------------------- plain InfoNCE
def is_plain(params, options) -> bool:
    """Whether a softmax loss is plain InfoNCE: no variant, no positive weight, a scalar or per-row scale."""
    return (options.get("variants", PLAIN) == PLAIN and options.get("positive_weight") is None
            and jnp.ndim(params.get("scale", 1.0)) == 0)


def cross_modal_positives(queries: Array, keys: Array, axis_name: str | None) -> LocalPositives:
    """The positives of the cross-modal layout: query i's is key i (both local)."""
    queries, keys = queries.astype(jnp.float32), keys.astype(jnp.float32)
    pair_sim = jnp.sum(queries * keys, -1)
    all_keys = global_sum(jnp.sum(keys, 0), axis_name)
    return LocalPositives(sim=pair_sim, best=pair_sim, sim_total=jnp.sum(queries @ all_keys), per_row=1,
                          self_pairs=False)


def local_pair_metrics(positives: LocalPositives, best_neg_logit, scale, candidates: int, axis_name):
    """``core.pair_metrics`` from the local positives and each row's best negative logit (``scale`` > 0 times
    the similarity, per row or a scalar): a row is a top-1 hit when its best positive logit beats it.
    ``candidates``: global columns per row (itself and its positives included)."""
    p = jax.lax.stop_gradient(positives)
    anchors = p.sim.shape[0] * num_devices(axis_name)
    pos_total = jnp.sum(p.sim) * p.per_row
    hits = jnp.sum(jax.lax.stop_gradient(p.best * scale) > best_neg_logit, dtype=jnp.float32)
    totals = global_sum({"pos": pos_total, "neg": p.sim_total - pos_total, "hits": hits}, axis_name)
    num_neg = float(anchors * (candidates - p.per_row - int(p.self_pairs)))  # past int32 from B = 46,341
    return {
        "pos_sim": totals["pos"] / (anchors * p.per_row),
        "neg_sim": totals["neg"] / max(num_neg, 1.0),
        "top1_acc": totals["hits"] / anchors,
    }


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LocalPositives:
    """What plain InfoNCE needs about the positives, computed from this device's rows alone (O(b d)).

    ``sim``: each row's mean positive similarity [rows]; ``best``: its largest [rows]; ``sim_total``: the sum
    of the similarities of this device's rows to all global non-self candidates (a scalar, from the sum of
    the keys). ``per_row`` positives per row; ``self_pairs``: whether each row meets itself as a column.
    """

    sim: Array
    best: Array
    sim_total: Array
    per_row: int = dataclasses.field(metadata={"static": True})
    self_pairs: bool = dataclasses.field(metadata={"static": True})


def infonce_block_terms(queries, query_meta, keys, key_meta, params, *, positives_in_denominator, self_pairs,
                        symmetric):
    """The one log-sum-exp term of plain InfoNCE on a tile: ``log D_i`` (module docstring of ``core``).

    With the positives in the denominator, ``D_i`` runs over every non-self column: no mask at all in the
    cross-modal layout (``self_pairs=False``); the leave-positive-out losses mask the positives. The only
    metric term is each row's best negative logit (top-1 accuracy compares it with the positive logit).
    """
    (q, q_scale), (k, k_scale) = queries, keys
    pos, neg = pair_masks(query_meta, key_meta)
    mask = (pos | neg if self_pairs else None) if positives_in_denominator else neg
    row_scale = params["scale"] if q_scale is None else q_scale[:, None]
    if symmetric and k_scale is not None:  # per-row scales in both directions: scale the similarities twice
        sim = similarity(q, k)
        row_terms = {LSE: {"denominator": (sim * row_scale, mask)}}
        col_terms = {LSE: {"denominator": (sim * k_scale[None, :], mask)}}
    else:  # scale the queries, not the b x b logits (one elementwise pass fewer)
        row_terms = {LSE: {"denominator": (similarity(q.astype(jnp.float32) * row_scale, k), mask)}}
        col_terms = row_terms if symmetric else {}
    best_neg = (jax.lax.stop_gradient(row_terms[LSE]["denominator"][0]), neg)
    return row_terms, col_terms, {MAX: {"best_neg_logit": best_neg}}


def infonce_rows(totals, _):
    return {"log_denominator": totals[LSE]["denominator"]}


def infonce_xent(queries, query_meta, keys, key_meta, params, positives: LocalPositives, *, axis_name, impl,
                 chunk_size, positives_in_denominator=True, symmetric=False):
    """``softmax_xent`` of plain InfoNCE whose positives are local rows (no labels, no variants).

    ``L_i = log D_i - c_i mean_p s_ip``: the tiles give only ``log D_i`` (one log-sum-exp per row, and per
    column with ``symmetric``: one exponential per logit and direction, as a hand-written loss has); the
    positive logits and the similarity metrics come from ``positives`` in O(b d). The key rows of a
    symmetric (cross-modal) layout have the same positive logits as the query rows.
    """
    block_fn = functools.partial(infonce_block_terms, positives_in_denominator=positives_in_denominator,
                                 self_pairs=positives.self_pairs, symmetric=symmetric)
    rows, key_rows, metric_totals = block_row_losses(
        block_fn, infonce_rows, queries, query_meta, keys, key_meta, params, None,
        axis_name=axis_name, impl=impl, chunk_size=chunk_size,
    )
    row_scale_or_scalar = params["scale"] if queries[1] is None else queries[1]
    pos_logit = positives.sim * row_scale_or_scalar
    with_loss = lambda r: None if r is None else {"loss": r["log_denominator"] - pos_logit} | r
    metrics = local_pair_metrics(positives, metric_totals[MAX]["best_neg_logit"], row_scale_or_scalar,
                                 num_rows(keys) * num_devices(axis_name), axis_name)
    return with_loss(rows), with_loss(key_rows), metrics
