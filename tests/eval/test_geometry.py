"""Alignment, uniformity and tolerance against their formulas in NumPy float64; the histogram PNG."""

import numpy as np
import pytest

from contrastive.eval import (
    alignment,
    positive_negative_similarities,
    similarity_histograms,
    tolerance,
    uniformity,
)


def normalise(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def embeddings():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(45, 6)).astype(np.float32)
    return x, (x + 0.5 * rng.normal(size=x.shape)).astype(np.float32), rng.integers(0, 4, 45)


@pytest.mark.parametrize("alpha", [2.0, 1.0])
def test_alignment_matches_formula(embeddings, alpha):
    x, y, _ = embeddings
    expected = np.mean(np.linalg.norm(normalise(x) - normalise(y), axis=1) ** alpha)
    assert alignment(x, y, alpha=alpha) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("t", [2.0, 0.5])
def test_uniformity_matches_formula_over_distinct_pairs(embeddings, t):
    x, _, _ = embeddings
    f = normalise(x)
    i, j = np.triu_indices(len(f), k=1)
    expected = np.log(np.mean(np.exp(-t * np.sum((f[i] - f[j]) ** 2, axis=1))))
    assert uniformity(x, t=t, batch_size=8) == pytest.approx(expected, rel=1e-5)


def test_uniformity_is_finite_for_large_t(embeddings):
    assert np.isfinite(uniformity(embeddings[0], t=1e4, batch_size=8))


def test_uniformity_of_a_collapsed_representation_is_zero():
    assert uniformity(np.ones((10, 3))) == pytest.approx(0.0, abs=1e-6)


def test_tolerance_matches_mean_over_same_class_pairs(embeddings):
    x, _, labels = embeddings
    f = normalise(x)
    pairs = [f[a] @ f[b] for a in range(len(f)) for b in range(len(f)) if a != b and labels[a] == labels[b]]
    assert tolerance(x, labels) == pytest.approx(np.mean(pairs), rel=1e-5)


def test_positive_negative_similarities(embeddings):
    x, y, _ = embeddings
    pos, neg = positive_negative_similarities(x, y)
    sims = normalise(x) @ normalise(y).T
    np.testing.assert_allclose(pos, np.diag(sims), atol=1e-6)
    np.testing.assert_allclose(neg, sims[~np.eye(len(x), dtype=bool)], atol=1e-6)


def test_histogram_png_is_written(embeddings, tmp_path):
    pos, neg = positive_negative_similarities(*embeddings[:2])
    path = similarity_histograms(pos, neg, tmp_path / "plots" / "sims.png", title="test")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # All-equal similarities (a collapsed encoder) still plot.
    similarity_histograms(np.ones(4), np.ones(12), tmp_path / "collapsed.png")


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: alignment(np.ones((3, 2)), np.ones((4, 2))), "x"),
        (lambda: alignment(np.ones((3, 2)), np.ones((3, 2)), alpha=0), "alpha"),
        (lambda: uniformity(np.ones((1, 2))), "x"),
        (lambda: uniformity(np.ones(5)), "x"),
        (lambda: tolerance(np.ones((3, 2)), [0, 1]), "labels"),
        (lambda: tolerance(np.ones((3, 2)), [0, 1, 2]), "labels"),
        (lambda: similarity_histograms([], [0.1], "unused.png"), "pos_sims"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
