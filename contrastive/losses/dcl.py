"""DCL / DCLW: decoupled contrastive learning (the positive is removed from the denominator).

Paper: Yeh, Hong, Hsu, Liu, Chen, LeCun. "Decoupled Contrastive Learning", ECCV 2022, eqs. (6)-(7)
(DCL) and Sec. 4 (DCLW); authors' code github.com/raymin0223/decoupled-contrastive-learning.

With the SimCLR layout (2N anchors, cosine similarity s, positive p(a) = the other view of a)::

    l_a = -w_a s_a,p(a) / tau + log sum_{b != a, b != p(a)} exp(s_ab / tau)
    L   = (1 / 2N) sum_a l_a                                 (mean over the 2N anchors)

DCL has w_a = 1. DCLW weights the positive term by a von Mises-Fisher weighting of the pair::

    w_a = 2 - exp(s_a,p(a) / sigma) / mean_k exp(s_k,p(k) / sigma)

computed under stop_gradient (a constant, as the design requires), with the mean over the pairs of the
GLOBAL batch and the same weight for both view directions of a pair. Removing the positive from the
denominator removes NT-Xent's negative-positive coupling factor
``q_a = 1 - softmax(positive)`` from the gradient: dL/ds_a,p(a) is exactly ``-w_a / (2N tau)``.

The authors' code sums the two view directions (each a mean over N), which is twice this loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from contrastive.losses.core import check_positive, check_rank, check_same_shape, global_sum, l2_normalize, num_devices
from contrastive.losses.streamed import check_reduction, multi_view_xent, reduce_rows

Array = jax.Array


def dclw_weight(positive_sim: Array, sigma, axis_name: str | None) -> Array:
    """``w_a = 2 - exp(s_a / sigma) / mean_k exp(s_k / sigma)``, constant, mean over the global batch.

    ``positive_sim`` holds each local anchor's positive similarity; both views of a pair are anchors,
    so the mean over anchors equals the mean over pairs.
    """
    scaled = jax.lax.stop_gradient(positive_sim) / sigma
    local_max = jnp.max(scaled)
    shift = local_max if axis_name is None else jax.lax.pmax(local_max, axis_name)
    vmf = jnp.exp(scaled - shift)  # <= 1: the shift keeps small sigma from overflowing
    mean = global_sum(jnp.sum(vmf), axis_name) / (vmf.shape[0] * num_devices(axis_name))
    return 2.0 - vmf / mean


def dcl(
    z1: Array,
    z2: Array,
    *,
    temperature,
    weighted: bool = False,
    sigma=0.5,
    axis_name: str | None = None,
    impl: str = "auto",
    chunk_size: int | None = None,
    reduction: str = "mean",
):
    """DCL (or DCLW with ``weighted=True``) loss of the global batch, mean over the 2N anchors.

    Args:
      z1, z2: [b, D] this device's embeddings of the two views (cosine similarity, float32).
      temperature: tau > 0; similarities are divided by it (scalar, [b] or [2b], as in ``nt_xent``).
      weighted: use the DCLW positive weights.
      sigma: > 0, the DCLW weighting temperature.
      axis_name: mesh axis the batch is sharded over inside ``jax.shard_map``, or None.
      impl, chunk_size, reduction: as in ``nt_xent`` ("auto" by ``streamed.auto_impl``; "none" gives the
        per-anchor ``l_a`` and ``log D_a``, here the log negative mass).

    Returns:
      (loss, metrics) with ``pos_sim``, ``neg_sim`` and ``top1_acc`` as in ``nt_xent``.
    """
    check_rank("z1", z1, 2)
    check_rank("z2", z2, 2)
    check_same_shape("z1", z1, "z2", z2)
    check_positive("temperature", temperature)
    check_reduction(reduction)
    weight = None
    if weighted:
        check_positive("sigma", sigma)
        # The positive pair of anchor (v, i) is (1 - v, i), on the same device: its weight is local.
        positive_sim = jnp.sum(l2_normalize(z1) * l2_normalize(z2), axis=-1)
        weight = dclw_weight(jnp.tile(positive_sim, 2), sigma, axis_name)
    rows, metrics = multi_view_xent(
        jnp.stack([z1, z2], axis=1), None, scale=1.0 / jnp.asarray(temperature), axis_name=axis_name, impl=impl,
        chunk_size=chunk_size, positives_in_denominator=False, positive_weight=weight,
    )
    return reduce_rows(rows, reduction, axis_name), metrics
