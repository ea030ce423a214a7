"""The word tokenizer: round trip, fixed shapes, determinism, unknown words, bad input."""

import random

import numpy as np
import pytest

from contrastive.data.captions import CAPTION_TEMPLATES, DIGIT_WORDS, captions_for
from contrastive.data.tokenizer import EOS_ID, PAD_ID, SPECIALS, UNK_ID, WordTokenizer, words


def digit_texts():
    return [c for label in range(10) for c in captions_for(label)]


def test_round_trip_of_lower_cased_words():
    tok = WordTokenizer.from_texts(digit_texts(), max_len=12)
    texts = ["A handwritten SEVEN.", "the number 7", b"someone wrote the number nine"]
    ids = tok.encode(texts)
    assert ids.shape == (3, 12) and ids.dtype == np.int32
    assert tok.decode(ids) == ["a handwritten seven", "the number 7", "someone wrote the number nine"]
    # EOS right after the words, PAD after it.
    assert ids[1, 3] == EOS_ID and np.all(ids[1, 4:] == PAD_ID)


def test_vocabulary_is_deterministic_and_independent_of_text_order():
    texts = digit_texts()
    shuffled = texts[:]
    random.Random(0).shuffle(shuffled)
    a, b = WordTokenizer.from_texts(texts, 12), WordTokenizer.from_texts(shuffled, 12)
    assert a.vocab == b.vocab
    assert tuple(a.vocab[:3]) == SPECIALS
    assert set(DIGIT_WORDS) | {str(d) for d in range(10)} <= set(a.vocab)
    np.testing.assert_array_equal(a.encode(texts), b.encode(texts))


def test_unknown_words_truncation_and_vocab_cap():
    tok = WordTokenizer.from_texts(["a b b c c c"], max_len=3)
    assert tok.vocab == [*SPECIALS, "c", "b", "a"]  # most frequent first
    np.testing.assert_array_equal(tok.encode(["zebra c a b"]), [[UNK_ID, tok.vocab.index("c"), EOS_ID]])
    assert WordTokenizer.from_texts(["a b b c c c"], max_len=3, max_vocab=5).vocab == [*SPECIALS, "c", "b"]
    assert words("The number 7, again!") == ["the", "number", "7", "again"]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="must start with"):
        WordTokenizer(["a", "b"], max_len=4)
    with pytest.raises(ValueError, match="max_len must be >= 2"):
        WordTokenizer(list(SPECIALS), max_len=1)
    tok = WordTokenizer.from_texts(CAPTION_TEMPLATES, 8)
    with pytest.raises(TypeError, match="sequence of texts"):
        tok.encode("a handwritten seven")
