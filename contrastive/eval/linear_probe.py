"""Linear probe: multinomial logistic regression on frozen features.

The standard linear evaluation of self-supervised representations (SimCLR, Chen et al. 2020; CLIP,
Radford et al. 2021, whose probe is scikit-learn's L-BFGS logistic regression with the L2 strength
chosen on a validation split). Features are standardised with the train statistics (labels unused),
then the weights W [D, C] and bias b [C] minimise, over the n fitted rows,

    L(W, b) = 1/n sum_i CE(softmax(x_i W + b), y_i) + l2/2 ||W||_F^2

(the bias is not penalised). This is scikit-learn's `LogisticRegression(C=1 / (l2 * n))`, whose
objective `C sum_i CE_i + 1/2 ||W||^2` is the one above multiplied by 1 / l2.

The fit is full-batch L-BFGS (`_lbfgs.minimize`) run to a gradient-norm tolerance, all inside one
jitted program: the fits of every `l2` of the grid on the fitting part of train and on all of train
(one vmapped loop), the choice of `l2` on the stratified held-out part, and the test score. It is
compiled once per (shapes, grid length, num_classes, max_iter) and reused by later calls.

Memory: the program holds the train features on the device twice (as given and standardised) and, for
each of the 2G fits at once, N x C logits and their gradients: XLA's memory analysis of the program for
200,000 x 256 features, 100 classes and the default grid (G = 5) gives 3.4 GiB of temporaries (0.2 GiB of
arguments); for an ImageNet train split (1.28M x 2048, 1000 classes) the 10 fits' logits alone are 51 GB,
beside 21 GB of features. Features that big go to `sgd_probe.minibatch_linear_probe`, the same objective
by mini-batches (the `probes` evaluator's `linear_solver='auto'` does so above `full_batch_max_elements`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from contrastive.eval import _common, _lbfgs

DEFAULT_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _unflatten(theta, dim, num_classes):
    return theta[: dim * num_classes].reshape(dim, num_classes), theta[dim * num_classes :]


def _objective(theta, x, onehot, weights, l2):
    """Weighted mean cross-entropy plus l2/2 ||W||^2 (weights are 0/1 row masks)."""
    w, b = _unflatten(theta, x.shape[1], onehot.shape[1])
    ce = -jnp.sum(onehot * jax.nn.log_softmax(x @ w + b), axis=-1)
    return jnp.sum(weights * ce) / jnp.sum(weights) + 0.5 * l2 * jnp.sum(jnp.square(w))


def _fit(theta0, x, onehot, weights, l2, *, max_iter, tol):
    """Minimises `_objective` by L-BFGS from `theta0`; returns (flat params, iterations used)."""
    loss = functools.partial(_objective, x=x, onehot=onehot, weights=weights, l2=l2)
    return _lbfgs.minimize(loss, theta0, max_iter=max_iter, tol=tol)


def _scores(params, x, onehot, weights):
    """Number of correct predictions and mean cross-entropy over the rows with weight 1."""
    w, b = _unflatten(params, x.shape[1], onehot.shape[1])
    logits = x @ w + b
    correct = (jnp.argmax(logits, -1) == jnp.argmax(onehot, -1)) & (weights > 0)
    ce = -jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1)
    return jnp.sum(correct), jnp.sum(weights * ce) / jnp.sum(weights)


@functools.partial(jax.jit, static_argnames=("num_classes", "max_iter"))
def _probe_program(theta0, train_x, train_y, holdout, test_x, test_y, l2_grid, tol, *, num_classes, max_iter):
    # One standardisation (all train rows; labels unused) shared by every fit, so that all of them
    # -- each grid value on the fitting part, and each grid value on all of train -- run as one
    # vmapped L-BFGS loop: a single compiled loop costs far less compile time on a CPU host than a
    # grid loop plus a separate refit loop, and the extra refits are cheap at probe sizes.
    mean, std = _common.weighted_standardization(train_x, jnp.ones(train_x.shape[0]))
    x, x_test = (train_x - mean) / std, (test_x - mean) / std
    onehot = jax.nn.one_hot(train_y, num_classes)
    num_grid = l2_grid.shape[0]
    everything = jnp.ones_like(holdout)
    if num_grid > 1:
        weights = jnp.concatenate(
            [jnp.tile(1.0 - holdout, (num_grid, 1)), jnp.tile(everything, (num_grid, 1))]
        )
        l2s = jnp.concatenate([l2_grid, l2_grid])
    else:
        weights, l2s = everything[None], l2_grid
    fit = functools.partial(_fit, max_iter=max_iter, tol=tol)
    thetas, iterations = jax.vmap(fit, in_axes=(None, None, None, 0, 0))(theta0, x, onehot, weights, l2s)
    out = {}
    if num_grid > 1:
        hold_correct, hold_ce = jax.vmap(_scores, in_axes=(0, None, None, None))(
            thetas[:num_grid], x, onehot, holdout
        )
        best = _common.best_on_holdout(hold_correct, hold_ce)
        out.update(holdout_correct=hold_correct[best], grid_holdout_correct=hold_correct)
        final = num_grid + best
    else:
        best = final = 0
    train_correct, _ = _scores(thetas[final], x, onehot, everything)
    w, b = _unflatten(thetas[final], x.shape[1], num_classes)
    test_pred = jnp.argmax(x_test @ w + b, axis=-1)
    out.update(
        test_correct=jnp.sum(test_pred == test_y),
        train_correct=train_correct,
        l2=l2_grid[best],
        iterations=iterations[final],
    )
    return out


def linear_probe(
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    num_classes: int | None = None,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    max_iter: int = 1000,
    tol: float = 1e-5,
) -> dict:
    """Test accuracy of an L2-regularised multinomial logistic regression on frozen features.

    Args:
      train_x, test_x: [N, D] features (any float dtype; computed in float32).
      train_y, test_y: [N] integer labels in [0, num_classes).
      num_classes: number of classes; 1 + the largest label when None.
      l2_grid: candidate strengths `l2` of the penalty l2/2 ||W||^2 on standardised features. With more
        than one value, each is fitted on a stratified (1 - holdout_fraction) part of train and the one
        with the best accuracy on the rest (ties: lowest cross-entropy) is refitted on all of train.
        A single value is used directly.
      holdout_fraction: fraction of every class held out to choose `l2`.
      seed: seed of the held-out split.
      max_iter: L-BFGS iteration cap per fit.
      tol: stop when the gradient norm of the objective falls below this (or when f stops moving in
        float32); 1e-5 reproduces scikit-learn's converged solutions to within a test point.

    Returns:
      {'accuracy': test accuracy in [0, 1], 'l2': chosen strength, 'train_accuracy': accuracy of the
      final fit on train, 'iterations': L-BFGS iterations of the final fit (== max_iter means it hit the
      cap)} and, when a grid was searched, 'holdout_accuracy' (of the chosen l2) and
      'grid_holdout_accuracy' (a tuple, one per grid value). All values are Python numbers.
    """
    train_x, train_y, test_x, test_y, num_classes = _common.classification_inputs(
        train_x, train_y, test_x, test_y, num_classes
    )
    if max_iter < 1:
        raise ValueError(f"`max_iter` must be positive, got {max_iter}.")
    l2_grid, holdout = _common.probe_grid_and_holdout(l2_grid, train_y, holdout_fraction, seed)
    # The zero start point is a host buffer, not a constant built inside jit: XLA:CPU in jax 0.10
    # miscompiles a dot with a broadcast operand fused into a reduction (NaN/garbage first step).
    theta0 = np.zeros((train_x.shape[1] + 1) * num_classes, dtype=np.float32)
    out = _probe_program(
        theta0,
        train_x,
        train_y,
        holdout,
        test_x,
        test_y,
        l2_grid,
        np.float32(tol),
        num_classes=num_classes,
        max_iter=int(max_iter),
    )
    return _common.counts_to_accuracies(out, train_y.size, test_y.size, int(holdout.sum()))
