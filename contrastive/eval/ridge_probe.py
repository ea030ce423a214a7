"""Closed-form ridge-regression probe: big_vision's "few-shot" linear evaluation.

big_vision (Beyer, Zhai, Kolesnikov et al.; `evaluators/fewshot_lsr.py`, used for the few-shot
numbers of ViT, Dosovitskiy et al. 2021, and LiT, Zhai et al. 2022) regresses +-1 one-hot targets on
standardised features by least squares with an L2 penalty and classifies by the largest output.
With X the standardised train features, Y = 2 onehot(y) - 1 and both centred over the fitted rows,

    W = argmin ||X W - Y||_F^2 + l2 ||W||_F^2 = (X^T X + l2 I)^{-1} X^T Y,    b = mean(Y) - mean(X) W,

so the bias is exactly unpenalised (big_vision approximates this with a constant feature of 100, i.e. a
bias penalty of l2 / 10^4). With an unpenalised bias, +-1 and 0/1 targets give the same predictions.

Regulariser: the penalty is on the *sum* (not mean) of squared errors, so `l2` is relative to the
number of training rows. The default is big_vision's fixed `l2_reg = 2**10`, used for all its few-shot
tables. A longer `l2_grid` is chosen on a stratified held-out part of train; since one eigendecomposition
X^T X = Q diag(e) Q^T serves every l2 via W = Q diag(1 / (e + l2)) Q^T X^T Y, a grid costs almost nothing.
(When N < D the N x N Gram X X^T is decomposed instead: W = X^T Q diag(1 / (e + l2)) Q^T Y.)

Blockwise (N > `block_rows` >= D): the train features stay on the host and cross to the device one block
of rows at a time, in three passes (sum of x; sum of (x - mean)^2; for each fit the weighted sums of z,
y, z z^T and z y^T of the standardised z), then one over train for the held-out scores and one over
test. The centred Grams are the sums less W m m^T (their means are those of standardised features,
near 0, so nothing cancels). The device holds one block and the D x D and D x C sums.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from contrastive.eval import _common

BIG_VISION_L2 = 2.0**10


def _ridge_solutions(x, targets, weights, l2_grid):
    """Ridge weights [G, D, C] and biases [G, C] on the rows with weight 1, one per grid value."""
    total = jnp.sum(weights)
    column = weights[:, None]
    x_mean = jnp.sum(column * x, axis=0) / total
    y_mean = jnp.sum(column * targets, axis=0) / total
    # Zeroed rows drop out of both Gram matrices, so masked and full fits share one shape.
    xc, yc = column * (x - x_mean), column * (targets - y_mean)
    if x.shape[0] >= x.shape[1]:
        eigs, q = jnp.linalg.eigh(xc.T @ xc)
        lhs, rhs = q, q.T @ (xc.T @ yc)
    else:
        eigs, q = jnp.linalg.eigh(xc @ xc.T)
        lhs, rhs = xc.T @ q, q.T @ yc
    # Round-off can make the smallest eigenvalues of a PSD matrix slightly negative.
    eigs = jnp.maximum(eigs, 0.0)
    w = jax.vmap(lambda l2: (lhs / (eigs + l2)) @ rhs)(l2_grid)
    return w, y_mean - jnp.einsum("d,gdc->gc", x_mean, w)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _ridge_program(train_x, train_y, holdout, test_x, test_y, l2_grid, *, num_classes):
    mean, std = _common.weighted_standardization(train_x, jnp.ones(train_x.shape[0]))
    x, x_test = (train_x - mean) / std, (test_x - mean) / std
    targets = 2.0 * jax.nn.one_hot(train_y, num_classes) - 1.0
    out = {}
    best = 0
    if l2_grid.shape[0] > 1:
        w, b = _ridge_solutions(x, targets, 1.0 - holdout, l2_grid)
        outputs = jnp.einsum("nd,gdc->gnc", x, w) + b[:, None, :]
        hold_correct = jnp.sum((jnp.argmax(outputs, -1) == train_y) & (holdout > 0), axis=-1)
        hold_sq_err = jnp.sum(holdout * jnp.sum(jnp.square(outputs - targets), -1), axis=-1)
        best = _common.best_on_holdout(hold_correct, hold_sq_err)
        out.update(holdout_correct=hold_correct[best], grid_holdout_correct=hold_correct)
    l2 = l2_grid[best]
    w, b = _ridge_solutions(x, targets, jnp.ones_like(holdout), l2[None])
    test_pred = jnp.argmax(x_test @ w[0] + b[0], axis=-1)
    out.update(test_correct=jnp.sum(test_pred == test_y), l2=l2)
    return out


def ridge_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    num_classes: int | None = None,
    l2_grid: Sequence[float] = (BIG_VISION_L2,),
    holdout_fraction: float = 0.2,
    seed: int = 0,
    block_rows: int = _common.BLOCK_ROWS,
) -> dict:
    """Test accuracy of the closed-form ridge-regression classifier (big_vision's few-shot probe).

    Args:
      train_x, test_x: [N, D] features (standardised inside with the train statistics).
      train_y, test_y: [N] integer labels.
      num_classes: number of classes; 1 + the largest label when None.
      l2_grid: penalties on the summed squared error (see module docstring); one value (default:
        big_vision's 2**10) is used directly, several are chosen on a stratified held-out part of train
        (best accuracy, ties: lowest squared error) and the chosen one refitted on all of train.
      holdout_fraction, seed: size and seed of the held-out split (only used with several l2 values).
      block_rows: more train rows than this (and at least D) are fitted blockwise (module docstring).

    Returns:
      {'accuracy': test accuracy in [0, 1], 'l2': the strength used} and, with a grid,
      'holdout_accuracy' and 'grid_holdout_accuracy' (a tuple, one per grid value).
    """
    blockwise = len(train_x) > block_rows and len(train_x) >= np.shape(train_x)[1]
    train_x, train_y, test_x, test_y, num_classes = _common.classification_inputs(
        train_x, train_y, test_x, test_y, num_classes, on_host=blockwise
    )
    l2_grid, holdout = _common.probe_grid_and_holdout(l2_grid, train_y, holdout_fraction, seed)
    if blockwise:
        out = _ridge_blockwise(train_x, train_y, holdout, test_x, test_y, l2_grid, num_classes, block_rows)
    else:
        out = _ridge_program(train_x, train_y, holdout, test_x, test_y, l2_grid, num_classes=num_classes)
    return _common.counts_to_accuracies(out, train_y.size, test_y.size, int(holdout.sum()))


# ------------------------------------------------------------------------------------------ blockwise
@jax.jit
def _sum_rows(total, valid, x):
    return total + jnp.sum(valid[:, None] * x, axis=0)


@jax.jit
def _sum_sq_dev(total, valid, x, mean):
    return total + jnp.sum(valid[:, None] * jnp.square(x - mean), axis=0)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _fit_sums(sums, valid, x, y, fit_weights, mean, std, *, num_classes: int):
    """Adds a block's weighted sums (weights [F, B], one row per fit) of z, y, z z^T and z y^T."""
    z = (x - mean) / std
    targets = 2.0 * jax.nn.one_hot(y, num_classes) - 1.0
    w = fit_weights * valid[None, :]
    weighted = [w[f][:, None] * z for f in range(w.shape[0])]  # one [B, D] product per fit, not [F, B, D] at once
    return {"count": sums["count"] + jnp.sum(w, axis=1),
            "z": sums["z"] + jnp.stack([jnp.sum(wz, axis=0) for wz in weighted]),
            "y": sums["y"] + jnp.sum(w[:, :, None] * targets[None], axis=1),
            "zz": sums["zz"] + jnp.stack([wz.T @ z for wz in weighted]),
            "zy": sums["zy"] + jnp.stack([wz.T @ targets for wz in weighted])}


def _solve(sums, f: int, l2_grid):
    """Ridge weights [G, D, C] and biases [G, C] of fit `f` from its sums (centred Grams, as `_ridge_solutions`)."""
    count = sums["count"][f]
    z_mean, y_mean = sums["z"][f] / count, sums["y"][f] / count
    gram = sums["zz"][f] - count * jnp.outer(z_mean, z_mean)
    cross = sums["zy"][f] - count * jnp.outer(z_mean, y_mean)
    eigs, q = jnp.linalg.eigh(gram)
    eigs, rhs = jnp.maximum(eigs, 0.0), q.T @ cross
    w = jax.vmap(lambda l2: (q / (eigs + l2)) @ rhs)(l2_grid)
    return w, y_mean - jnp.einsum("d,gdc->gc", z_mean, w)


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _holdout_scores(acc, valid, x, y, holdout, mean, std, w, b, *, num_classes: int):
    z = (x - mean) / std
    targets = 2.0 * jax.nn.one_hot(y, num_classes) - 1.0
    outputs = jnp.einsum("nd,gdc->gnc", z, w) + b[:, None, :]
    hold = holdout * valid
    correct = jnp.sum((jnp.argmax(outputs, -1) == y) & (hold > 0), axis=-1)
    sq_err = jnp.sum(hold * jnp.sum(jnp.square(outputs - targets), -1), axis=-1)
    return acc[0] + correct, acc[1] + sq_err


@jax.jit
def _test_correct(total, valid, x, y, mean, std, w, b):
    pred = jnp.argmax(((x - mean) / std) @ w + b, axis=-1)
    return total + jnp.sum((pred == y) & (valid > 0))


def _ridge_blockwise(train_x, train_y, holdout, test_x, test_y, l2_grid, num_classes: int, block_rows: int) -> dict:
    """`_ridge_program`'s outputs from host features, one block of rows on the device at a time."""
    n, d = train_x.shape
    blocks = lambda *arrays: _common.row_blocks(block_rows, *arrays)
    total = jnp.zeros(d, jnp.float32)
    for valid, x in blocks(train_x):
        total = _sum_rows(total, valid, x)
    mean = total / n
    total = jnp.zeros(d, jnp.float32)
    for valid, x in blocks(train_x):
        total = _sum_sq_dev(total, valid, x, mean)
    std = jnp.sqrt(total / n)
    std = jnp.where(std > 1e-6 * (1.0 + jnp.abs(mean)), std, 1.0)  # as _common.weighted_standardization
    grid = l2_grid.shape[0] > 1
    fits = np.stack([np.ones_like(holdout), *([1.0 - holdout] if grid else [])]).astype(np.float32)  # [F, N]
    f, c = fits.shape[0], num_classes
    sums = {"count": jnp.zeros(f), "z": jnp.zeros((f, d)), "y": jnp.zeros((f, c)), "zz": jnp.zeros((f, d, d)),
            "zy": jnp.zeros((f, d, c))}
    for valid, x, y, weights in blocks(train_x, train_y, fits.T):
        sums = _fit_sums(sums, valid, x, y, weights.T, mean, std, num_classes=c)
    out, best = {}, 0
    if grid:
        w, b = _solve(sums, 1, l2_grid)
        acc = (jnp.zeros(l2_grid.shape[0], jnp.int32), jnp.zeros(l2_grid.shape[0], jnp.float32))
        for valid, x, y, hold in blocks(train_x, train_y, holdout):
            acc = _holdout_scores(acc, valid, x, y, hold, mean, std, w, b, num_classes=c)
        best = int(_common.best_on_holdout(*acc))
        out.update(holdout_correct=acc[0][best], grid_holdout_correct=acc[0])
    w, b = _solve(sums, 0, l2_grid[best:best + 1])
    correct = jnp.zeros((), jnp.int32)
    for valid, x, y in blocks(test_x, test_y):
        correct = _test_correct(correct, valid, x, y, mean, std, w[0], b[0])
    out.update(test_correct=correct, l2=l2_grid[best])
    return out
