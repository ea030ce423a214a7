"""InfoLOOB: the leave-one-out InfoNCE bound of CLOOB, without the Hopfield retrieval.

Paper: Fürst, Rumetshofer, Lehner, Tran, Tang, Ramsauer, Kreil, Kopp, Klambauer, Bitto-Nemling,
Hochreiter. "CLOOB: Modern Hopfield Networks with InfoLOOB Outperform CLIP", NeurIPS 2022, eq. (4)
(InfoLOOB) and Sec. 3; authors' code github.com/ml-jku/cloob (``infoLOOB_loss``).

With image / text embeddings x_i, y_j of the GLOBAL batch of N pairs (taken as given: plain dot
products) and t = logit_scale (= 1 / tau)::

    L_i2t = -(1/N) sum_i log( exp(t <x_i, y_i>) / sum_{j != i} exp(t <x_i, y_j>) )
    L_t2i = -(1/N) sum_i log( exp(t <y_i, x_i>) / sum_{j != i} exp(t <y_i, x_j>) )
    L     = (L_i2t + L_t2i) / 2

The positive is left out of the denominator (as in DCL); each direction is a mean over N, and the two
are averaged as in ``clip``. (CLOOB's code sums the two directions and multiplies by tau, which only
rescales the loss; it applies the loss to Hopfield-retrieved embeddings, which is not done here.)
"""

from __future__ import annotations

import jax

from contrastive.losses.clip import symmetric_cross_modal_loss
from contrastive.losses.core import PLAIN

Array = jax.Array


def infoloob(
    image: Array,
    text: Array,
    *,
    logit_scale,
    axis_name: str | None = None,
    impl: str = "auto",
    chunk_size: int | None = None,
    reduction: str = "mean",
):
    """Symmetric InfoLOOB loss of the global batch.

    Args:
      image, text: [b, D] this device's paired embeddings (plain dot products, no normalisation).
      logit_scale: t > 0 multiplying the dot products (1 / tau of the paper); scalar or [b].
      axis_name: mesh axis the batch is sharded over inside ``jax.shard_map``, or None.
      impl, chunk_size, reduction: as in ``clip``.

    Returns:
      (loss, metrics) with ``pos_sim``, ``neg_sim`` and ``top1_acc`` as in ``clip``.
    """
    return symmetric_cross_modal_loss(
        image,
        text,
        logit_scale=logit_scale,
        axis_name=axis_name,
        positives_in_denominator=False,
        variants=PLAIN,
        impl=impl,
        chunk_size=chunk_size,
        reduction=reduction,
    )
