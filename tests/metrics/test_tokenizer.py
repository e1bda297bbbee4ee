"""Tokenizer behaviour that needs no Java: PTB conventions, the pycocoevalcap interface, fast paths == lexer."""
from __future__ import annotations

import random

import pytest

from imcap.metrics import PUNCTUATIONS, PTBTokenizer
from imcap.metrics._ptb_lexer import lex
from imcap.metrics.tokenizer import _postprocess

from .hard_strings import HARD_STRINGS


def tok(caption: str) -> str:
    return PTBTokenizer().tokenize_captions([caption])[0]


@pytest.mark.parametrize("caption, expected", [
    ("A man doesn't want it.", "a man does n't want it"),
    ("She cannot go", "she can not go"),
    ("gonna gotta wanna", "gon na got ta wan na"),
    ("They're here, we'll see.", "they 're here we 'll see"),
    ("A man (in red) [x] {y}", "a man -lrb- in red -rrb- -lsb- x -rsb- -lcb- y -rcb-"),
    ('He said "hi" and left...', "he said hi and left"),
    ("Mr. Smith's dog at 5 p.m.", "mr. smith 's dog at 5 p.m."),
    ("a three-year-old in a t-shirt -- wow", "a three-year-old in a t-shirt wow"),
    ("It costs $5.99 or £3", "it costs $ 5.99 or # 3"),
    ("see http://x.com/a now", "see http://x.com/a now"),
    ("½ cup", "1/2 cup"),
    ("", ""),
])
def test_ptb_conventions(caption, expected):
    assert tok(caption) == expected


def test_pycocoevalcap_interface():
    data = {7: [{"caption": "A dog."}, {"caption": "Two dogs!"}], "x": [{"caption": "Cats (two)."}]}
    out = PTBTokenizer().tokenize(data)
    assert out == {7: ["a dog", "two dogs"], "x": ["cats -lrb- two -rrb-"]}
    assert PTBTokenizer().tokenize({1: ["A dog."]}) == {1: ["a dog"]}


def test_no_punctuation_token_survives():
    for line in PTBTokenizer().tokenize_captions(HARD_STRINGS):
        assert not set(line.split(" ")) & PUNCTUATIONS


def _random_captions(seed: int, n: int) -> list[str]:
    pieces = ("a dog", "The", "cat.", "etc.", "U.S.", "I.", "can't", "cannot", "'s", ",", ".", "...", "--", "5",
              "1/2", "(x)", "<b>", "Mr.", "no.", "é", "ſ", "\u00a0", "\t", "  ", "😀", "x@y.com", "www.a.com", "'em",
              "\"q\"", "gonna", "A", "c#", "co. ltd", "Inc.", "St.", "I", "The end.")
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) + rng.choice(" " * 6 + ".,") for _ in range(rng.randint(0, 8))).strip(" ")
            if rng.random() < 0.8 else "".join(rng.choice(pieces) for _ in range(rng.randint(1, 5)))
            for _ in range(n)]


def _lexed_whole(captions: list[str]) -> list[str]:
    """The reference: the whole file lexed at once, as the Java tool does, then pycocoevalcap's post-processing."""
    expected, current = [], []
    for t in lex("\n".join(c.replace("\n", " ") for c in captions)):
        if t == "\n":
            expected.append(_postprocess(current))
            current = []
        else:
            current.append(t.lower())
    expected.append(_postprocess(current))
    return expected


def test_fast_paths_and_caches_equal_the_plain_lexer(flickr8k_or_empty):
    # Lexing the whole file at once, as the Java tool does, is the reference; the tokenizer's
    # per-caption fast paths and chunk caches must give the same lines.
    captions = _random_captions(0, 3000) + flickr8k_or_empty[:5000] + HARD_STRINGS
    expected = _lexed_whole(captions)
    tokenizer = PTBTokenizer()
    for _ in range(2):  # the second pass runs on warm caches
        got = tokenizer.tokenize_captions(captions)
        bad = [(c, e, g) for c, e, g in zip(captions, expected, got) if e != g]
        assert not bad, f"{len(bad)} differ, e.g. {bad[:3]}"


def _plain_path_captions(seed: int, n: int) -> list[str]:
    """Captions built mostly of what the batch fast path handles, with the cases it must hand to the lexer."""
    words = ("a", "dog", "The", "I", "U", "Mr", "etc", "Inc", "St", "no", "co", "Ltd", "e", "s", "cannot", "Cannot",
             "gonna", "GOTTA", "lemme", "gimme", "wanna", "wannabe", "xgonna", "t-shirt", "T-Shirt", "pro-life",
             "gonna-be", "x-gonna", "a-b-c", "Jan", "al", "vs", "Ph", "Pa", "La", "Miss", "Jr", "em", "til", "5")
    seps = (" ",) * 8 + (", ", " , ", ",", "-", "  ", " ,", ".", ". ", " . ", "'", " '")
    ends = ("", "", ".", " .", ",", " ,", ", .", "-", "..", " ", "!")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        caption = rng.choice(words)
        for _ in range(rng.randint(0, 7)):
            caption += rng.choice(seps) + rng.choice(words)
        caption += rng.choice(ends)
        out.append(rng.choice((" ", ",", ", ", "-", ". ")) + caption if rng.random() < 0.03 else caption)
    return out


def test_batch_fast_path_equals_the_plain_lexer():
    # Lines the batch classifier calls plain (words, hyphens, commas, a final period) must come out as the
    # lexer has them; the rest (split words, abbreviations at the end, ...) must be handed to the lexer.
    captions = _plain_path_captions(1, 4000)
    expected = _lexed_whole(captions)
    got = PTBTokenizer().tokenize_captions(captions)
    bad = [(c, e, g) for c, e, g in zip(captions, expected, got) if e != g]
    assert not bad, f"{len(bad)} differ, e.g. {bad[:3]}"


@pytest.fixture()
def flickr8k_or_empty() -> list[str]:
    from .conftest import FLICKR8K_TOKENS, load_flickr8k

    if not FLICKR8K_TOKENS.is_file():
        return []
    return [c for caps in load_flickr8k().values() for c in caps]


def test_tokens_helper():
    assert PTBTokenizer().tokens("Hello, world!") == ["hello", "world"]
