"""Mean (class-centroid) classifier on L2-normalised features.

Arora et al. 2019 ("A Theoretical Analysis of Contrastive Unsupervised Representation Learning",
Sec. 2) bound the downstream loss of contrastive representations through the mean classifier W^mu,
whose row c is the class mean mu_c = E[f(x) | y = c]. Here f(x) = x / ||x|| and

    y_hat(x) = argmax_c  f(x) . mu_c,     mu_c = 1/n_c sum_{i: y_i = c} f(x_i).

The centroids are deliberately not re-normalised: that is W^mu as analysed. A class absent from
train has mu_c = 0 and so score 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from contrastive.eval import _common
from contrastive.losses.core import l2_normalize


@functools.partial(jax.jit, static_argnames=("num_classes",))
def class_means(x, labels, *, num_classes: int):
    """[num_classes, D] means of the L2-normalised rows of `x` per label (zeros for empty classes)."""
    f = l2_normalize(x.astype(jnp.float32))
    sums = jax.ops.segment_sum(f, labels, num_segments=num_classes)
    counts = jax.ops.segment_sum(jnp.ones(labels.shape[0]), labels, num_segments=num_classes)
    return sums / jnp.maximum(counts, 1.0)[:, None]


@functools.partial(jax.jit, static_argnames=("num_classes",))
def mean_classifier_predict(train_x, train_y, test_x, *, num_classes: int):
    """Predictions [N_test] of the mean classifier fitted on (train_x, train_y); no input checks."""
    means = class_means(train_x, train_y, num_classes=num_classes)
    return jnp.argmax(l2_normalize(test_x.astype(jnp.float32)) @ means.T, axis=-1)


def mean_classifier_accuracy(train_x, train_y, test_x, test_y, *, num_classes: int | None = None) -> float:
    """Test accuracy in [0, 1] of the class-centroid classifier of Arora et al. 2019.

    Args:
      train_x, test_x: [N, D] features (normalised inside). train_y, test_y: [N] integer labels.
      num_classes: number of classes; 1 + the largest label when None.
    """
    train_x, train_y, test_x, test_y, num_classes = _common.classification_inputs(
        train_x, train_y, test_x, test_y, num_classes
    )
    pred = mean_classifier_predict(train_x, train_y, test_x, num_classes=num_classes)
    return _common.accuracy(pred, test_y)
