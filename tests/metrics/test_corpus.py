"""The integer coding and n-gram counting under BLEU, CIDEr and ROUGE-L, against plain Python."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from imcap.metrics._corpus import image_major, word_ids
from imcap.metrics._ngrams import count_ngrams, encode, radix_argsort


@pytest.mark.parametrize("bound", [1, 200, 70_000, 2**20, 2**33])
def test_radix_argsort_is_a_stable_argsort(bound):
    rng = np.random.default_rng(bound)
    for size in (0, 1, 7, 5000):
        keys = rng.integers(0, bound, size) if bound > 1 else np.zeros(size, np.int64)
        keys[: size // 3] = keys[0] if size else 0  # many ties
        assert np.array_equal(radix_argsort(keys, bound), np.argsort(keys, kind="stable"))


def test_count_ngrams_equals_a_dictionary_count():
    rng = random.Random(0)
    for n_words in (1, 3, 40, 70_000):
        sentences = [[rng.randrange(n_words) for _ in range(rng.choice([0, 1, 2, 4, 9, 30]))] for _ in range(300)]
        ids = np.array([w for s in sentences for w in s], np.int64)
        lengths = np.array([len(s) for s in sentences])
        counts = count_ngrams(ids, lengths, 4, n_words)
        grams: list[tuple] = []
        for k, oc in enumerate(counts, start=1):
            # decode each gram id from its key: (id of its prefix) * n_words + last word
            prefix = grams
            grams = [(key,) if k == 1 else prefix[key // n_words] + (key % n_words,) for key in oc.keys.tolist()]
            assert oc.n_grams == len(grams) and np.all(np.diff(oc.keys) > 0)
            got = {(int(s), grams[g]): int(c) for s, g, c in zip(oc.sent, oc.gram, oc.count)}
            expected = Counter((i, tuple(s[j:j + k])) for i, s in enumerate(sentences) for j in range(len(s) - k + 1))
            assert got == dict(expected)
            entries = list(zip(oc.gram.tolist(), oc.sent.tolist()))
            assert entries == sorted(entries)


def test_word_ids_one_split_equals_splitting_each_line():
    rng = random.Random(1)
    pieces = ["a", "dog", "Dog", "x", "é", "", " ", "  ", "\t", "\u00a0", "\x1f", "\x00", "\r"]
    for trial in range(300):
        lines = [" ".join(rng.choice(pieces[:4]) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(0, 5))]
        if trial % 2:
            lines = [line + rng.choice(pieces) + rng.choice(pieces[:5]) for line in lines]
        for sep, got in zip((None, " "), word_ids(lines, (None, " "))):
            ids, lengths = encode([line.split(sep) for line in lines])
            assert np.array_equal(got[0], ids) and np.array_equal(got[1], lengths), (lines, sep)
            assert got[2] == len({w for line in lines for w in line.split(sep)})


def test_image_major_order():
    assert image_major(["h0", "h1"], [["a", "b"], ["c", "d"]]) == ["h0", "a", "b", "h1", "c", "d"]
    assert image_major(["h0", "h1"], [["a"], ["c", "d"]]) == ["h0", "a", "h1", "c", "d"]
    assert image_major([], []) == []
