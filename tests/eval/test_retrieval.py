"""Recall@K against hand-computed cases and a brute-force NumPy ranking."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contrastive.eval import image_text_retrieval, positive_ranks, retrieval_recall


def test_hand_computed_case_with_several_keys_per_query():
    keys = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    query = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # q0 owns k0 (its nearest), q1 owns k1 and k2 (k1 nearest), q2 owns k3, which it ranks third
    # (sims: k2 1 > k1 0 > k3 -0.6 > k0 -1).
    result = retrieval_recall(query, keys, ks=(1, 2, 3), query_ids=[0, 1, 2], key_ids=[0, 1, 1, 2])
    assert result == pytest.approx({"recall@1": 2 / 3, "recall@2": 2 / 3, "recall@3": 1.0})


def test_hand_computed_image_text_case():
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    captions = np.array([[1.0, 0.1], [0.2, 1.0], [0.0, 1.0], [1.0, 0.5]])
    # Captions 1 and 3 sit nearer the other image: each image still finds a good caption first, but
    # only captions 0 and 2 find their own image first.
    result = image_text_retrieval(images, captions, text_to_image=[0, 0, 1, 1], ks=(1, 2))
    assert result == pytest.approx(
        {
            "image_to_text/recall@1": 1.0,
            "image_to_text/recall@2": 1.0,
            "text_to_image/recall@1": 0.5,
            "text_to_image/recall@2": 1.0,
        }
    )


def test_ranks_match_numpy_brute_force():
    rng = np.random.default_rng(0)
    query, keys = rng.normal(size=(37, 8)), rng.normal(size=(50, 8))
    query_ids, key_ids = rng.integers(0, 10, 37), np.arange(50) % 10
    ranks = positive_ranks(query, keys, query_ids, key_ids, batch_size=8)  # 8 does not divide 37
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    k = keys / np.linalg.norm(keys, axis=1, keepdims=True)
    sims = q @ k.T
    expected = [np.sum(s > s[key_ids == qid].max()) for s, qid in zip(sims, query_ids)]
    np.testing.assert_array_equal(ranks, expected)
    result = retrieval_recall(query, keys, ks=(1, 5), query_ids=query_ids, key_ids=key_ids, batch_size=8)
    assert result["recall@5"] == pytest.approx(np.mean(np.array(expected) < 5))


def test_one_to_one_default_and_perfect_retrieval():
    emb = np.random.default_rng(1).normal(size=(20, 16))
    assert retrieval_recall(emb, 2.0 * emb) == {"recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0}
    assert image_text_retrieval(emb, emb, ks=(1,)) == {
        "image_to_text/recall@1": 1.0,
        "text_to_image/recall@1": 1.0,
    }


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: retrieval_recall(np.ones((3, 2)), np.ones((4, 2))), "query"),
        (lambda: retrieval_recall(np.ones((3, 2)), np.ones((3, 2)), ks=(4,)), "ks"),
        (lambda: retrieval_recall(np.ones((3, 2)), np.ones((3, 3))), "keys"),
        (
            lambda: retrieval_recall(np.ones((2, 2)), np.ones((3, 2)), query_ids=[0, 7], key_ids=[0, 1, 2]),
            "query_ids",
        ),
        (
            lambda: retrieval_recall(np.ones((2, 2)), np.ones((3, 2)), query_ids=[0, 1], key_ids=[0, 1]),
            "key_ids",
        ),
        (lambda: image_text_retrieval(np.ones((2, 2)), np.ones((3, 2))), "text_to_image"),
        (
            lambda: image_text_retrieval(np.ones((2, 2)), np.ones((3, 2)), text_to_image=[0, 0, 0]),
            "text_to_image",
        ),
        (lambda: image_text_retrieval(np.ones(2), np.ones((3, 2)), text_to_image=[0, 1, 1]), "image_emb"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_recall_invariant_to_the_order_of_the_keys(seed):
    rng = np.random.default_rng(0)
    query, keys = rng.normal(size=(12, 4)), rng.normal(size=(24, 4))
    key_ids = np.arange(24) % 12
    order = np.random.default_rng(seed).permutation(24)
    kwargs = dict(ks=(1, 3), query_ids=np.arange(12))
    assert retrieval_recall(query, keys[order], key_ids=key_ids[order], **kwargs) == retrieval_recall(
        query, keys, key_ids=key_ids, **kwargs
    )
