"""CLIP / ALIGN: the symmetric image-text InfoNCE loss.

Papers: Radford et al. "Learning Transferable Visual Models From Natural Language Supervision" (CLIP),
ICML 2021, Fig. 3 pseudocode; Jia et al. "Scaling Up Visual and Vision-Language Representation Learning
With Noisy Text Supervision" (ALIGN), ICML 2021, eqs. (1)-(2).

With image / text embeddings x_i, y_j of the GLOBAL batch of N pairs (taken as given: the model
L2-normalises them) and t = logit_scale::

    L_i2t = -(1/N) sum_i log( exp(t <x_i, y_i>) / sum_j exp(t <x_i, y_j>) )
    L_t2i = -(1/N) sum_i log( exp(t <y_i, x_i>) / sum_j exp(t <y_i, x_j>) )
    L     = (L_i2t + L_t2i) / 2

Each direction is a mean over the N anchors. Variants as in ``nt_xent`` (margins, debiasing, hardness,
top-k; see ``core.Variants``) apply to both directions; the angular margin and the debiasing floor
(|N(i)| exp(-t)) assume unit-norm inputs.
"""

from __future__ import annotations

import functools

import jax

from contrastive.losses.core import (
    Variants,
    check_positive,
    check_rank,
    check_same_shape,
    global_mean,
    pair_metrics,
    softmax_xent_rows,
)
from contrastive.losses.pairs import cross_modal_pairs
from contrastive.losses.streamed import cross_modal_xent, resolve_impl

Array = jax.Array


def symmetric_cross_modal_loss(
    image: Array,
    text: Array,
    *,
    logit_scale,
    axis_name: str | None,
    positives_in_denominator: bool,
    variants: Variants,
    impl: str = "auto",
    chunk_size: int | None = None,
) -> tuple[Array, dict[str, Array]]:
    """``(L_i2t + L_t2i) / 2`` on the shared core; shared by CLIP and InfoLOOB."""
    check_rank("image", image, 2)
    check_rank("text", text, 2)
    check_same_shape("image", image, "text", text)
    check_positive("logit_scale", logit_scale)
    impl, chunk_size, streamed = resolve_impl(
        impl, chunk_size, local_rows=image.shape[0], axis_name=axis_name, variants=variants, scale=logit_scale
    )
    if streamed:
        return _streamed_symmetric(
            image, text, logit_scale, axis_name, impl, chunk_size,
            positives_in_denominator=positives_in_denominator, variants=variants,
        )

    def one_direction(queries, keys):
        sim, positive_mask = cross_modal_pairs(queries, keys, axis_name)
        per_anchor = softmax_xent_rows(
            sim,
            positive_mask,
            ~positive_mask,
            scale=logit_scale,
            positives_in_denominator=positives_in_denominator,
            variants=variants,
        )
        return global_mean(per_anchor, axis_name), sim, positive_mask

    loss_i2t, sim, positive_mask = one_direction(image, text)
    loss_t2i, _, _ = one_direction(text, image)
    # Image->text retrieval; the pair similarities (pos_sim, neg_sim) are the same in both directions.
    metrics = pair_metrics(sim, positive_mask, positive_mask | ~positive_mask, axis_name)
    return 0.5 * (loss_i2t + loss_t2i), metrics


def _streamed_symmetric(image, text, logit_scale, axis_name, impl, chunk_size, **core_options):
    """The ring / tiled path (``losses.streamed``): both directions from the same tiles of logits."""
    stream = functools.partial(
        cross_modal_xent, scale=logit_scale, axis_name=axis_name, impl=impl, chunk_size=chunk_size, **core_options
    )
    if impl == "ring" or axis_name is None:
        per_image, per_text, metrics = stream(image, text, symmetric=True)
    else:  # gathered keys: a key's total would need every device's queries, so one pass per direction
        per_image, _, metrics = stream(image, text)
        per_text, _, _ = stream(text, image)
    return 0.5 * (global_mean(per_image, axis_name) + global_mean(per_text, axis_name)), metrics


def clip(
    image: Array,
    text: Array,
    *,
    logit_scale,
    axis_name: str | None = None,
    additive_margin: float = 0.0,
    angular_margin: float = 0.0,
    false_negative_prior: float = 0.0,
    hardness_concentration: float = 0.0,
    hardness_weight: float = 0.0,
    hardest_negatives: int | None = None,
    impl: str = "auto",
    chunk_size: int | None = None,
) -> tuple[Array, dict[str, Array]]:
    """Symmetric CLIP/ALIGN InfoNCE of the global batch.

    Args:
      image, text: [b, D] this device's paired embeddings (plain dot products, no normalisation).
      logit_scale: t > 0 multiplying the dot products (the scale itself, not its log).
      axis_name: mesh axis the batch is sharded over inside ``jax.shard_map``, or None.
      additive_margin, angular_margin, false_negative_prior, hardness_concentration,
        hardness_weight, hardest_negatives: variants, see ``contrastive.losses.core.Variants``.
      impl: "auto" (default), "gather" (all-gather the keys, dense b x B logits; the reference) or "ring"
        (pass key blocks around ``axis_name`` with ppermute, online log-sum-exp, custom VJP; see
        ``losses.streamed``). "auto" decides at trace time from the static shapes
        (``streamed.auto_impl``, where the threshold's measurements are): "gather" without chunks
        below ``streamed.AUTO_MIN_GLOBAL_ROWS`` global rows (here N), with ``hardest_negatives`` or a
        non-scalar logit_scale; otherwise "ring" when ``axis_name`` is set, else tiles of up to 512 rows.
      chunk_size: if set, tile each device's logits into chunk_size x chunk_size tiles (any impl; kept
        as given by "auto"); must divide the local anchor rows. ``hardest_negatives`` needs
        ``impl='gather'``, no chunks.

    Returns:
      (loss, metrics) with ``pos_sim``, ``neg_sim`` (mean dot product of matched / unmatched pairs)
      and ``top1_acc`` (image->text in-batch retrieval accuracy).
    """
    variants = Variants(
        additive_margin=additive_margin,
        angular_margin=angular_margin,
        false_negative_prior=false_negative_prior,
        hardness_concentration=hardness_concentration,
        hardness_weight=hardness_weight,
        hardest_negatives=hardest_negatives,
    )
    return symmetric_cross_modal_loss(
        image,
        text,
        logit_scale=logit_scale,
        axis_name=axis_name,
        positives_in_denominator=True,
        variants=variants,
        impl=impl,
        chunk_size=chunk_size,
    )
