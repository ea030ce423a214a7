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
(|N(i)| exp(-t)) assume unit-norm inputs. ``logit_scale`` may be one per pair index ([b]: pair i's
scale in both directions). ``reduction='none'`` returns per-pair rows instead of the mean.
"""

from __future__ import annotations

import jax

from contrastive.losses.core import Variants, check_positive, check_rank, check_same_shape
from contrastive.losses.streamed import check_reduction, cross_modal_xent, reduce_rows

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
    reduction: str = "mean",
):
    """``(L_i2t + L_t2i) / 2`` on the softmax engine; shared by CLIP and InfoLOOB.

    The per-pair rows (``reduction='none'``) are ``loss = (l_i2t + l_t2i) / 2`` (its global mean is the
    loss), each direction's ``loss_i2t`` / ``loss_t2i`` and ``log_denominator_i2t`` / ``_t2i``, all [b].
    """
    check_rank("image", image, 2)
    check_rank("text", text, 2)
    check_same_shape("image", image, "text", text)
    check_positive("logit_scale", logit_scale)
    check_reduction(reduction)
    image_rows, text_rows, metrics = cross_modal_xent(
        image, text, scale=logit_scale, axis_name=axis_name, impl=impl, chunk_size=chunk_size,
        positives_in_denominator=positives_in_denominator, variants=variants,
    )
    rows = {"loss": 0.5 * (image_rows["loss"] + text_rows["loss"])}
    for direction, part in (("i2t", image_rows), ("t2i", text_rows)):
        rows |= {f"{name}_{direction}": value for name, value in part.items()}
    return reduce_rows(rows, reduction, axis_name), metrics


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
    reduction: str = "mean",
):
    """Symmetric CLIP/ALIGN InfoNCE of the global batch.

    Args:
      image, text: [b, D] this device's paired embeddings (plain dot products, no normalisation).
      logit_scale: t > 0 multiplying the dot products (the scale itself, not its log); a scalar or one
        per pair index [b].
      axis_name: mesh axis the batch is sharded over inside ``jax.shard_map``, or None.
      additive_margin, angular_margin, false_negative_prior, hardness_concentration,
        hardness_weight, hardest_negatives: variants, see ``contrastive.losses.core.Variants``.
      impl, chunk_size: as in ``nt_xent`` ("auto" by ``streamed.auto_impl``, here on N rows per
        direction); with the ring (or on one device) both directions come from the same tiles of logits.
      reduction: "mean" (the loss) or "none" (the per-pair rows of ``symmetric_cross_modal_loss``).

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
        reduction=reduction,
    )
