"""Datasets by name (`config.data.name`): one `DatasetSpec` each in `DATASETS`.

A spec says how to open a split as a random-access source of examples (dicts of NumPy arrays), which
family of loss it feeds (`views`: images and labels; `image_text`: images with captions), the largest
stored pixel value, the class names in label order (zero-shot prompts; `None` when the labels are not
classes) and, for image-text data, how to read an example's captions and label.

`register_dataset(DatasetSpec(...))` adds one from any file. A name that is not registered is read as a
TFDS image-classification set with `image` and `label` features and 8-bit pixels, prepared in
array_record format under `data.data_dir` (`tfds.data_source`, no TensorFlow).

Built in: `digits` (scikit-learn's 8x8 digits, `contrastive.data.digits`), `digits_captions` (the same
images with generated captions, `contrastive.data.captions`), `coco_captions` (TFDS MS-COCO with its 5-7
captions per image; TFDS's builder for it needs TensorFlow) and `ref_coco` (TFDS RefCOCO: the referring
expressions of an image's objects are its captions).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from contrastive.data import captions, digits

FAMILIES = ("views", "image_text")


def tfds_source(name: str):
    """`(split, data_dir) -> tfds.data_source(name, ...)`, never downloading."""

    def source(split: str, data_dir: str):
        import tensorflow_datasets as tfds

        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)

    return source


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: Callable[[str, str], object]  # (split, data_dir) -> random-access source of raw examples
    family: str = "views"
    pixel_max: float = 255.0  # the largest stored pixel value
    classnames: tuple[str, ...] | None = None  # in label order
    captions: Callable[[dict], list] | None = None  # image_text: the caption texts (str or bytes) of an example
    label: Callable[[dict], int] = lambda example: int(example["label"])

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"dataset {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        if (self.family == "image_text") != (self.captions is not None):
            raise ValueError(f"dataset {self.name!r}: image_text data needs `captions`, and only it has them")


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add `spec` under its name (replacing one of that name) and return it."""
    DATASETS[spec.name] = spec
    return spec


def get_dataset(name: str) -> DatasetSpec:
    """The registered spec of `name`, or a TFDS image-classification spec for any other name."""
    return DATASETS.get(name) or DatasetSpec(name, tfds_source(name))


def names(family: str) -> tuple[str, ...]:
    return tuple(n for n, spec in DATASETS.items() if spec.family == family)


def _first_object_label(example: dict) -> int:
    """A COCO image's first object's category, or -1 without objects."""
    labels = np.asarray(example["objects"]["label"]).reshape(-1)
    return int(labels[0]) if labels.size else -1


register_dataset(DatasetSpec(
    "digits", lambda split, data_dir: digits.digits_builder(data_dir).as_data_source(split=split),
    pixel_max=float(digits.MAX_INTENSITY), classnames=tuple(str(d) for d in range(10))))
register_dataset(DatasetSpec(
    "digits_captions", lambda split, data_dir: captions.digits_captions_builder(data_dir).as_data_source(split=split),
    family="image_text", pixel_max=float(digits.MAX_INTENSITY), classnames=tuple(captions.DIGIT_WORDS),
    captions=lambda example: list(example["captions"])))
register_dataset(DatasetSpec(
    "coco_captions", tfds_source("coco_captions"), family="image_text",
    captions=lambda example: list(example["captions"]["text"]), label=_first_object_label))
register_dataset(DatasetSpec(
    "ref_coco", tfds_source("ref_coco"), family="image_text",
    captions=lambda example: list(np.asarray(example["objects"]["refexp"]["raw"]).reshape(-1)),
    label=_first_object_label))

from contrastive.data import photo_digits  # noqa: E402 - appended with its registrations

# `photo_digits`: the 8x8 digits painted over crops of scikit-learn's photos (32x32 RGB); the captioned
# variant reads the same prepared files with their captions (digit, colour, place).
for _name, _family in (("photo_digits", "views"), ("photo_digits_captions", "image_text")):
    register_dataset(DatasetSpec(
        _name, lambda split, data_dir: photo_digits.photo_digits_builder(data_dir).as_data_source(split=split),
        family=_family, classnames=photo_digits.digits_words(),
        captions=(lambda example: list(example["captions"])) if _family == "image_text" else None))
