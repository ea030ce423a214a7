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

from contrastive.losses.core import (
    check_positive,
    check_rank,
    global_mean,
    pair_metrics,
    softmax_xent_rows,
)
from contrastive.losses.pairs import multi_view_pairs
from contrastive.losses.streamed import multi_view_xent, resolve_impl

Array = jax.Array


def supcon(
    z: Array,
    labels: Array,
    *,
    temperature,
    axis_name: str | None = None,
    impl: str = "auto",
    chunk_size: int | None = None,
) -> tuple[Array, dict[str, Array]]:
    """SupCon L_out of the global batch, mean over the N * V anchor views.

    Args:
      z: [b, V, D] this device's embeddings, V views per sample (cosine similarity, float32).
      labels: [b] integer class labels of this device's samples.
      temperature: tau > 0; similarities are divided by it.
      axis_name: mesh axis the batch is sharded over inside ``jax.shard_map``, or None.
      impl, chunk_size: "auto" (default), "gather" (reference) or "ring" (ppermute ring, online
        log-sum-exp), and an optional tile size; see ``nt_xent`` and ``contrastive.losses.streamed``.
        "auto" picks dense "gather" below 4,096 global rows (here N V), else "ring" when sharded
        or tiles of up to 512 rows on one device (``streamed.auto_impl``).

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
    scale = 1.0 / jnp.asarray(temperature)
    rows = z.shape[0] * z.shape[1]
    impl, chunk_size, streamed = resolve_impl(impl, chunk_size, local_rows=rows, axis_name=axis_name, scale=scale)
    if streamed:
        per_anchor, metrics = multi_view_xent(
            z, labels, scale=scale, axis_name=axis_name, impl=impl, chunk_size=chunk_size
        )
        return global_mean(per_anchor, axis_name), metrics
    sim, self_mask, positive_mask = multi_view_pairs(z, labels, axis_name)
    per_anchor = softmax_xent_rows(sim, positive_mask, ~(self_mask | positive_mask), scale=scale)
    metrics = pair_metrics(sim, positive_mask, ~self_mask, axis_name)
    return global_mean(per_anchor, axis_name), metrics
