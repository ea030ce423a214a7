"""Weighted k-nearest-neighbour classification on cosine similarity.

The non-parametric evaluation of Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric
Instance Discrimination", Sec. 3.4), used with the same defaults (k=200, T=0.07) by InstDisc, MoCo-style
monitors and DINO (Caron et al. 2021). With L2-normalised features, a test point q takes the k training
points with the highest similarity s_i = q . x_i and predicts

    y_hat(q) = argmax_c  sum_{i in top-k(q)} exp(s_i / T) [y_i = c].

The test set is processed in chunks of `batch_size` rows (`jax.lax.map`), so memory is
O(batch_size * N_train) however large the test set is.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from contrastive.eval import _common
from contrastive.losses.core import l2_normalize


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "batch_size"))
def knn_predict(train_x, train_y, test_x, temperature, *, k: int, num_classes: int, batch_size: int = 256):
    """Weighted-kNN class predictions [N_test] (int32); jit-compatible, no input checks.

    Args:
      train_x: [N, D] training features; train_y: [N] int labels in [0, num_classes).
      test_x: [M, D] test features. temperature: T > 0 (may be traced).
      k: neighbours, 1 <= k <= N. batch_size: test rows per chunk.
    """
    train = l2_normalize(train_x.astype(jnp.float32))
    test = l2_normalize(test_x.astype(jnp.float32))

    def predict_one(query):
        top_sims, top_idx = jax.lax.top_k(train @ query, k)
        # Shifting by the largest similarity leaves the argmax unchanged and keeps exp(s / T) <= 1, so
        # a small temperature cannot overflow float32 (exp(1 / 0.01) already would).
        weights = jnp.exp((top_sims - top_sims[0]) / temperature)
        votes = jax.ops.segment_sum(weights, train_y[top_idx], num_segments=num_classes)
        return jnp.argmax(votes)

    return jax.lax.map(predict_one, test, batch_size=min(batch_size, test.shape[0]))


def knn_accuracy(
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    k: int = 200,
    temperature: float = 0.07,
    num_classes: int | None = None,
    batch_size: int = 256,
) -> float:
    """Test accuracy in [0, 1] of the weighted kNN classifier (Wu et al. 2018) fitted on train.

    Args:
      train_x, test_x: [N, D] features (normalised inside; any float dtype).
      train_y, test_y: [N] integer labels.
      k: number of neighbours; must not exceed the number of training points (pass
        `min(k, len(train_y))` to cap it explicitly).
      temperature: T of the exp(s / T) vote weights; smaller T trusts the nearest neighbours more.
      num_classes: number of classes; 1 + the largest label when None.
      batch_size: test rows compared with the whole train set at once (bounds memory).
    """
    train_x, train_y, test_x, test_y, num_classes = _common.classification_inputs(
        train_x, train_y, test_x, test_y, num_classes
    )
    if not 1 <= k <= train_x.shape[0]:
        raise ValueError(
            f"`k`={k} must be between 1 and the number of training points ({train_x.shape[0]}); "
            f"pass k=min(k, len(train_y)) to cap it."
        )
    if not temperature > 0:
        raise ValueError(f"`temperature` must be positive, got {temperature}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
    pred = knn_predict(
        train_x,
        train_y,
        test_x,
        jnp.float32(temperature),
        k=int(k),
        num_classes=num_classes,
        batch_size=int(batch_size),
    )
    return _common.accuracy(pred, test_y)
