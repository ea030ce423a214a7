"""The captioned digits builder, the image-text sources and a TFDS mock of a standard image-text set."""

import importlib.util

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from contrastive.data import digits, image_text
from contrastive.data.captions import (
    CAPTION_TEMPLATES,
    DIGIT_WORDS,
    NUM_CAPTIONS,
    captions_for,
    digits_captions_builder,
)
from contrastive.data.pipeline import GlobalBatches
from contrastive.data.tokenizer import PAD_ID, WordTokenizer, words
from contrastive.parallel.mesh import make_mesh

DIGIT_NAMES = {*DIGIT_WORDS, *(str(d) for d in range(10))}


def named_digits(caption) -> set:
    return set(words(caption)) & DIGIT_NAMES


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
    return digits_captions_builder(str(tmp_path_factory.mktemp("tfds")))


def test_templates_fill_word_and_numeral():
    caps = captions_for(7)
    assert "a handwritten seven" in caps and "the number 7" in caps and "a photo of the digit seven" in caps
    assert len(caps) == NUM_CAPTIONS == 2 * len(CAPTION_TEMPLATES)
    assert all(named_digits(c) in ({"seven"}, {"7"}) for c in caps)


def test_builder_uses_the_digits_split_and_every_caption_names_the_right_digit(builder):
    from sklearn.datasets import load_digits

    data = load_digits()
    split = digits.split_indices()
    for name in ("train", "test"):
        source = builder.as_data_source(split=name)
        assert len(source) == len(split[name])
        for i in range(0, len(source), 37):
            ex = source[i]
            label = int(ex["label"])
            assert label == data.target[ex["index"]]
            np.testing.assert_array_equal(ex["image"][..., 0], data.images[ex["index"]].astype(np.uint8))
            assert len(ex["captions"]) == NUM_CAPTIONS
            assert all(named_digits(c) in ({DIGIT_WORDS[label]}, {str(label)}) for c in ex["captions"])


def test_captioned_source_has_fixed_shapes_and_pads_caption_rows(builder):
    raw = builder.as_data_source(split="test")
    tok = WordTokenizer.from_texts(captions_for(0) + captions_for(1), max_len=6)
    src = image_text.CaptionedSource(raw, "digits_captions", tok, max_captions=20)
    ex = src[0]
    assert ex["tokens"].shape == (20, 6) and ex["num_captions"] == NUM_CAPTIONS
    assert np.all(ex["tokens"][NUM_CAPTIONS:] == PAD_ID) and np.all(ex["tokens"][:NUM_CAPTIONS, 0] != PAD_ID)
    assert image_text.CaptionedSource(raw, "digits_captions", tok, max_captions=3)[0]["num_captions"] == 3


def test_unknown_image_text_dataset_is_refused():
    with pytest.raises(ValueError, match="not an image-text dataset; choose one of digits_captions"):
        image_text.check_name("digits")


def _pipeline_on_mock(name, split):
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        raw = tfds.data_source(name, split=split)
        tok = image_text.build_tokenizer(name, raw, max_len=8, max_vocab=100, num_examples=6)
        src = image_text.CaptionedSource(raw, name, tok, max_captions=4, image_size=(16, 16))
        batches = GlobalBatches(src, global_batch_size=4, seed=0, mesh=make_mesh(1), keys=image_text.KEYS)
        batch = batches.local_batch(0)
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["tokens"].shape == (4, 4, 8)
    assert np.all((batch["num_captions"] >= 1) & (batch["num_captions"] <= 4))
    assert isinstance(batches.to_global(batch)["tokens"], jax.Array)


def test_ref_coco_through_the_pipeline_with_mock_data():
    """RefCOCO (COCO images + referring expressions) is the TFDS image-text set whose builder needs no
    TensorFlow, so its mock data runs here: resized to the model's image size, tokenized, batched."""
    _pipeline_on_mock("ref_coco", "train")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                    reason="TFDS's coco_captions builder uses tf.int64 in _info: it cannot be built without TF")
def test_coco_captions_through_the_pipeline_with_mock_data():
    _pipeline_on_mock("coco_captions", "train")


def test_coco_captions_fields_are_read():
    """The coco_captions field layout (captions/text, objects/label), on a hand-made example."""
    example = {"image": np.zeros((20, 30, 3), np.uint8),
               "captions": {"id": np.array([1, 2]), "text": np.array([b"A dog.", b"A brown dog runs"], object)},
               "objects": {"label": np.array([17, 3])}}
    assert image_text.captions_of("coco_captions", example) == [b"A dog.", b"A brown dog runs"]
    assert image_text.label_of("coco_captions", example) == 17
    assert image_text.resize(example["image"], (8, 8)).shape == (8, 8, 3)
