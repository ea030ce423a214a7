"""Digits with captions: sklearn's 8x8 handwritten digits paired with template sentences, as a TFDS set.

Every image gets the same fixed list of captions that name its class: each template of
`CAPTION_TEMPLATES` filled once with the digit's word and once with its numeral ("a handwritten seven",
"a handwritten 7", "the number seven", ...), so 2 * len(CAPTION_TEMPLATES) captions per image, stored in
that order (no random choice anywhere; the train step picks one per image and step). The split is the
digits split (`digits.split_indices`: every 4th image of each class is test), so probes, zero-shot and
retrieval numbers are comparable with the image-only runs.

The captions describe only the class, so two images of the same digit have the same captions: text ->
image retrieval of one particular image is bounded by about 1 / (images per class), and the class-level
recall (a hit is any image of the named digit) is reported beside it.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from contrastive.data import digits

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CAPTION_TEMPLATES = (
    "a handwritten {}",
    "the number {}",
    "a photo of the digit {}",
    "a scan of a handwritten {}",
    "the digit {} written by hand",
    "a small blurry {}",
    "a pixelated image of a {}",
    "someone wrote the number {}",
)


def captions_for(label: int, templates=CAPTION_TEMPLATES) -> list[str]:
    """The captions of an image of digit `label`: every template with the word, then with the numeral."""
    return [t.format(name) for t in templates for name in (DIGIT_WORDS[label], str(label))]


NUM_CAPTIONS = len(captions_for(0))


class DigitsCaptions(tfds.core.GeneratorBasedBuilder):
    """sklearn's 8x8 digits, each with NUM_CAPTIONS template captions (prepared locally, nothing downloaded)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Digits split; 8 templates x (word, numeral) captions per image."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=digits.IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=DIGIT_WORDS),
                    "index": np.int64,
                    "captions": tfds.features.Sequence(tfds.features.Text()),
                }
            ),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The images ship inside scikit-learn; the captions are made here.
        return {split: self._generate_examples(idx) for split, idx in digits.split_indices().items()}

    def _generate_examples(self, indices):
        from sklearn.datasets import load_digits

        data = load_digits()
        for i in indices:
            label = int(data.target[i])
            yield int(i), {"image": data.images[i].astype(np.uint8).reshape(digits.IMAGE_SHAPE), "label": label,
                           "index": int(i), "captions": captions_for(label)}


def digits_captions_builder(data_dir: str) -> DigitsCaptions:
    """The prepared builder; prepares the array_record files under `data_dir` on first use."""
    return digits.prepared(DigitsCaptions, data_dir)
