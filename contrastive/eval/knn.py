"""Weighted k-nearest-neighbour classification on cosine similarity.

The non-parametric evaluation of Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric
Instance Discrimination", Sec. 3.4), used with the same defaults (k=200, T=0.07) by InstDisc, MoCo-style
monitors and DINO (Caron et al. 2021). With L2-normalised features, a test point q takes the k training
points with the highest similarity s_i = q . x_i and predicts

    y_hat(q) = argmax_c  sum_{i in top-k(q)} exp(s_i / T) [y_i = c].

Two paths, the same predictions (tested on the digits):

* `knn_predict`: the whole train bank on the device; queries in blocks of `batch_size` rows, each block's
  [batch_size, N_train] similarities reduced by `jax.lax.top_k`. Device memory: the bank (N_train x D
  float32) and O(batch_size x N_train) similarities, whatever the test set's size.
* `knn_predict_streamed`: the bank stays where it is (host memory) and is sent to the device one block of
  `bank_block` rows at a time, once; every query keeps a running top-k (similarities and train indices)
  that each block updates by `top_k` of [running k ; block's similarities]. Because `top_k` is exact and
  prefers the lower position among equal values, and the running entries (earlier, lower train indices)
  come first, the merged top-k is the top-k of the full similarity row. Device memory: the normalised
  test features (N_test x D), the running top-k (N_test x k x 8 bytes), one bank block (bank_block x D)
  and O(batch_size x (k + bank_block)) similarities. ImageNet (1.28M x 2048 float32 train features,
  10.5 GB on the host; 50k test) with bank_block=65536, k=200: 0.4 GB of queries, 80 MB of running top-k,
  0.5 GB per block, 67 MB of similarities per query block of 256.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from contrastive.eval import _common
from contrastive.losses.core import l2_normalize


def _vote(top_sims, top_labels, temperature, num_classes):
    """argmax_c sum_i exp(s_i / T) [y_i = c] over one query's top-k (sorted, largest first)."""
    # Shifting by the largest similarity leaves the argmax unchanged and keeps exp(s / T) <= 1, so
    # a small temperature cannot overflow float32 (exp(1 / 0.01) already would).
    weights = jnp.exp((top_sims - top_sims[0]) / temperature)
    votes = jax.ops.segment_sum(weights, top_labels, num_segments=num_classes)
    return jnp.argmax(votes)


@functools.partial(jax.jit, static_argnames=("k", "num_classes", "batch_size"))
def knn_predict(train_x, train_y, test_x, temperature, *, k: int, num_classes: int, batch_size: int = 256):
    """Weighted-kNN class predictions [N_test] (int32), the bank on the device; jit-compatible, no input checks.

    Args:
      train_x: [N, D] training features; train_y: [N] int labels in [0, num_classes).
      test_x: [M, D] test features. temperature: T > 0 (may be traced).
      k: neighbours, 1 <= k <= N. batch_size: test rows per chunk.
    """
    train = l2_normalize(train_x.astype(jnp.float32))
    test = l2_normalize(test_x.astype(jnp.float32))

    def predict_one(query):
        top_sims, top_idx = jax.lax.top_k(train @ query, k)
        return _vote(top_sims, train_y[top_idx], temperature, num_classes)

    return jax.lax.map(predict_one, test, batch_size=min(batch_size, test.shape[0]))


@functools.partial(jax.jit, static_argnames=("batch_size",), donate_argnums=(0, 1))
def _merge_block(run_sims, run_idx, test, block, offset, valid, *, batch_size):
    """Each query's running top-k updated with its similarities to one bank block (rows >= `valid` padding)."""
    block = l2_normalize(block)
    k = run_sims.shape[1]
    block_idx = offset + jnp.arange(block.shape[0], dtype=jnp.int32)
    real = jnp.arange(block.shape[0]) < valid

    def merge_one(args):
        sims, idx, query = args
        new = jnp.where(real, block @ query, -jnp.inf)
        top, pos = jax.lax.top_k(jnp.concatenate([sims, new]), k)
        return top, jnp.concatenate([idx, block_idx])[pos]

    return jax.lax.map(merge_one, (run_sims, run_idx, test), batch_size=min(batch_size, test.shape[0]))


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _vote_all(top_sims, top_idx, train_y, temperature, *, num_classes):
    return jax.vmap(lambda s, i: _vote(s, train_y[i], temperature, num_classes))(top_sims, top_idx)


def knn_predict_streamed(train_x, train_y, test_x, temperature, *, k: int, num_classes: int, batch_size: int = 256,
                         bank_block: int = 65536) -> jax.Array:
    """`knn_predict` with the train bank sent to the device one block of `bank_block` rows at a time.

    `train_x` may be a host NumPy array of any size that fits host memory; the device never holds more
    than one block of it (see the module docstring for the memory bound). Same arguments as `knn_predict`
    (no input checks); the last block is padded to `bank_block` rows (one compilation), its padding masked.
    """
    n, m = train_x.shape[0], test_x.shape[0]
    bank_block = min(bank_block, n)
    test = l2_normalize(jnp.asarray(test_x, jnp.float32))
    run_sims = jnp.full((m, k), -jnp.inf, jnp.float32)
    run_idx = jnp.zeros((m, k), jnp.int32)
    for start in range(0, n, bank_block):
        block = np.asarray(train_x[start:start + bank_block], np.float32)
        valid = len(block)
        if valid < bank_block:
            block = np.concatenate([block, np.zeros((bank_block - valid, block.shape[1]), np.float32)])
        run_sims, run_idx = _merge_block(run_sims, run_idx, test, jax.device_put(block), np.int32(start),
                                         np.int32(valid), batch_size=batch_size)
    return _vote_all(run_sims, run_idx, jnp.asarray(train_y), jnp.float32(temperature), num_classes=num_classes)


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
    bank_block: int = 0,
) -> float:
    """Test accuracy in [0, 1] of the weighted kNN classifier (Wu et al. 2018) fitted on train.

    Args:
      train_x, test_x: [N, D] features (normalised inside; any float dtype).
      train_y, test_y: [N] integer labels.
      k: number of neighbours; must not exceed the number of training points (pass
        `min(k, len(train_y))` to cap it explicitly).
      temperature: T of the exp(s / T) vote weights; smaller T trusts the nearest neighbours more.
      num_classes: number of classes; 1 + the largest label when None.
      batch_size: test rows compared with the bank (or a bank block) at once (bounds memory).
      bank_block: 0, or a train set of at most this many rows: the whole bank on the device
        (`knn_predict`). A larger train set is kept on the host and streamed in blocks of this many rows
        (`knn_predict_streamed`); the predictions are the same.
    """
    if bank_block < 0:
        raise ValueError(f"`bank_block` must be >= 0 (0: the whole bank at once), got {bank_block}.")
    streamed = bool(bank_block) and np.shape(train_x)[0] > bank_block
    train_x, train_y, test_x, test_y, num_classes = _common.classification_inputs(
        train_x, train_y, test_x, test_y, num_classes, on_host=streamed
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
    if streamed:
        pred = knn_predict_streamed(train_x, train_y, test_x, temperature, k=int(k), num_classes=num_classes,
                                    batch_size=int(batch_size), bank_block=int(bank_block))
    else:
        pred = knn_predict(train_x, train_y, test_x, jnp.float32(temperature), k=int(k), num_classes=num_classes,
                           batch_size=int(batch_size))
    return _common.accuracy(pred, test_y)
