"""SigLIP: the pairwise sigmoid image-text loss.

Paper: Zhai, Mustafa, Kolesnikov, Beyer. "Sigmoid Loss for Language Image Pre-Training", ICCV 2023,
Algorithm 1 (loss) and Sec. 3.3 ("chunked" efficient implementation).

With image / text embeddings x_i, y_j of the GLOBAL batch of N pairs (taken as given: plain dot
products), t = logit_scale, b = logit_bias, and z_ij = +1 if i == j else -1::

    l_i = sum_j -log sigmoid( z_ij * (t <x_i, y_j> + b) )       (image i's row of pair losses)
    L   = (1/N) sum_i l_i

i.e. the sum over all N^2 pairs divided by N. Every pair's term is independent of the others (no
softmax), so a row's loss is a plain sum over its columns: the block function below runs on the paths of
``losses.streamed`` like the softmax losses — dense against the all-gathered texts (``impl='gather'``),
text blocks passed around a ``ppermute`` ring with a custom VJP that never gathers (``impl='ring'``, Sec.
3.3), each optionally in chunk_size x chunk_size tiles, and ``impl='auto'`` by ``streamed.auto_impl``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from contrastive.losses.core import check_positive, check_rank, check_same_shape, num_devices, similarity
from contrastive.losses.streamed import (
    block_row_losses,
    check_reduction,
    cross_modal_meta,
    cross_modal_positives,
    local_pair_metrics,
    pair_masks,
    reduce_rows,
    resolve_impl,
)
from contrastive.parallel.tiled import MAX, SUM

Array = jax.Array


def sigmoid_pair_losses(sim, positive_mask, scale, bias):
    """``-log sigmoid(z_ij (t s_ij + b))`` of every pair of a block (softplus is the stable -log sigmoid)."""
    return jax.nn.softplus(-jnp.where(positive_mask, 1.0, -1.0) * (scale * sim + bias))


def sigmoid_block_terms(image, image_meta, text, text_meta, params):
    """One tile of the sigmoid loss as row sums (``contrastive.parallel.tiled`` format).

    The scale multiplies the images before the matmul (one elementwise pass over the tile fewer); the only
    metric term is each row's best negative logit (the similarity metrics come from the local rows,
    ``streamed.local_pair_metrics``)."""
    positive_mask, negative_mask = pair_masks(image_meta, text_meta)
    scaled = similarity(image.astype(jnp.float32) * params["scale"], text)
    pair_losses = sigmoid_pair_losses(scaled, positive_mask, 1.0, params["bias"])
    metric_terms = {MAX: {"best_neg_logit": (jax.lax.stop_gradient(scaled), negative_mask)}}
    return {SUM: {"loss": (pair_losses, None)}}, {}, metric_terms


def sigmoid_rows(totals, _):
    return {"loss": totals[SUM]["loss"]}


def siglip(
    image: Array,
    text: Array,
    *,
    logit_scale,
    logit_bias,
    axis_name: str | None = None,
    impl: str = "auto",
    chunk_size: int | None = None,
    reduction: str = "mean",
):
    """SigLIP sigmoid loss of the global batch (sum over all N^2 pairs, divided by N).

    Args:
      image, text: [b, D] this device's paired embeddings (plain dot products, no normalisation).
      logit_scale: t > 0 multiplying the dot products (the scale itself, not its log); a scalar.
      logit_bias: b added to every logit (SigLIP initialises it at -10).
      axis_name: mesh axis the batch is sharded over inside ``jax.shard_map``, or None.
      impl, chunk_size: as in ``nt_xent``: "auto" (default, ``streamed.auto_impl``), "gather" (dense
        rows against the all-gathered texts; the reference) or "ring" (text blocks around the ppermute
        ring, custom VJP, never gathers); ``chunk_size`` tiles either (must divide the local rows).
      reduction: "mean" (the loss) or "none": this device's per-image rows ``{"loss": l_i}`` [b].

    Returns:
      (loss, metrics) with ``pos_sim``, ``neg_sim`` (mean dot product of matched / unmatched pairs)
      and ``top1_acc`` (image->text in-batch retrieval accuracy).
    """
    check_rank("image", image, 2)
    check_rank("text", text, 2)
    check_same_shape("image", image, "text", text)
    check_positive("logit_scale", logit_scale)
    check_reduction(reduction)
    for name, value in (("logit_scale", logit_scale), ("logit_bias", logit_bias)):
        if jnp.ndim(value) != 0:
            raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(value)}")
    b = image.shape[0]
    impl, chunk_size, _ = resolve_impl(impl, chunk_size, local_rows=b, axis_name=axis_name)
    params = {"scale": jnp.asarray(logit_scale, jnp.float32), "bias": jnp.asarray(logit_bias, jnp.float32)}
    rows, _, metric_totals = block_row_losses(
        sigmoid_block_terms, sigmoid_rows, image, cross_modal_meta(b, 0, axis_name), text,
        cross_modal_meta(b, 1, axis_name), params, None, axis_name=axis_name, impl=impl, chunk_size=chunk_size,
    )
    metrics = local_pair_metrics(cross_modal_positives(image, text, axis_name), metric_totals[MAX]["best_neg_logit"],
                                 params["scale"], b * num_devices(axis_name), axis_name)
    return reduce_rows(rows, reduction, axis_name), metrics
