"""Linear probe against scikit-learn's LogisticRegression on the same standardised features."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from contrastive.eval import _common, linear_probe


def sklearn_probe_accuracy(train_x, train_y, test_x, test_y, l2):
    """Same objective: mean CE + l2/2 ||W||^2  <=>  C sum CE + 1/2 ||W||^2 with C = 1 / (l2 n)."""
    # One BLAS/OpenMP thread: on a busy 2-core machine threads oversubscribe and the fit gets ~100x slower.
    with threadpool_limits(1):
        scaler = StandardScaler().fit(train_x)
        clf = LogisticRegression(C=1.0 / (l2 * len(train_y)), max_iter=10_000, tol=1e-8)
        clf.fit(scaler.transform(train_x), train_y)
        return clf.score(scaler.transform(test_x), test_y)


@pytest.mark.parametrize("l2", [1e-3, 1e-1])
def test_matches_sklearn_on_digits(digits_halves, l2):
    result = linear_probe(*digits_halves, l2_grid=(l2,))
    reference = sklearn_probe_accuracy(*digits_halves, l2)
    assert abs(result["accuracy"] - reference) <= 0.01, (result, reference)
    assert result["l2"] == pytest.approx(l2)
    assert result["iterations"] < 1000  # converged, not stopped by the cap


@pytest.mark.slow
def test_matches_sklearn_on_wide_random_features(digits_halves):
    # 512-d features: the width the runner probes; this size once hit an XLA:CPU miscompile (NaN).
    train_x, train_y, test_x, test_y = digits_halves
    projection = np.random.default_rng(1).normal(size=(64, 512)).astype(np.float32)
    train_f, test_f = np.tanh(train_x @ projection / 20), np.tanh(test_x @ projection / 20)
    result = linear_probe(train_f, train_y, test_f, test_y, l2_grid=(1e-2,))
    reference = sklearn_probe_accuracy(train_f, train_y, test_f, test_y, 1e-2)
    assert abs(result["accuracy"] - reference) <= 0.01, (result, reference)


def test_separable_synthetic_case(digits_halves):
    # Same shapes as the digits halves, so the compiled program of the digits tests is reused.
    train_x, _, test_x, _ = digits_halves
    rng = np.random.default_rng(0)
    centres = 6.0 * rng.normal(size=(10, train_x.shape[1]))
    train_y, test_y = rng.integers(0, 10, len(train_x)), rng.integers(0, 10, len(test_x))
    train_x = (centres[train_y] + rng.normal(size=train_x.shape)).astype(np.float32)
    test_x = (centres[test_y] + rng.normal(size=test_x.shape)).astype(np.float32)
    result = linear_probe(train_x, train_y, test_x, test_y, l2_grid=(1e-2,))
    reference = sklearn_probe_accuracy(train_x, train_y, test_x, test_y, 1e-2)
    assert result["accuracy"] == 1.0 == reference
    assert result["train_accuracy"] == 1.0


def test_grid_search_picks_from_grid_and_is_deterministic(digits_halves):
    grid = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    first = linear_probe(*digits_halves, l2_grid=grid, seed=3)
    second = linear_probe(*digits_halves, l2_grid=grid, seed=3)
    assert first == second
    assert min(grid, key=lambda v: abs(v - first["l2"])) == pytest.approx(first["l2"])
    assert len(first["grid_holdout_accuracy"]) == len(grid)
    assert first["holdout_accuracy"] == max(first["grid_holdout_accuracy"])
    assert first["accuracy"] > 0.9  # digits with a linear model: ~96%


def test_float_labels_and_explicit_num_classes_give_the_same_fit(digits_halves):
    train_x, train_y, test_x, test_y = digits_halves
    # Same shapes, static arguments and l2 as a test above: reuses its compiled program.
    as_ints = linear_probe(train_x, train_y, test_x, test_y, l2_grid=(1e-1,))
    as_floats = linear_probe(
        train_x, train_y.astype(np.float32), test_x, test_y, num_classes=10, l2_grid=(1e-1,)
    )
    assert as_floats == as_ints


def test_stratified_holdout_keeps_every_class_on_both_sides():
    labels = np.repeat(np.arange(5), [2, 10, 11, 40, 1])
    mask = _common.stratified_holdout_mask(labels, 0.2, seed=0)
    for cls, count in zip(range(5), [2, 10, 11, 40, 1]):
        held = mask[labels == cls].sum()
        assert held == (0 if count == 1 else min(max(1, round(0.2 * count)), count - 1))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(train_y=np.zeros(7, int)), "train_y"),
        (dict(test_y=np.zeros(3, int)), "test_y"),
        (dict(train_x=np.zeros(10)), "train_x"),
        (dict(test_x=np.zeros((5, 3))), "test_x"),
        (dict(train_y=np.full(10, -1)), "train_y"),
        (dict(train_y=np.linspace(0, 1, 10)), "train_y"),
        (dict(num_classes=2), "num_classes"),
        (dict(l2_grid=(1e-3, -1.0)), "l2_grid"),
        (dict(l2_grid=(1e-3, 1e-2), holdout_fraction=1.5), "holdout_fraction"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    args = dict(
        train_x=np.ones((10, 4)),
        train_y=np.arange(10) % 3,
        test_x=np.ones((5, 4)),
        test_y=np.arange(5) % 3,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        linear_probe(**args)
