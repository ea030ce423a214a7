"""Weighted kNN against a brute-force NumPy implementation (float64, log-domain votes)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from contrastive.eval import knn_accuracy, knn_predict
from contrastive.eval.knn import knn_predict_streamed


def numpy_knn_predict(train_x, train_y, test_x, k, temperature, num_classes):
    """Sort all similarities, keep the k largest, sum exp(s / T) per class (as log-sum-exp), argmax."""
    train = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    test = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    preds = []
    for q in test.astype(np.float64):
        sims = train.astype(np.float64) @ q
        top = np.argsort(-sims, kind="stable")[:k]
        log_votes = [
            logsumexp(sims[top][train_y[top] == c] / temperature) if np.any(train_y[top] == c) else -np.inf
            for c in range(num_classes)
        ]
        preds.append(int(np.argmax(log_votes)))
    return np.array(preds)


@pytest.fixture(scope="module")
def clustered():
    """Overlapping clusters so that k and T change the answers."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 12))
    train_y, test_y = rng.integers(0, 5, 150), rng.integers(0, 5, 61)
    train_x = (centres[train_y] + 0.9 * rng.normal(size=(150, 12))).astype(np.float32)
    test_x = (centres[test_y] + 0.9 * rng.normal(size=(61, 12))).astype(np.float32)
    return train_x, train_y, test_x, test_y


@pytest.mark.parametrize("k, temperature", [(1, 0.07), (10, 0.07), (10, 1.0), (150, 0.07), (20, 0.005)])
def test_predictions_match_numpy(clustered, k, temperature):
    train_x, train_y, test_x, _ = clustered
    pred = knn_predict(train_x, train_y, test_x, temperature, k=k, num_classes=5, batch_size=16)
    np.testing.assert_array_equal(pred, numpy_knn_predict(train_x, train_y, test_x, k, temperature, 5))


def test_accuracy_matches_numpy_and_chunking_does_not_matter(clustered):
    train_x, train_y, test_x, test_y = clustered
    expected = np.mean(numpy_knn_predict(train_x, train_y, test_x, 20, 0.07, 5) == test_y)
    for batch_size in (7, 1000):  # 61 test rows: 7 does not divide it, 1000 exceeds it
        acc = knn_accuracy(train_x, train_y, test_x, test_y, k=20, batch_size=batch_size)
        assert acc == pytest.approx(expected)


def test_small_temperature_does_not_overflow(clustered):
    train_x, train_y, test_x, test_y = clustered
    # exp(1 / 1e-3) overflows float32 by far; the shifted weights must not.
    acc = knn_accuracy(train_x, train_y, test_x, test_y, k=20, temperature=1e-3)
    nearest = knn_accuracy(train_x, train_y, test_x, test_y, k=1)
    assert acc == pytest.approx(nearest)  # T -> 0: the nearest neighbour decides


def test_invariant_to_feature_scale(clustered):
    train_x, train_y, test_x, test_y = clustered
    base = knn_accuracy(train_x, train_y, test_x, test_y, k=20)
    assert knn_accuracy(3.0 * train_x, train_y, 0.5 * test_x, test_y, k=20) == pytest.approx(base)


def test_digits_default_settings(digits_halves):
    acc = knn_accuracy(*digits_halves)  # k=200, T=0.07 as in Wu et al. / DINO
    assert acc > 0.9


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(k=11), "k"),
        (dict(k=0), "k"),
        (dict(temperature=0.0), "temperature"),
        (dict(train_y=np.zeros(9, int)), "train_y"),
        (dict(test_y=np.zeros(4, int)), "test_y"),
        (dict(train_x=np.ones((10, 4, 1))), "train_x"),
        (dict(test_x=np.ones((5, 3))), "test_x"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    args = dict(
        train_x=np.ones((10, 4)),
        train_y=np.arange(10) % 3,
        test_x=np.ones((5, 4)),
        test_y=np.arange(5) % 3,
        k=3,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        knn_accuracy(**args)


def test_non_finite_features_are_refused(clustered):
    train_x, train_y, test_x, test_y = clustered
    bad = test_x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="test_x"):
        knn_accuracy(train_x, train_y, bad, test_y, k=5)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_invariant_to_the_order_of_the_training_set(clustered, seed):
    train_x, train_y, test_x, _ = clustered
    order = np.random.default_rng(seed).permutation(len(train_y))
    kwargs = dict(k=10, num_classes=5, batch_size=16)
    np.testing.assert_array_equal(
        knn_predict(train_x[order], train_y[order], test_x, 0.07, **kwargs),
        knn_predict(train_x, train_y, test_x, 0.07, **kwargs),
    )


# ------------------------------------------------------------------------- the bank streamed in blocks
@pytest.mark.slow
@pytest.mark.parametrize("bank_block", [100, 898])  # the last of 9 blocks padded; one block of the whole half
def test_streamed_bank_predicts_as_the_whole_bank_on_digits(digits_halves, bank_block):
    train_x, train_y, test_x, _ = digits_halves
    whole = knn_predict(train_x, train_y, test_x, 0.07, k=200, num_classes=10)
    streamed = knn_predict_streamed(train_x, train_y, test_x, 0.07, k=200, num_classes=10, bank_block=bank_block)
    np.testing.assert_array_equal(streamed, whole)


def test_streamed_bank_matches_numpy_with_blocks_smaller_than_k(clustered):
    train_x, train_y, test_x, _ = clustered  # 150 train rows: blocks of 7 (the last padded), k = 20
    pred = knn_predict_streamed(train_x, train_y, test_x, 0.07, k=20, num_classes=5, batch_size=16, bank_block=7)
    np.testing.assert_array_equal(pred, numpy_knn_predict(train_x, train_y, test_x, 20, 0.07, 5))


def test_accuracy_streams_the_bank_only_beyond_a_block(clustered, monkeypatch):
    """knn_accuracy sends at most `bank_block` train rows to the device at once, with the same accuracy."""
    from contrastive.eval import knn

    blocks = []
    merge = knn._merge_block
    monkeypatch.setattr(knn, "_merge_block", lambda *a, **kw: (blocks.append(a[3].shape), merge(*a, **kw))[1])
    train_x, train_y, test_x, test_y = clustered
    whole = knn_accuracy(train_x, train_y, test_x, test_y, k=20)
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=20, bank_block=150) == whole and not blocks
    assert knn_accuracy(train_x, train_y, test_x, test_y, k=20, bank_block=40) == whole
    assert blocks == [(40, 12)] * 4  # ceil(150 / 40) blocks of 40 rows
    with pytest.raises(ValueError, match="bank_block"):
        knn_accuracy(train_x, train_y, test_x, test_y, k=20, bank_block=-1)
