"""Datasets by name (`config.data.name`): one `DatasetSpec` each in `DATASETS`.

A spec says how to open a split as a random-access source of examples (dicts of NumPy arrays), which
family of loss it feeds (`views`: images and labels; `image_text`: images with captions), the largest
stored pixel value, the class names in label order (zero-shot prompts; `None` when the labels are not
classes), for image-text data how to read an example's captions and label, and the nuisance
`attributes` of an example (its colour, place, background), classes the `attributes` evaluator probes
the features for (what the features kept besides the label).

`register_dataset(DatasetSpec(...))` adds one from any file. A name that is not registered is read as a
TFDS image-classification set with an `image` feature (8-bit pixels) and, for probes and SupCon, a
`label`, prepared in array_record format under `data.data_dir` (`tfds.data_source`, no TensorFlow). A
dataset that is not prepared there is refused with the command that prepares it (`preparation_hint`).

Built in: `digits` (scikit-learn's 8x8 digits, `contrastive.data.digits`), `digits_captions` (the same
images with generated captions, `contrastive.data.captions`), `coco_captions` (TFDS MS-COCO with its 5-7
captions per image; TFDS's builder for it needs TensorFlow) and `ref_coco` (TFDS RefCOCO: the referring
expressions of an image's objects are its captions). Named TFDS image-classification sets (any other
TFDS name with `image` works the same): `cifar10`, `cifar100` (32x32), `stl10` (96x96; its `unlabelled`
split of 100,000 images has no labels), `imagenette` and `imagenet2012` (images of varying size: set
`data.image_size`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from contrastive.data import captions, digits

FAMILIES = ("views", "image_text")


class DatasetNotPrepared(RuntimeError):
    """A TFDS dataset is not prepared (in array_record format) in the data directory."""


def preparation_hint(name: str, data_dir: str) -> str | None:
    """One line saying how to prepare TFDS dataset `name` in `data_dir`, or None when it is prepared in
    array_record format (or TFDS does not know the name)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception:  # noqa: BLE001 - an unknown name: TFDS's own message says so
        return None
    command = f"tfds build {name} --data_dir {data_dir} --file_format=array_record"
    manual = builder.MANUAL_DOWNLOAD_INSTRUCTIONS
    manual = (f" First download {name} by hand into a folder passed as --manual_dir (default "
              f"{data_dir}/downloads/manual): {' '.join(manual.split())}" if manual else "")
    needs = ("(needs internet, and TensorFlow for the `tfds` command: pip install tensorflow; or in Python "
             f"tfds.builder({name!r}, data_dir=..., file_format='array_record').download_and_prepare())")
    if not builder.is_prepared():
        return f"{name} is not prepared in {data_dir}: prepare it once with `{command}` {needs}.{manual}"
    if builder.info.file_format is None or builder.info.file_format.value != "array_record":
        return (f"{name} is prepared in {builder.data_dir} as {builder.info.file_format}, which has no random "
                f"access: prepare it again with `{command}` {needs}.{manual}")
    return None


def tfds_source(name: str):
    """`(split, data_dir) -> tfds.data_source(name, ...)`, never downloading; `DatasetNotPrepared` with the
    command that prepares it where the dataset is not prepared in array_record format."""

    def source(split: str, data_dir: str):
        import tensorflow_datasets as tfds

        try:
            return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:
            hint = preparation_hint(name, data_dir)
            if hint:
                raise DatasetNotPrepared(hint) from e
            raise

    return source


@dataclasses.dataclass(frozen=True)
class Attribute:
    """A per-example class besides the label: `of(arrays) -> int [N]` from the raw fields `fields` of a
    split (`pipeline.read_all(source, fields)`), one of `classes` (names in id order)."""

    fields: tuple[str, ...]
    of: Callable[[dict], np.ndarray]
    classes: tuple[str, ...]


def label_field(example: dict) -> int:
    """The example's `label` field, -1 where it has none."""
    return int(example["label"]) if "label" in example else -1


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: Callable[[str, str], object]  # (split, data_dir) -> random-access source of raw examples
    family: str = "views"
    pixel_max: float = 255.0  # the largest stored pixel value
    classnames: tuple[str, ...] | None = None  # in label order
    captions: Callable[[dict], list] | None = None  # image_text: the caption texts (str or bytes) of an example
    label: Callable[[dict], int] = label_field  # an example's class, -1 for none
    unlabelled_splits: tuple[str, ...] = ()  # splits without labels (refused for probes and SupCon)
    attributes: dict[str, Attribute] = dataclasses.field(default_factory=dict)  # name -> nuisance class

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

# TFDS image-classification sets: the same reader as any unregistered name, listed with what they need.
register_dataset(DatasetSpec("cifar10", tfds_source("cifar10"), classnames=(
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")))
register_dataset(DatasetSpec("cifar100", tfds_source("cifar100")))
register_dataset(DatasetSpec("stl10", tfds_source("stl10"), unlabelled_splits=("unlabelled",), classnames=(
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")))
register_dataset(DatasetSpec("imagenette", tfds_source("imagenette")))
register_dataset(DatasetSpec("imagenet2012", tfds_source("imagenet2012")))

from contrastive.data import photo_digits  # noqa: E402 - appended with its registrations

# `photo_digits`: the 8x8 digits painted over crops of scikit-learn's photos (32x32 RGB); `photo_digits_large`
# is the easier recipe (`photo_digits.LARGE`: larger digits, so a smaller range of positions). The captioned
# variants read the same prepared files: `_captions` with every caption (digit, colour, place),
# `_digit_captions` with those that do not name the colour (`photo_digits.DIGIT_CAPTIONS`).
_PHOTO_DIGIT_CAPTIONS = {
    "": None, "_captions": lambda example: list(example["captions"]),
    "_digit_captions": lambda example: [example["captions"][i] for i in photo_digits.DIGIT_CAPTIONS]}
for _suffix, _recipe in (("", "default"), ("_large", "large")):
    for _variant, _captions in _PHOTO_DIGIT_CAPTIONS.items():
        register_dataset(DatasetSpec(
            f"photo_digits{_suffix}{_variant}",
            lambda split, data_dir, recipe=_recipe: photo_digits.photo_digits_builder(data_dir, recipe).as_data_source(
                split=split),
            family="image_text" if _captions else "views", classnames=photo_digits.digits_words(), captions=_captions,
            attributes={name: Attribute(fields, of, classes)
                        for name, (fields, of, classes) in photo_digits.ATTRIBUTES.items()}))
