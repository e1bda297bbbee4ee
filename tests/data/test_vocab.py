"""The vocabulary tokenizer: ASCII and Unicode punctuation are separators, never words."""
from __future__ import annotations

import string

import pytest

from imcap.data.vocab import Vocab, tokenize


@pytest.mark.parametrize("caption, words", [
    ("A dog, running.", ["a", "dog", "running"]),
    ("don't stop", ["don", "t", "stop"]),
    ("don\u2019t stop", ["don", "t", "stop"]),  # right single quotation mark
    ("a dog\u2014running", ["a", "dog", "running"]),  # em dash
    ("a dog \u2013 a cat", ["a", "dog", "a", "cat"]),  # en dash
    ("waiting\u2026", ["waiting"]),  # ellipsis
    ("\u201cbig\u201d \u2018red\u2019 ball", ["big", "red", "ball"]),  # curly quotes
    ("\u00abhola\u00bb \u00bfqu\u00e9?", ["hola", "qu\u00e9"]),  # guillemets, inverted question mark
    ("a caf\u00e9 \u00b7 na\u00efve", ["a", "caf\u00e9", "na\u00efve"]),  # middle dot; accented letters stay
    ("\u20ac5 \u00a9 \u2122 90\u00b0", ["5", "90"]),  # symbols (currency, copyright, trade mark, degree)
    ("CAF\u00c9\u3002\u3001", ["caf\u00e9"]),  # ideographic full stop and comma
    ("\u2014 \u2026 \u201c\u201d", []),
])
def test_tokenize(caption: str, words: list[str]) -> None:
    assert tokenize(caption) == words


def test_unicode_punctuation_never_enters_the_vocabulary() -> None:
    captions = ["a dog \u2014 a cat\u2026", "\u201ca dog\u201d", "a dog \u2013 a cat"] * 3
    vocab = Vocab.build((tokenize(c) for c in captions), word_count_threshold=0)
    assert vocab.idx_to_word[4:] == ["a", "dog", "cat"]


def test_ascii_punctuation_is_unchanged() -> None:
    assert tokenize(f"x{string.punctuation}y") == ["x", "y"]
    assert tokenize(f"x{string.punctuation}y\u00e9") == ["x", "y\u00e9"]  # the same set on the Unicode path
