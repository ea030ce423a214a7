"""SupCon: the supervised contrastive loss L_out (positives are all views sharing the label).

Paper: Khosla, Teterwak, Sarna, Wang, Tian, Isola, Maschinot, Liu, Krishnan. "Supervised Contrastive
Learning", NeurIPS 2020, eq. (2) (L_out); authors' code github.com/HobbitLong/SupContrast.

For z of shape [N, V, D] (V views of N samples) the anchors are all I = N * V views of the GLOBAL
batch, with cosine similarity s. For anchor i, A(i) = all other views and P(i) = the other views whose
sample has the same label::

    l_i = -(1/|P(i)|) sum_{p in P(i)} log( exp(s_ip / tau) / sum_{a in A(i)} exp(s_ia / tau) )
    L   = (1 / (N V)) sum_i l_i                               (mean over all N * V anchors)

An anchor without positives (possible only for V = 1) contributes 0 but still counts in the mean, as in
the authors' current code. The authors' extra factor tau / base_tau is left out (it only rescales).
With unique labels and V = 2 this is exactly ``nt_xent``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from contrastive.losses.core import check_positive, check_rank
from contrastive.losses.streamed import check_reduction, multi_view_xent, reduce_rows

Array = jax.Array


def supcon(
    z: Array,
    labels: Array,
    *,
    temperature,
    axis_name: str | None = None,
    impl: str = "auto",
    chunk_size: int | None = None,
    reduction: str = "mean",
):
    """SupCon L_out of the global batch, mean over the N * V anchor views.

    Args:
      z: [b, V, D] this device's embeddings, V views per sample (cosine similarity, float32).
      labels: [b] integer class labels of this device's samples.
      temperature: tau > 0; similarities are divided by it: a scalar, one per sample [b] or one per
        anchor row [V b] (view-major: row ``v * b + i`` is view v of sample i).
      axis_name: mesh axis the batch is sharded over inside ``jax.shard_map``, or None.
      impl, chunk_size, reduction: as in ``nt_xent`` ("auto" by ``streamed.auto_impl``, here on N V
        rows; "none" gives the per-anchor ``l_i`` and ``log D_i``, [V b] view-major).

    Returns:
      (loss, metrics) with ``pos_sim`` / ``neg_sim`` (mean cosine of same-label / different-label
      pairs) and ``top1_acc`` (fraction of anchors whose most similar other view has their label).
    """
    check_rank("z", z, 3)
    check_positive("temperature", temperature)
    if jnp.shape(labels) != jnp.shape(z)[:1]:
        raise ValueError(
            f"labels must have shape [N] = {jnp.shape(z)[:1]} to match z {jnp.shape(z)}, "
            f"got {jnp.shape(labels)}"
        )
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {jnp.result_type(labels)}")
    check_reduction(reduction)
    rows, metrics = multi_view_xent(
        z, labels, scale=1.0 / jnp.asarray(temperature), axis_name=axis_name, impl=impl, chunk_size=chunk_size
    )
    return reduce_rows(rows, reduction, axis_name), metrics
