"""Ridge probe against scikit-learn's RidgeClassifier (+-1 targets, unpenalised intercept) and NumPy."""

import numpy as np
import pytest
from sklearn.linear_model import RidgeClassifier
from sklearn.preprocessing import StandardScaler

from contrastive.eval import ridge_probe


def sklearn_ridge_accuracy(train_x, train_y, test_x, test_y, l2):
    """RidgeClassifier minimises ||Y - X W - b||^2 + alpha ||W||^2 with Y in {-1, 1}: the same problem."""
    scaler = StandardScaler().fit(train_x)
    clf = RidgeClassifier(alpha=l2, solver="svd").fit(scaler.transform(train_x), train_y)
    return clf.score(scaler.transform(test_x), test_y)


@pytest.mark.parametrize("l2", [2.0**-2, 2.0**10])
def test_matches_sklearn_on_digits(digits_halves, l2):
    result = ridge_probe(*digits_halves, l2_grid=(l2,))
    assert result["accuracy"] == pytest.approx(sklearn_ridge_accuracy(*digits_halves, l2), abs=2e-3)
    assert result["l2"] == l2


def test_fewer_rows_than_features_uses_the_dual_and_matches_numpy():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 80))
    train_y, test_y = np.arange(40) % 3, rng.integers(0, 3, 50)
    train_x = (centres[train_y] + rng.normal(size=(40, 80))).astype(np.float32)
    test_x = (centres[test_y] + rng.normal(size=(50, 80))).astype(np.float32)
    result = ridge_probe(train_x, train_y, test_x, test_y, l2_grid=(4.0,))
    # NumPy float64 closed form on the primal side.
    mean, std = train_x.mean(0), train_x.std(0)
    x, xt = (train_x - mean) / std, (test_x - mean) / std
    y = 2.0 * np.eye(3)[train_y] - 1.0
    xc, yc = x - x.mean(0), y - y.mean(0)
    w = np.linalg.solve(xc.T @ xc + 4.0 * np.eye(80), xc.T @ yc)
    b = y.mean(0) - x.mean(0) @ w
    assert result["accuracy"] == pytest.approx(np.mean(np.argmax(xt @ w + b, 1) == test_y))


def test_grid_selection(digits_halves):
    grid = tuple(2.0 ** np.arange(-4, 14, 2))
    result = ridge_probe(*digits_halves, l2_grid=grid)
    assert result["l2"] in grid
    assert result["holdout_accuracy"] == max(result["grid_holdout_accuracy"])
    assert result["accuracy"] > 0.9


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="l2_grid"):
        ridge_probe(np.ones((4, 2)), [0, 1, 0, 1], np.ones((2, 2)), [0, 1], l2_grid=())
    with pytest.raises(ValueError, match="train_y"):
        ridge_probe(np.ones((4, 2)), [0, 1, 0], np.ones((2, 2)), [0, 1])


@pytest.mark.parametrize("grid", [(2.0**10,), tuple(2.0 ** np.arange(-4, 14, 2))])
def test_blockwise_fit_equals_the_whole_array_fit(digits_halves, grid):
    """Train and test sent to the device 100 rows at a time (the last block padded): the same l2 choice,
    held-out and test accuracies as the one-program fit."""
    whole = ridge_probe(*digits_halves, l2_grid=grid)
    blocks = ridge_probe(*digits_halves, l2_grid=grid, block_rows=100)
    assert len(digits_halves[0]) > 100 and len(digits_halves[0]) % 100  # several blocks, a ragged last one
    assert blocks == whole
