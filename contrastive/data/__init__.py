"""Datasets (TFDS builders for the bundled digits and captioned digits), the tokenizer, input pipelines."""

from contrastive.data.tokenizer import WordTokenizer

__all__ = ["WordTokenizer"]
