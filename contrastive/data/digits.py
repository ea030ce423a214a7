"""TFDS builder for the handwritten-digits set that scikit-learn ships.

`sklearn.datasets.load_digits` bundles the UCI "Optical Recognition of Handwritten Digits" test set
(Alpaydin & Kaynak, 1998): 1,797 grayscale images of 8x8 pixels with intensities 0..16, 10 classes. It is
the only real image data available on machines without internet, so it is the project's default dataset.

The split is fixed and stratified without any random number generator (so it cannot drift with library
versions): within each class, in the original order, every fourth image goes to `test`. That gives 1,352
train and 445 test images. Images are stored as uint8 in their native 0..16 range, in array_record files
read through `tfds.data_source` (no TensorFlow needed); `index` is the image's position in `load_digits`,
a stable id for per-sample state.
"""

from __future__ import annotations

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from contrastive import locks

IMAGE_SHAPE = (8, 8, 1)
MAX_INTENSITY = 16
NUM_CLASSES = 10
TEST_EVERY = 4


def split_indices() -> dict[str, np.ndarray]:
    """The fixed stratified split: every TEST_EVERY-th image of each class is a test image."""
    from sklearn.datasets import load_digits

    labels = load_digits().target
    test = np.concatenate([np.flatnonzero(labels == c)[TEST_EVERY - 1 :: TEST_EVERY] for c in range(NUM_CLASSES)])
    is_test = np.zeros(len(labels), bool)
    is_test[test] = True
    return {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test)}


class Digits(tfds.core.GeneratorBasedBuilder):
    """sklearn's 8x8 handwritten digits as a TFDS dataset (prepared locally, nothing downloaded)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Fixed stratified split: every 4th image of each class is test."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                    "index": np.int64,
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The data ships inside scikit-learn.
        return {split: self._generate_examples(idx) for split, idx in split_indices().items()}

    def _generate_examples(self, indices):
        from sklearn.datasets import load_digits

        data = load_digits()
        for i in indices:
            image = data.images[i].astype(np.uint8).reshape(IMAGE_SHAPE)
            yield int(i), {"image": image, "label": int(data.target[i]), "index": int(i)}


def digits_builder(data_dir: str) -> Digits:
    """The prepared builder; prepares the array_record files under `data_dir` on first use."""
    return prepared(Digits, data_dir)


def prepared(builder_class, data_dir: str, **kwargs) -> tfds.core.DatasetBuilder:
    """`builder_class(data_dir=data_dir, file_format="array_record", **kwargs)` with its files prepared, by
    one process at a time: the processes of a multi-host job (or two jobs) that share a data_dir would
    otherwise prepare it together, and all but one fail on TFDS's final rename. The others wait on a lock,
    then find the files ready (the builder is made inside the lock: it reads what is prepared when made)."""
    with locks.exclusive(pathlib.Path(data_dir).expanduser() / f".{builder_class.name}.prepare.lock"):
        builder = builder_class(data_dir=data_dir, file_format="array_record", **kwargs)
        builder.download_and_prepare()
    return builder
