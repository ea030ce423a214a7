"""A word-level tokenizer that needs no download: lower-cased words, a vocabulary built from the data.

Text is lower-cased and split into runs of letters and digits (`[a-z0-9]+`; punctuation is dropped), so
"The number 7." -> ["the", "number", "7"]. The vocabulary is three special tokens followed by the words
of the texts it was built from, most frequent first and ties in alphabetical order, so the same texts give
the same ids on every machine and Python version. Ids: PAD = 0, EOS = 1, UNK = 2 (a word not in the
vocabulary). Every text becomes exactly `max_len` ids: at most `max_len - 1` words, then EOS, then PAD.
The text tower pools at the EOS position, which is `number of non-PAD ids - 1`.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Sequence

import numpy as np

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
SPECIALS = (PAD, EOS, UNK)
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str | bytes) -> list[str]:
    """The lower-cased words of a text (bytes are read as UTF-8, as TFDS returns Text features)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    if not isinstance(text, str):
        raise TypeError(f"expected a str or bytes text, got {type(text).__name__}: {text!r}")
    return _WORD.findall(text.lower())


class WordTokenizer:
    """Maps texts to fixed-length int32 id rows and back.

    Args:
      vocab: the words, in id order; must start with PAD, EOS, UNK (use `from_texts` to build one).
      max_len: ids per text, EOS included (>= 2).
    """

    def __init__(self, vocab: Sequence[str], max_len: int):
        vocab = list(vocab)
        if tuple(vocab[:3]) != SPECIALS:
            raise ValueError(f"vocab must start with {SPECIALS}, got {vocab[:3]}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab has duplicate words")
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (a word and EOS), got {max_len}")
        self.vocab = vocab
        self.max_len = max_len
        self._ids = {w: i for i, w in enumerate(vocab)}

    @classmethod
    def from_texts(cls, texts: Iterable[str | bytes], max_len: int, max_vocab: int | None = None) -> WordTokenizer:
        """The vocabulary of `texts` (most frequent words first, capped at `max_vocab` entries in all)."""
        counts = collections.Counter(w for t in texts for w in words(t))
        ordered = sorted(counts, key=lambda w: (-counts[w], w))
        if max_vocab is not None:
            ordered = ordered[: max(max_vocab - len(SPECIALS), 0)]
        return cls([*SPECIALS, *ordered], max_len)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, texts: Sequence[str | bytes]) -> np.ndarray:
        """[len(texts), max_len] int32 ids."""
        if isinstance(texts, (str, bytes)):
            raise TypeError("encode takes a sequence of texts; wrap a single text in a list")
        out = np.full((len(texts), self.max_len), PAD_ID, np.int32)
        for row, text in enumerate(texts):
            ids = [self._ids.get(w, UNK_ID) for w in words(text)[: self.max_len - 1]]
            out[row, : len(ids) + 1] = [*ids, EOS_ID]
        return out

    def decode(self, ids: np.ndarray) -> list[str]:
        """The words before the first EOS of each row, joined by spaces (UNK for unknown words)."""
        texts = []
        for row in np.asarray(ids).reshape(-1, np.shape(ids)[-1]):
            row = list(row)
            end = row.index(EOS_ID) if EOS_ID in row else len(row)
            texts.append(" ".join(self.vocab[i] for i in row[:end] if i != PAD_ID))
        return texts
