"""Mini-batch linear probe: `linear_probe`'s objective minimised by Adam over shuffled mini-batches.

For features too big for the full-batch L-BFGS of `linear_probe`, whose jitted program holds the whole
standardised train matrix and the logits of every fit on the device. The model and objective are the
same (multinomial logistic regression on features standardised with the train statistics, weights
W [D, C], unpenalised bias b [C]):

    L(W, b) = 1/n sum_i CE(softmax(x_i W + b), y_i) + l2/2 ||W||_F^2,

minimised by Adam (Kingma & Ba 2015) on mini-batches of `batch_size` rows drawn without replacement
(a new permutation every epoch; the last batch of an epoch padded with zero-weight rows), the learning
rate following a cosine decay to 0 over all steps (Loshchilov & Hutter 2017), from W = 0, b = 0: the
usual linear evaluation of SimCLR/MoCo-style papers, on precomputed features. The L2 strength is chosen
as in `linear_probe`: every value of the grid is fitted on a stratified (1 - holdout_fraction) part of
train, and the best on the held-out rest (accuracy, ties: cross-entropy) is the one whose fit on all of
train is scored on test. As in `linear_probe`'s one vmapped L-BFGS loop, all 2G fits (each grid value on
the fitting part and on all of train) are trained together, as one stacked [2G, D, C] model over the
same mini-batches of all of train, in which the fitting-part models give the held-out rows weight 0:
each mini-batch crosses to the device once for every fit, and one program is compiled.

Memory. The features stay in host memory; each step sends one mini-batch (batch_size x D) to the
device, whose program holds the M = 2G stacked models with their two Adam moments (3 M D C floats), that
mini-batch and its logits (M x batch_size x C), never more; held-out, train and test rows are scored in
blocks of batch_size rows too. ImageNet (1.28M x 2048 float32 train features, 10.5 GB on the host;
1000 classes; the default grid of 5, batch 1024): 246 MB of models and moments and 41 MB of logits on the
device, plus an 8 MB mini-batch copy on the host. A train split whose features do not fit host memory at
all is not handled (features would have to be streamed from disk).

Deterministic given `seed` (the held-out split and the batch order) on a given backend.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from contrastive.eval import _common
from contrastive.eval.linear_probe import DEFAULT_L2_GRID

DEFAULT_BATCH_SIZE = 1024
DEFAULT_EPOCHS = 30
DEFAULT_LEARNING_RATE = 1e-2
_STATS_BLOCK_ROWS = 8192  # host rows per block when computing the standardisation (float64 temporaries)


def _standardization(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std of every row of `x` (float64 sums over row blocks); std 1 where it is ~0,
    as `_common.weighted_standardization` (and scikit-learn's StandardScaler) does."""
    n = x.shape[0]
    total = np.zeros(x.shape[1], np.float64)
    for start in range(0, n, _STATS_BLOCK_ROWS):
        total += x[start:start + _STATS_BLOCK_ROWS].sum(axis=0, dtype=np.float64)
    mean = total / n
    squares = np.zeros_like(mean)
    for start in range(0, n, _STATS_BLOCK_ROWS):
        squares += np.square(x[start:start + _STATS_BLOCK_ROWS] - mean).sum(axis=0)
    std = np.sqrt(squares / n)
    std = np.where(std > 1e-6 * (1.0 + np.abs(mean)), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def _logits(params, x, mean, std):
    """[M, B, C] logits of the M stacked models on the standardised rows of `x` [B, D]."""
    w, b = params
    return jnp.einsum("bd,mdc->mbc", (x - mean) / std, w) + b[:, None, :]


def _cross_entropy(logits, y):
    return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[None, :, None], axis=-1)[..., 0]  # [M, B]


def _row_weights(present, held_out, fits_part):
    """[M, B] 0/1 weights: padding rows 0 for every model, held-out rows 0 for the fitting-part models."""
    return present[None, :] * jnp.where(fits_part[:, None], 1.0 - held_out[None, :], 1.0)


def _loss(params, x, y, weights, mean, std, l2s):
    """Sum over the M models of their objectives on one mini-batch (their gradients stay separate)."""
    ce = _cross_entropy(_logits(params, x, mean, std), y)
    data = jnp.sum(ce * weights, axis=-1) / jnp.maximum(jnp.sum(weights, axis=-1), 1.0)
    return jnp.sum(data + 0.5 * l2s * jnp.sum(jnp.square(params[0]), axis=(1, 2)))


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _step(params, opt_state, x, y, present, held_out, fits_part, mean, std, l2s, learning_rate):
    """One Adam step of every stacked model on one mini-batch (Adam is elementwise: stacking is exact)."""
    weights = _row_weights(present, held_out, fits_part)
    grads = jax.grad(_loss)(params, x, y, weights, mean, std, l2s)
    updates, opt_state = optax.scale_by_adam().update(grads, opt_state, params)
    return jax.tree.map(lambda p, u: p - learning_rate * u, params, updates), opt_state


@jax.jit
def _score(params, x, y, present, mean, std):
    """Correct predictions [M] and summed cross-entropy [M] over the present rows of one block."""
    logits = _logits(params, x, mean, std)
    correct = jnp.sum((jnp.argmax(logits, -1) == y) & (present > 0), axis=-1)
    return correct, jnp.sum(_cross_entropy(logits, y) * present, axis=-1)


def _batches(rows: np.ndarray, batch_size: int):
    """(indices, 0/1 presence) of consecutive batches of `rows`, the last padded with absent rows."""
    for start in range(0, len(rows), batch_size):
        idx = np.sort(rows[start:start + batch_size])  # sorted: a faster host gather, the same sum
        present = np.ones(batch_size, np.float32)
        if len(idx) < batch_size:
            present[len(idx):] = 0.0
            idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
        yield idx, present


def _fit(x, y, held_out, l2s, fits_part, mean, std, *, num_classes, batch_size, epochs, learning_rate, rng):
    """The M = len(l2s) stacked models fitted on all rows of (x, y) (the held-out ones only where not
    `fits_part`); returns (params, optimizer steps)."""
    m, dim, n = len(l2s), x.shape[1], x.shape[0]
    params = (jnp.zeros((m, dim, num_classes), jnp.float32), jnp.zeros((m, num_classes), jnp.float32))
    opt_state = optax.scale_by_adam().init(params)
    schedule = optax.cosine_decay_schedule(learning_rate, epochs * -(-n // batch_size))
    l2s, fits_part, step = jnp.asarray(l2s, jnp.float32), jnp.asarray(fits_part), 0
    for _ in range(epochs):
        for idx, present in _batches(rng.permutation(n), batch_size):
            params, opt_state = _step(params, opt_state, x[idx], y[idx], present, held_out[idx], fits_part, mean,
                                      std, l2s, np.float32(schedule(step)))
            step += 1
    return params, step


def _evaluate(params, x, y, rows, mean, std, batch_size):
    """(correct [M], mean cross-entropy [M]) over `rows`, scored in blocks of `batch_size` rows."""
    correct, ce = 0, 0.0
    for idx, present in _batches(rows, batch_size):
        c, e = _score(params, x[idx], y[idx], present, mean, std)
        correct, ce = correct + np.asarray(c, np.int64), ce + np.asarray(e, np.float64)
    return correct, ce / len(rows)


def minibatch_linear_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    num_classes: int | None = None,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    epochs: int = DEFAULT_EPOCHS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
) -> dict:
    """Test accuracy of `linear_probe`'s L2-regularised logistic regression, fitted by mini-batch Adam.

    Args:
      train_x, test_x: [N, D] features, best as host NumPy float32 arrays (kept there, no copy).
      train_y, test_y: [N] integer labels in [0, num_classes).
      num_classes: number of classes; 1 + the largest label when None.
      l2_grid, holdout_fraction: as in `linear_probe` (one value: used directly, no held-out part).
      seed: seed of the held-out split and of the batch order.
      batch_size: rows per mini-batch (capped at the number of fitted rows); epochs: passes over them;
      learning_rate: Adam's peak learning rate, decayed to 0 by a cosine over all steps.

    Returns:
      As `linear_probe` ('accuracy', 'l2', 'train_accuracy', with a grid 'holdout_accuracy' and
      'grid_holdout_accuracy'), with 'steps' (optimizer steps of the final fit) for 'iterations'.
    """
    train_x, train_y, test_x, test_y, num_classes = _common.classification_inputs(
        train_x, train_y, test_x, test_y, num_classes, on_host=True
    )
    for name, value in (("batch_size", batch_size), ("epochs", epochs)):
        if not (isinstance(value, int | np.integer) and value >= 1):
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    if not learning_rate > 0:
        raise ValueError(f"`learning_rate` must be positive, got {learning_rate}.")
    l2_grid, holdout = _common.probe_grid_and_holdout(l2_grid, train_y, holdout_fraction, seed)
    grid = l2_grid.size
    # Models 0..G-1: each grid value on the fitting part; G..2G-1: on all of train (one model for one value).
    l2s = np.concatenate([l2_grid, l2_grid]) if grid > 1 else l2_grid
    fits_part = np.arange(len(l2s)) < (grid if grid > 1 else 0)
    mean, std = _standardization(train_x)
    n, batch_size = train_x.shape[0], min(batch_size, train_x.shape[0])
    params, steps = _fit(train_x, train_y, holdout, l2s, fits_part, mean, std, num_classes=num_classes,
                         batch_size=batch_size, epochs=epochs, learning_rate=learning_rate,
                         rng=np.random.default_rng([seed, 1]))  # the batch order; the split uses `seed`
    result, best = {}, 0
    if grid > 1:
        held_out = np.flatnonzero(holdout > 0)
        correct, ce = _evaluate(params, train_x, train_y, held_out, mean, std, batch_size)
        best = int(_common.best_on_holdout(jnp.asarray(correct[:grid]), jnp.asarray(ce[:grid])))
        result.update(holdout_accuracy=float(correct[best] / len(held_out)),
                      grid_holdout_accuracy=tuple(float(c / len(held_out)) for c in correct[:grid]))
    final = grid + best if grid > 1 else 0
    train_correct, _ = _evaluate(params, train_x, train_y, np.arange(n), mean, std, batch_size)
    test_correct, _ = _evaluate(params, test_x, test_y, np.arange(test_x.shape[0]), mean, std, batch_size)
    result.update(accuracy=float(test_correct[final] / test_x.shape[0]), l2=float(l2_grid[best]),
                  train_accuracy=float(train_correct[final] / n), steps=steps)
    return result
