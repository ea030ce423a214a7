import numpy as np
import pytest
from sklearn.datasets import load_digits

from contrastive.data import digits, pipeline


def test_split_is_fixed_stratified_and_complete():
    split = digits.split_indices()
    labels = load_digits().target
    train, test = split["train"], split["test"]
    assert (len(train), len(test)) == (1352, 445)
    assert not set(train) & set(test) and len(set(train) | set(test)) == len(labels)
    # Every class keeps about a quarter of its images for test.
    for c in range(10):
        frac = np.mean(labels[test] == c) / np.mean(labels == c)
        assert 0.9 < frac < 1.1


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize("split", ["train", "test"])
def test_builder_stores_the_sklearn_images(prepared, split):
    source = pipeline.data_source("digits", split, prepared)
    data = pipeline.read_all(source)
    ref = load_digits()
    order = np.argsort(data["index"])
    np.testing.assert_array_equal(data["index"][order], digits.split_indices()[split])
    np.testing.assert_array_equal(data["image"][order, :, :, 0], ref.images[data["index"][order]].astype(np.uint8))
    np.testing.assert_array_equal(data["label"][order], ref.target[data["index"][order]])
    assert data["image"].dtype == np.uint8 and data["image"].max() == digits.MAX_INTENSITY
