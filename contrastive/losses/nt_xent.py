"""NT-Xent: the normalised-temperature cross-entropy of SimCLR.

Paper: Chen, Kornblith, Norouzi, Hinton. "A Simple Framework for Contrastive Learning of Visual
Representations" (SimCLR), ICML 2020, eq. (1).

For a batch of N pairs (z1_i, z2_i) there are 2N anchors; anchor a's positive p(a) is its other view and
its denominator runs over all 2N - 1 other embeddings of the GLOBAL batch::

    s_ab = <z_a, z_b> / (|z_a| |z_b|)                       (cosine, float32)
    l_a  = -log( exp(s_a,p(a) / tau) / sum_{b != a} exp(s_ab / tau) )
    L    = (1 / 2N) sum_a l_a                                (mean over the 2N anchors)

Variants (keyword options, all off by default; see ``core.Variants``): additive / angular margin on the
positive (AM / AAM NT-Xent), debiased negatives with class prior tau+ (Chuang et al. 2020), hardness
concentration beta (Robinson et al. 2021), LLaVE hardness weights exp(alpha * sg(s)), and the top-k
hardest negatives only (Wang & Liu 2021).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from contrastive.losses.core import Variants, check_positive, check_rank, check_same_shape
from contrastive.losses.streamed import check_reduction, multi_view_xent, reduce_rows

Array = jax.Array


def nt_xent(
    z1: Array,
    z2: Array,
    *,
    temperature,
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
    """SimCLR NT-Xent loss of the global batch (mean over the 2N anchors).

    Args:
      z1, z2: [b, D] this device's embeddings of the two views (any float dtype; cosine in float32).
      temperature: tau > 0; similarities are divided by it. A scalar, one per sample ([b], shared by its
        two views) or one per anchor row ([2b]: z1's rows, then z2's); per-row values work on every impl.
      axis_name: mesh axis the batch is sharded over inside ``jax.shard_map``, or None.
      additive_margin, angular_margin, false_negative_prior, hardness_concentration,
        hardness_weight, hardest_negatives: variants, see ``contrastive.losses.core.Variants``.
      impl: "auto" (default), "gather" (all-gather the keys, dense b x B logits; the reference) or "ring"
        (pass key blocks around ``axis_name`` with ppermute, online log-sum-exp, custom VJP; see
        ``losses.streamed``). "auto" decides at trace time from the static shapes by the rule of
        ``streamed.auto_impl`` (where its measurements are): dense "gather" for small global batches
        (here 2N rows), with ``hardest_negatives`` or a per-pair temperature; otherwise "ring" when
        ``axis_name`` is set, else tiles.
      chunk_size: if set, tile each device's logits into chunk_size x chunk_size tiles (any impl; kept
        as given by "auto"); must divide the local anchor rows. ``hardest_negatives`` needs
        ``impl='gather'``, no chunks.
      reduction: "mean" (the loss) or "none": instead of the loss, this device's per-anchor rows
        ``{"loss": l_a, "log_denominator": log D_a}`` ([2b] each, view-major: z1's rows, then z2's).

    Returns:
      (loss, metrics): float32 scalar (or the per-row dict), and ``pos_sim`` / ``neg_sim`` (mean cosine of
      positive / negative pairs) and ``top1_acc`` (fraction of anchors whose most similar other
      embedding is their positive).
    """
    check_rank("z1", z1, 2)
    check_rank("z2", z2, 2)
    check_same_shape("z1", z1, "z2", z2)
    check_positive("temperature", temperature)
    check_reduction(reduction)
    variants = Variants(
        additive_margin=additive_margin,
        angular_margin=angular_margin,
        false_negative_prior=false_negative_prior,
        hardness_concentration=hardness_concentration,
        hardness_weight=hardness_weight,
        hardest_negatives=hardest_negatives,
    )
    rows, metrics = multi_view_xent(
        jnp.stack([z1, z2], axis=1), None, scale=1.0 / jnp.asarray(temperature), axis_name=axis_name, impl=impl,
        chunk_size=chunk_size, variants=variants,
    )
    return reduce_rows(rows, reduction, axis_name), metrics
