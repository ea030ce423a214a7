"""Mean (class-centroid) classifier on L2-normalised features.

Arora et al. 2019 ("A Theoretical Analysis of Contrastive Unsupervised Representation Learning",
Sec. 2) bound the downstream loss of contrastive representations through the mean classifier W^mu,
whose row c is the class mean mu_c = E[f(x) | y = c]. Here f(x) = x / ||x|| and

    y_hat(x) = argmax_c  f(x) . mu_c,     mu_c = 1/n_c sum_{i: y_i = c} f(x_i).

The centroids are deliberately not re-normalised: that is W^mu as analysed. A class absent from
train has mu_c = 0 and so score 0.

Features of more than `block_rows` rows stay on the host: the class sums and counts are accumulated one
block of rows at a time on the device, and the test rows are classified block by block, so the device
holds one block and the [C, D] sums, whatever N.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

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


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _block_sums(sums, counts, valid, x, labels, *, num_classes: int):
    f = l2_normalize(x) * valid[:, None]
    return (sums + jax.ops.segment_sum(f, labels, num_segments=num_classes),
            counts + jax.ops.segment_sum(valid, labels, num_segments=num_classes))


@jax.jit
def _block_correct(means, valid, x, labels):
    pred = jnp.argmax(l2_normalize(x) @ means.T, axis=-1)
    return jnp.sum((pred == labels) & (valid > 0))


def class_means_blockwise(x: np.ndarray, labels: np.ndarray, *, num_classes: int, block_rows: int) -> jax.Array:
    """`class_means` of host features, accumulated `block_rows` rows at a time."""
    sums, counts = jnp.zeros((num_classes, x.shape[1]), jnp.float32), jnp.zeros(num_classes, jnp.float32)
    for valid, block, block_labels in _common.row_blocks(block_rows, x, labels):
        sums, counts = _block_sums(sums, counts, valid, block, block_labels, num_classes=num_classes)
    return sums / jnp.maximum(counts, 1.0)[:, None]


def mean_classifier_accuracy(train_x, train_y, test_x, test_y, *, num_classes: int | None = None,
                             block_rows: int = _common.BLOCK_ROWS) -> float:
    """Test accuracy in [0, 1] of the class-centroid classifier of Arora et al. 2019.

    Args:
      train_x, test_x: [N, D] features (normalised inside). train_y, test_y: [N] integer labels.
      num_classes: number of classes; 1 + the largest label when None.
      block_rows: train or test features of more rows are sent to the device one block at a time.
    """
    if max(len(train_x), len(test_x)) <= block_rows:
        train_x, train_y, test_x, test_y, num_classes = _common.classification_inputs(
            train_x, train_y, test_x, test_y, num_classes
        )
        pred = mean_classifier_predict(train_x, train_y, test_x, num_classes=num_classes)
        return _common.accuracy(pred, test_y)
    train_x, train_y, test_x, test_y, num_classes = _common.classification_inputs(
        train_x, train_y, test_x, test_y, num_classes, on_host=True
    )
    means = class_means_blockwise(train_x, train_y, num_classes=num_classes, block_rows=block_rows)
    correct = sum(int(_block_correct(means, *blocks)) for blocks in _common.row_blocks(block_rows, test_x, test_y))
    return correct / test_y.size
