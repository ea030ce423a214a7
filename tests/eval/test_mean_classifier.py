"""Mean (class-centroid) classifier against NumPy."""

import numpy as np
import pytest

from contrastive.eval import class_means, mean_classifier_accuracy


def numpy_mean_classifier(train_x, train_y, test_x, num_classes):
    f = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    means = np.stack(
        [
            f[train_y == c].mean(0) if np.any(train_y == c) else np.zeros(f.shape[1])
            for c in range(num_classes)
        ]
    )
    return np.argmax((test_x / np.linalg.norm(test_x, axis=1, keepdims=True)) @ means.T, axis=1), means


def test_matches_numpy_on_digits(digits_halves):
    train_x, train_y, test_x, test_y = digits_halves
    pred, means = numpy_mean_classifier(train_x, train_y, test_x, 10)
    np.testing.assert_allclose(class_means(train_x, train_y, num_classes=10), means, atol=1e-6)
    assert mean_classifier_accuracy(*digits_halves) == pytest.approx(np.mean(pred == test_y))
    assert mean_classifier_accuracy(*digits_halves) > 0.85


def test_class_missing_from_train_gets_a_zero_centroid():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 6)).astype(np.float32), np.arange(30) % 3
    means = class_means(x, y, num_classes=5)
    np.testing.assert_array_equal(means[3:], 0.0)
    pred, _ = numpy_mean_classifier(x, y, x, 5)
    assert mean_classifier_accuracy(x, y, x, y, num_classes=5) == pytest.approx(np.mean(pred == y))


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="train_y"):
        mean_classifier_accuracy(np.ones((4, 2)), [0, 1, 0], np.ones((2, 2)), [0, 1])
    with pytest.raises(ValueError, match="test_y"):
        mean_classifier_accuracy(np.ones((4, 2)), [0, 1, 0, 1], np.ones((2, 2)), [0, 5], num_classes=2)


def test_blockwise_equals_whole(digits_halves):
    """Class sums accumulated and test rows classified 100 rows at a time: the same centroids (to float
    round-off) and the same accuracy as the whole-array program."""
    from contrastive.eval.mean_classifier import class_means_blockwise

    train_x, train_y, test_x, test_y = digits_halves
    assert len(train_x) > 100 and len(test_x) > 100 and len(train_x) % 100
    np.testing.assert_allclose(class_means_blockwise(train_x, train_y, num_classes=10, block_rows=100),
                               class_means(train_x, train_y, num_classes=10), rtol=1e-5, atol=1e-6)
    assert mean_classifier_accuracy(*digits_halves, block_rows=100) == mean_classifier_accuracy(*digits_halves)
