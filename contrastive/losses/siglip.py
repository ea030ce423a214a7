"""SigLIP: the pairwise sigmoid image-text loss, computed as a ring of ppermutes across devices.

Paper: Zhai, Mustafa, Kolesnikov, Beyer. "Sigmoid Loss for Language Image Pre-Training", ICCV 2023,
Algorithm 1 (loss) and Sec. 3.3 ("chunked" efficient implementation).

With image / text embeddings x_i, y_j of the GLOBAL batch of N pairs (taken as given: plain dot
products), t = logit_scale, b = logit_bias, and z_ij = +1 if i == j else -1::

    L = -(1/N) sum_i sum_j log sigmoid( z_ij * (t <x_i, y_j> + b) )

i.e. the sum over all N^2 pairs divided by N. Every pair's term is independent of the others (no
softmax), so the loss needs no global normalisation:

* ``strategy="ring"`` (default): each device keeps its image rows and passes its text rows around a
  ring of ``jax.lax.ppermute`` (one step per device), accumulating a running sum of b_local x b_local
  blocks. A ``jax.custom_vjp`` runs the ring again in the backward pass and sends each text block's
  gradient along with it, so no device ever holds more than two text blocks or one logit block:
  memory O(b_local * (b_local + D)), nothing is gathered.
* ``strategy="all_gather"``: the reference path, b_local x N logits against the gathered texts.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from contrastive.losses.core import (
    check_positive,
    check_rank,
    check_same_shape,
    gather_rows,
    global_sum,
    num_devices,
    pair_metrics,
    row_offset,
    similarity,
)
from contrastive.losses.streamed import cross_modal_meta, keys_for, pair_metric_terms, streamed_metrics
from contrastive.parallel.ring import as_varying as as_varying_tree
from contrastive.parallel.ring import ring_row_losses
from contrastive.parallel.tiled import SUM, check_chunk_size

Array = jax.Array
STRATEGIES = ("ring", "all_gather")


def pair_labels(positive_mask: Array) -> Array:
    """z_ij: +1 on matching pairs, -1 elsewhere."""
    return jnp.where(positive_mask, 1.0, -1.0)


def sigmoid_block_loss(sim, positive_mask, scale, bias):
    """``sum_ij -log sigmoid(z_ij (t s_ij + b))`` of one block (softplus is the stable -log sigmoid)."""
    return jnp.sum(jax.nn.softplus(-pair_labels(positive_mask) * (scale * sim + bias)))


def sigmoid_block_logit_grad(sim, positive_mask, scale, bias):
    """d block_loss / d logit_ij = -z_ij * sigmoid(-z_ij * logit_ij)."""
    z = pair_labels(positive_mask)
    return -z * jax.nn.sigmoid(-z * (scale * sim + bias))


def _block_stats(sim, positive_mask):
    """Sums for the metrics of one block: positives, all pairs, best negative per row."""
    return (
        jnp.sum(jnp.where(positive_mask, sim, 0.0)),
        jnp.sum(sim),
        jnp.max(jnp.where(positive_mask, -jnp.inf, sim), axis=-1),
        jnp.sum(jnp.where(positive_mask, sim, 0.0), axis=-1),
    )


def _ring(axis_name, num_dev):
    """``x -> x of the previous device``; after k steps a device holds the block of device i - k."""
    if num_dev == 1:
        return lambda x: x
    perm = [(d, (d + 1) % num_dev) for d in range(num_dev)]
    return lambda x: jax.lax.ppermute(x, axis_name, perm)


def _diagonal(b_local):
    # Step 0 pairs local images with local texts, so the matching pairs are the block diagonal.
    return jnp.eye(b_local, dtype=bool)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def ring_sigmoid_loss(image, text, scale, bias, axis_name, num_dev):
    """This device's share of the summed pair losses, plus metric sums; see the module docstring."""
    return _ring_forward(image, text, scale, bias, axis_name, num_dev)[0]


def _ring_forward(image, text, scale, bias, axis_name, num_dev):
    shift = _ring(axis_name, num_dev)
    b_local = image.shape[0]
    no_pairs = jnp.zeros((b_local, b_local), bool)
    loss = pos_sum = all_sum = 0.0
    best_neg = jnp.full((b_local,), -jnp.inf)
    pos_row = jnp.zeros((b_local,))
    block = text
    for step in range(num_dev):
        positive_mask = _diagonal(b_local) if step == 0 else no_pairs
        sim = similarity(image, block)
        loss = loss + sigmoid_block_loss(sim, positive_mask, scale, bias)
        p, a, neg_max, p_row = _block_stats(sim, positive_mask)
        pos_sum, all_sum = pos_sum + p, all_sum + a
        best_neg, pos_row = jnp.maximum(best_neg, neg_max), pos_row + p_row
        if step < num_dev - 1:
            block = shift(block)
    hits = jnp.sum(pos_row > best_neg, dtype=jnp.float32)
    stats = jax.lax.stop_gradient((pos_sum, all_sum, hits))
    return (loss, stats), (image, text, scale, bias)


def _ring_backward(axis_name, num_dev, residuals, cotangents):
    image, text, scale, bias = residuals
    g = cotangents[0]  # the metric sums are not differentiated
    shift = _ring(axis_name, num_dev)
    b_local = image.shape[0]
    no_pairs = jnp.zeros((b_local, b_local), bool)
    d_image = jnp.zeros(image.shape, jnp.float32)
    d_scale = d_bias = jnp.zeros((), jnp.float32)
    block, d_block = text, jnp.zeros(text.shape, jnp.float32)
    for step in range(num_dev):
        positive_mask = _diagonal(b_local) if step == 0 else no_pairs
        sim = similarity(image, block)
        d_logits = g * sigmoid_block_logit_grad(sim, positive_mask, scale, bias)
        d_image = d_image + scale * d_logits @ block.astype(jnp.float32)
        # The text gradient travels with its block, collecting every device's contribution.
        d_block = d_block + scale * d_logits.T @ image.astype(jnp.float32)
        d_scale, d_bias = d_scale + jnp.sum(d_logits * sim), d_bias + jnp.sum(d_logits)
        if step < num_dev - 1:
            block, d_block = shift(block), shift(d_block)
    # After num_dev - 1 steps a device holds the block of device i + 1: one more step returns it home.
    d_text = shift(d_block)
    return (
        d_image.astype(image.dtype),
        d_text.astype(text.dtype),
        d_scale.astype(scale.dtype),
        d_bias.astype(bias.dtype),
    )


ring_sigmoid_loss.defvjp(_ring_forward, _ring_backward)


def _siglip_ring(image, text, scale, bias, axis_name):
    num_dev = num_devices(axis_name)
    args = [as_varying_tree(jnp.asarray(a, jnp.float32), axis_name) for a in (scale, bias)]
    loss_sum, (pos_sum, all_sum, hits) = ring_sigmoid_loss(
        image, text, *args, axis_name, num_dev
    )
    b_local = image.shape[0]
    n = b_local * num_dev
    loss_sum, pos_sum, all_sum, hits = global_sum((loss_sum, pos_sum, all_sum, hits), axis_name)
    metrics = {
        "pos_sim": pos_sum / n,
        "neg_sim": (all_sum - pos_sum) / max(n * n - n, 1),
        "top1_acc": hits / n,
    }
    return loss_sum / n, metrics


def sigmoid_block_terms(image, image_meta, text, text_meta, params):
    """One tile of the sigmoid loss as row sums (``contrastive.parallel.tiled`` format)."""
    positive_mask = image_meta[0][:, None] == text_meta[0][None, :]
    sim = similarity(image, text)
    pair_losses = jax.nn.softplus(-pair_labels(positive_mask) * (params["scale"] * sim + params["bias"]))
    loss_terms = {SUM: {"loss": (pair_losses, jnp.ones_like(positive_mask))}}
    return loss_terms, {}, pair_metric_terms(sim, positive_mask, ~positive_mask)


def _siglip_tiled(image, text, scale, bias, axis_name, strategy, chunk_size):
    """The ring (or gathered texts) in chunk_size x chunk_size tiles: no b_local x b_local block either."""
    check_chunk_size(chunk_size, rows=image.shape[0])
    b = image.shape[0]
    impl = "ring" if strategy == "ring" else "gather"
    text, text_meta, ring_axis = keys_for(impl, text, cross_modal_meta(b, 1, axis_name), axis_name)
    params = {"scale": jnp.asarray(scale, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}
    params = as_varying_tree(params, axis_name)
    row_losses, _, metric_totals = ring_row_losses(
        sigmoid_block_terms, lambda totals, _: totals[SUM]["loss"], ring_axis, chunk_size,
        image, cross_modal_meta(b, 0, axis_name), text, text_meta, params, None,
    )
    n = b * num_devices(axis_name)
    return global_sum(jnp.sum(row_losses), axis_name) / n, streamed_metrics(metric_totals, axis_name)


def _siglip_all_gather(image, text, scale, bias, axis_name):
    global_text = gather_rows(text, axis_name)
    sim = similarity(image, global_text)
    rows = row_offset(image.shape[0], axis_name) + jnp.arange(image.shape[0])
    positive_mask = rows[:, None] == jnp.arange(global_text.shape[0])[None, :]
    scale, bias = jnp.asarray(scale, jnp.float32), jnp.asarray(bias, jnp.float32)
    loss_sum = global_sum(sigmoid_block_loss(sim, positive_mask, scale, bias), axis_name)
    metrics = pair_metrics(sim, positive_mask, jnp.ones_like(positive_mask), axis_name)
    return loss_sum / global_text.shape[0], metrics


def siglip(
    image: Array,
    text: Array,
    *,
    logit_scale,
    logit_bias,
    axis_name: str | None = None,
    strategy: str = "ring",
    chunk_size: int | None = None,
) -> tuple[Array, dict[str, Array]]:
    """SigLIP sigmoid loss of the global batch (sum over all N^2 pairs, divided by N).

    Args:
      image, text: [b, D] this device's paired embeddings (plain dot products, no normalisation).
      logit_scale: t > 0 multiplying the dot products (the scale itself, not its log).
      logit_bias: b added to every logit (SigLIP initialises it at -10).
      axis_name: mesh axis the batch is sharded over inside ``jax.shard_map``, or None.
      strategy: "ring" (ppermute ring with a custom VJP, never gathers) or "all_gather" (reference).
      chunk_size: if set, also tile each block into chunk_size x chunk_size tiles (either strategy; the
        generic ``contrastive.parallel.ring`` machinery); must divide the local rows.

    Returns:
      (loss, metrics) with ``pos_sim``, ``neg_sim`` (mean dot product of matched / unmatched pairs)
      and ``top1_acc`` (image->text in-batch retrieval accuracy).
    """
    check_rank("image", image, 2)
    check_rank("text", text, 2)
    check_same_shape("image", image, "text", text)
    check_positive("logit_scale", logit_scale)
    if jnp.ndim(logit_bias) != 0:
        raise ValueError(f"logit_bias must be a scalar, got shape {jnp.shape(logit_bias)}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if jnp.ndim(logit_scale) != 0:
        raise ValueError(f"logit_scale must be a scalar, got shape {jnp.shape(logit_scale)}")
    if chunk_size is not None:
        return _siglip_tiled(image, text, logit_scale, logit_bias, axis_name, strategy, chunk_size)
    impl = _siglip_ring if strategy == "ring" else _siglip_all_gather
    return impl(image, text, logit_scale, logit_bias, axis_name)
