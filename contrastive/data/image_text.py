"""Image-text examples for the dual encoder: captions tokenized, images resized, every field a fixed shape.

Datasets by name (`config.data.name`):

* `digits_captions`: the bundled offline set (`contrastive.data.captions`), prepared on first use.
* `coco_captions`: TFDS MS-COCO with its 5-7 human captions per image (`captions/text`). TFDS's builder
  for it needs TensorFlow to be constructed (its `_info` uses `tf.int64`), so it works only where
  TensorFlow is installed and the dataset is prepared in array_record form.
* `ref_coco`: TFDS RefCOCO, COCO images with referring expressions; the expressions of all the image's
  objects are its captions. Its builder works without TensorFlow, so `tfds.testing.mock_data` tests it.

A `CaptionedSource` turns a TFDS example into {image [H, W, C] uint8, label, index, tokens [K, L] int32,
num_captions}: the first K = `max_captions` captions, tokenized, with PAD rows after the last one, so a
batch is a plain array whatever each image's caption count. The train step draws one of the
`num_captions` real captions per image and step.
"""

from __future__ import annotations

import numpy as np

from contrastive.data import captions as digits_captions
from contrastive.data.tokenizer import PAD_ID, WordTokenizer

DATASETS = ("digits_captions", "coco_captions", "ref_coco")
KEYS = ("image", "label", "index", "tokens", "num_captions")
# Class names for zero-shot classification, in label order; datasets without them skip zero-shot.
CLASSNAMES = {"digits_captions": digits_captions.DIGIT_WORDS}


def check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"data.name={name!r} is not an image-text dataset; choose one of {', '.join(DATASETS)}")


def tfds_source(name: str, split: str, data_dir: str):
    """Random-access TFDS source of raw examples."""
    check_name(name)
    if name == "digits_captions":
        return digits_captions.digits_captions_builder(data_dir).as_data_source(split=split)
    import tensorflow_datasets as tfds

    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)


def captions_of(name: str, example: dict) -> list:
    """The caption texts (str or bytes) of one raw example."""
    if name == "digits_captions":
        return list(example["captions"])
    if name == "coco_captions":
        return list(example["captions"]["text"])
    if name == "ref_coco":
        return list(np.asarray(example["objects"]["refexp"]["raw"]).reshape(-1))
    raise ValueError(f"no caption field known for {name!r}")


def label_of(name: str, example: dict) -> int:
    """The class label (digits), or the first object's category (COCO sets; -1 without objects)."""
    if name == "digits_captions":
        return int(example["label"])
    labels = np.asarray(example["objects"]["label"]).reshape(-1)
    return int(labels[0]) if labels.size else -1


def resize(image: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of a uint8 [H, W, C] image to `size` = (H', W'); no-op when it already fits."""
    size = tuple(int(s) for s in size)
    if image.shape[:2] == size:
        return image
    from PIL import Image

    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    out = np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR), np.uint8)
    return out.reshape(*size, channels)


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
