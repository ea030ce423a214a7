"""Image-text examples for the dual encoder: captions tokenized, images resized, every field a fixed shape.

The datasets (`config.data.name`) are the `image_text` specs of `contrastive.data.datasets`: the bundled
offline `digits_captions`, TFDS `coco_captions` and `ref_coco`, or any a user registers.

A `CaptionedSource` turns a raw example into {image [H, W, C] uint8, label, index, tokens [K, L] int32,
num_captions}: the first K = `max_captions` captions, tokenized, with PAD rows after the last one, so a
batch is a plain array whatever each image's caption count. The train step draws one of the
`num_captions` real captions per image and step.
"""

from __future__ import annotations

import numpy as np

from contrastive.data import datasets
from contrastive.data.pipeline import resize_image
from contrastive.data.tokenizer import PAD_ID, WordTokenizer

KEYS = ("image", "label", "index", "tokens", "num_captions")


def spec(name: str) -> datasets.DatasetSpec:
    """The image-text spec of `name`; ValueError naming the choices for any other name."""
    found = datasets.DATASETS.get(name)
    if found is None or found.family != "image_text":
        raise ValueError(f"data.name={name!r} is not an image-text dataset; choose one of "
                         f"{', '.join(datasets.names('image_text'))}")
    return found


def check_name(name: str) -> None:
    spec(name)


def tfds_source(name: str, split: str, data_dir: str):
    """Random-access source of raw examples."""
    return spec(name).source(split, data_dir)


def captions_of(name: str, example: dict) -> list:
    """The caption texts (str or bytes) of one raw example."""
    return spec(name).captions(example)


def label_of(name: str, example: dict) -> int:
    """The class label (digits), or the first object's category (COCO sets; -1 without objects)."""
    return spec(name).label(example)


def classnames(name: str) -> tuple | None:
    """Class names in label order for zero-shot classification, or None (the labels are not classes)."""
    return spec(name).classnames


# Images are fitted to `data.image_size` as the views family's are (shorter side, then the centre crop).
resize = resize_image


class CaptionedSource:
    """Random access to tokenized, resized image-text examples of a raw TFDS source.

    Args:
      source: raw TFDS source (`tfds_source`).
      name: the dataset name (selects the caption and label fields).
      tokenizer: turns captions into ids.
      max_captions: K, caption rows per example (extra captions are dropped, missing ones are PAD rows).
      image_size: (H, W) to resize to, or None to keep the stored size.
    """

    def __init__(self, source, name: str, tokenizer: WordTokenizer, *, max_captions: int, image_size=None):
        check_name(name)
        if max_captions < 1:
            raise ValueError(f"max_captions must be >= 1, got {max_captions}")
        self.source, self.name, self.tokenizer = source, name, tokenizer
        self.max_captions, self.image_size = max_captions, image_size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        example = self.source[int(i)]
        texts = captions_of(self.name, example)[: self.max_captions]
        if not texts:
            raise ValueError(f"{self.name} example {i} has no captions")
        tokens = np.full((self.max_captions, self.tokenizer.max_len), PAD_ID, np.int32)
        tokens[: len(texts)] = self.tokenizer.encode(texts)
        image = np.asarray(example["image"], np.uint8)
        if self.image_size is not None:
            image = resize(image, self.image_size)
        return {"image": image, "label": np.int32(label_of(self.name, example)), "index": np.int64(i),
                "tokens": tokens, "num_captions": np.int32(len(texts))}


def build_tokenizer(name: str, source, *, max_len: int, max_vocab: int, num_examples: int,
                    extra_texts=()) -> WordTokenizer:
    """The vocabulary of the captions of the first `num_examples` examples of `source` plus `extra_texts`
    (the zero-shot prompts), so that it depends on the data alone and a resumed run rebuilds it exactly."""
    texts = [t for i in range(min(num_examples, len(source))) for t in captions_of(name, source[i])]
    return WordTokenizer.from_texts([*texts, *extra_texts], max_len=max_len, max_vocab=max_vocab)
