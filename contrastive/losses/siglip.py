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

Reduced to the mean, tiled on one device (``impl='gather'`` with a ``chunk_size``, what ``auto`` picks
from 4,096 rows) or on the ring (``impl='ring'``), the gradient is computed in the same pass as the loss
(``fused_siglip``): every pair's term is independent, so each tile's dL/dlogits is known as soon as its
logits are, and the generic streamed path's second pass (which recomputes every tile's logits for the
backward, 4 matmuls where the dense loss needs 3) is not needed. ``reduction='none'`` takes the generic
path.
"""

from __future__ import annotations

import functools

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
from contrastive.parallel.ring import as_varying, ring_shift
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


def fused_siglip(image: Array, text: Array, scale: Array, bias: Array, chunk: int, axis_name: str | None = None):
    """(global mean sigmoid loss, each local row's best negative logit ``t s_ij``) in chunk x chunk tiles,
    with the gradients computed in the forward pass (a custom VJP whose backward only scales them).

    Per tile, with l = t X_i Y_j^T + b and z = +1 on the diagonal of the global pair matrix, -1 elsewhere:
    the loss sum(softplus(-z l)) and g = dL/dl = -z sigmoid(-z l); then dX_i += t g Y_j, dY_j += t g^T X_i,
    dt += sum(g X_i Y_j^T), db += sum(g): three matmuls per tile, as the dense loss and its gradient need,
    where the generic streamed path recomputes every tile's logits in its backward (four). With
    ``axis_name`` (inside ``jax.shard_map``) the text blocks go around the ring of ``parallel.ring``
    (Zhai et al. 2023, Sec. 3.3), each with its gradient accumulator, which one last ppermute brings home;
    the loss is psum'd inside, so the one cotangent of the replicated output scales every gradient. Memory:
    O(b_local d + chunk^2) per device, nothing gathered.
    """
    num_dev = 1 if axis_name is None else jax.lax.axis_size(axis_name)
    b, d = image.shape
    n, rows = b // chunk, b * num_dev
    eye = jnp.eye(chunk, dtype=bool)
    shift = ring_shift(axis_name, num_dev)
    varying = functools.partial(as_varying, axis_name=axis_name)  # loop carries vary over the ring, as the tiles do

    def block(xs, ys, bias, own: bool, with_grads: bool):
        """One b x b block (query rows xs [n, chunk, d] against a text block ys), tile by tile."""

        def tile(x, y, positive):
            logits = x @ y.T + bias
            signed = jnp.where(positive, -logits, logits)  # -z l
            best = jnp.max(jnp.where(positive, -jnp.inf, logits - bias), axis=1)
            g = jnp.where(positive, -1.0, 1.0) * jax.nn.sigmoid(signed) if with_grads else None
            return jnp.sum(jax.nn.softplus(signed)), best, g, logits

        def row_block(carry, row):
            i, x = row

            def col_block(inner, col):
                j, y = col
                loss, best, g, logits = tile(x, y, eye & (i == j) & own)
                out = {"loss": inner["loss"] + loss, "best": jnp.maximum(inner["best"], best)}
                if not with_grads:
                    return out, None
                out |= {"dx": inner["dx"] + g @ y, "dt": inner["dt"] + jnp.sum(g * (logits - bias)),
                        "db": inner["db"] + jnp.sum(g)}
                return out, g.T @ x

            start = {"loss": carry["loss"], "best": varying(jnp.full((chunk,), -jnp.inf))}
            if with_grads:
                start |= {"dx": varying(jnp.zeros((chunk, d))), "dt": carry["dt"], "db": carry["db"]}
            inner, dy = jax.lax.scan(col_block, start, (jnp.arange(n), ys))
            out = {"loss": inner["loss"]}
            if with_grads:
                out |= {"dt": inner["dt"], "db": inner["db"], "dy": carry["dy"] + dy}
            return out, (inner["best"], inner.get("dx"))

        zero = jnp.zeros((), jnp.float32)
        start = {"loss": zero} | ({"dt": zero, "db": zero, "dy": jnp.zeros((n, chunk, d))} if with_grads else {})
        totals, (best, dx) = jax.lax.scan(row_block, varying(start), (jnp.arange(n), xs))
        dy = totals.pop("dy", None)
        return totals | {"best": best} | ({"dx": dx} if with_grads else {}), dy

    def run(image, text, scale, bias, with_grads: bool):
        xs = (image.astype(jnp.float32) * scale).reshape(n, chunk, d)  # the scale folded into the rows
        ys = text.astype(jnp.float32).reshape(n, chunk, d)
        acc, dy = block(xs, ys, bias, True, with_grads)  # the own block: the only one with positives
        if num_dev > 1:
            def visit(_, carry):
                ys, dy, acc = carry  # a text block travels with its gradient; the rest stays home
                ys, dy = shift((ys, dy))
                more, d_more = block(xs, ys, bias, False, with_grads)
                acc = {k: jnp.maximum(v, more[k]) if k == "best" else v + more[k] for k, v in acc.items()}
                return ys, (d_more if dy is None else dy + d_more), acc

            _, dy, acc = jax.lax.fori_loop(1, num_dev, visit, (ys, dy, acc))
            if with_grads:
                dy = shift(dy)  # after D - 1 shifts a device holds device i + 1's block: one more brings it home
        loss = acc["loss"] if axis_name is None else jax.lax.psum(acc["loss"], axis_name)
        out = (loss / rows, acc["best"].reshape(b))
        if not with_grads:
            return out, None
        grads = (scale * acc["dx"].reshape(b, d) / rows, dy.reshape(b, d) / rows, acc["dt"] / (scale * rows),
                 acc["db"] / rows)
        return out, grads

    @jax.custom_vjp
    def fused(image, text, scale, bias):
        return run(image, text, scale, bias, False)[0]

    def forward(image, text, scale, bias):
        return run(image, text, scale, bias, True)

    def backward(grads, cotangents):
        d_image, d_text, d_scale, d_bias = grads
        c = cotangents[0]  # the best negative logits are a metric: no gradient flows through them
        return ((c * d_image).astype(image.dtype), (c * d_text).astype(text.dtype), c * d_scale, c * d_bias)

    fused.defvjp(forward, backward)
    # Per-device scale and bias: the backward returns this device's part of their gradients, and the
    # transpose of the cast sums the parts (parallel.ring.as_varying).
    scale, bias = as_varying((scale, bias), axis_name)
    return fused(image, text, scale, bias)


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
    fusable = reduction == "mean"
    impl, chunk_size, _ = resolve_impl(impl, chunk_size, local_rows=b, axis_name=axis_name, dim=image.shape[-1],
                                       fused=fusable)
    params = {"scale": jnp.asarray(logit_scale, jnp.float32), "bias": jnp.asarray(logit_bias, jnp.float32)}
    ring = impl == "ring" and axis_name is not None
    if fusable and (ring or (axis_name is None and impl == "gather" and chunk_size is not None)):
        loss, best_neg_logit = fused_siglip(image, text, params["scale"], params["bias"], chunk_size or b,
                                            axis_name if ring else None)
        metrics = local_pair_metrics(cross_modal_positives(image, text, axis_name if ring else None),
                                     best_neg_logit, params["scale"], b * num_devices(axis_name if ring else None),
                                     axis_name if ring else None)
        return loss, metrics
    rows, _, metric_totals = block_row_losses(
        sigmoid_block_terms, sigmoid_rows, image, cross_modal_meta(b, 0, axis_name), text,
        cross_modal_meta(b, 1, axis_name), params, None, axis_name=axis_name, impl=impl, chunk_size=chunk_size,
    )
    metrics = local_pair_metrics(cross_modal_positives(image, text, axis_name), metric_totals[MAX]["best_neg_logit"],
                                 params["scale"], b * num_devices(axis_name), axis_name)
    return reduce_rows(rows, reduction, axis_name), metrics
