"""Zero-shot classification and CLIP's prompt-ensemble class embeddings against NumPy."""

import numpy as np
import pytest

from contrastive.eval import class_embeddings_from_templates, zero_shot_classify


def bag_of_letters(texts):
    """A deterministic stand-in text tower: letter counts plus a constant (never a zero vector)."""
    return np.stack([[t.count(chr(ord("a") + i)) + 0.1 for i in range(26)] for t in texts]).astype(np.float32)


def test_ensemble_is_renormalised_mean_of_normalised_prompt_embeddings():
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return bag_of_letters(texts)

    templates = ["a photo of a {}.", "the number {}", "{} again: {}"]
    result = class_embeddings_from_templates(encode, ["seven", "one"], templates)
    assert calls == [
        ["a photo of a seven.", "the number seven", "seven again: seven"],
        ["a photo of a one.", "the number one", "one again: one"],
    ]
    expected = []
    for prompts in calls:
        e = bag_of_letters(prompts).astype(np.float64)
        m = (e / np.linalg.norm(e, axis=1, keepdims=True)).mean(0)
        expected.append(m / np.linalg.norm(m))
    np.testing.assert_allclose(result, np.stack(expected), rtol=1e-5)


def test_zero_shot_accuracy_matches_numpy():
    rng = np.random.default_rng(0)
    classes, images = rng.normal(size=(4, 10)), rng.normal(size=(33, 10))
    labels = rng.integers(0, 4, 33)
    pred = np.argmax(
        (images / np.linalg.norm(images, axis=1, keepdims=True))
        @ (classes / np.linalg.norm(classes, axis=1)[:, None]).T,
        axis=1,
    )
    assert zero_shot_classify(images, classes, labels) == pytest.approx(np.mean(pred == labels))
    assert zero_shot_classify(classes * 5.0, classes, np.arange(4)) == 1.0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(templates=["a photo of a {}", "a photo"]), "templates"),
        (dict(templates="a {}"), "templates"),
        (dict(templates=[]), "templates"),
        (dict(classnames=[]), "classnames"),
        (dict(encode_fn=lambda texts: np.ones((len(texts) + 1, 3))), "encode_fn"),
    ],
)
def test_template_errors_name_the_argument(kwargs, name):
    args = dict(encode_fn=bag_of_letters, classnames=["zero", "one"], templates=["a {}"])
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        class_embeddings_from_templates(**args)


def test_classify_errors_name_the_argument():
    with pytest.raises(ValueError, match="labels"):
        zero_shot_classify(np.ones((3, 2)), np.ones((2, 2)), [0, 1])
    with pytest.raises(ValueError, match="labels"):
        zero_shot_classify(np.ones((3, 2)), np.ones((2, 2)), [0, 1, 2])
    with pytest.raises(ValueError, match="class_text_emb"):
        zero_shot_classify(np.ones((3, 2)), np.ones((2, 5)), [0, 1, 1])
