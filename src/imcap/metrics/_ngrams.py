"""Integer-coded sentences and their n-gram counts, shared by BLEU, CIDEr and ROUGE-L.

Sentences become one flat array of word ids. For each order, the positions where an n-gram starts
are sorted by the n-gram (a stable radix sort on 16-bit digits, which NumPy does in linear time), so
every distinct n-gram gets a dense id and every sentence its (n-gram, count) entries. The n-gram of
order k is keyed by (id of its (k-1)-gram prefix, last word), so keys stay small.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np


class Vocabulary(dict):
    """str -> dense int id, adding unseen words on lookup."""

    def __missing__(self, word: str) -> int:
        idx = self[word] = len(self)
        return idx


def encode(sentences: Sequence[Sequence[str]], vocab: Vocabulary | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return (word ids of all sentences concatenated, sentence lengths); ids come from `vocab`."""
    vocab = Vocabulary() if vocab is None else vocab
    lengths = np.fromiter(map(len, sentences), np.int64, len(sentences))
    ids = np.fromiter(map(vocab.__getitem__, chain.from_iterable(sentences)), np.int64, int(lengths.sum()))
    return ids, lengths


def starts_of(lengths: np.ndarray) -> np.ndarray:
    """Offsets of consecutive segments of the given lengths."""
    out = np.zeros(len(lengths), np.int64)
    np.cumsum(lengths[:-1], out=out[1:])
    return out


def radix_argsort(key: np.ndarray, bound: int) -> np.ndarray:
    """Stable argsort of non-negative integer keys below `bound`, 16 bits at a time (NumPy radix-sorts those)."""
    order = np.argsort(key.astype(np.uint16), kind="stable")
    shift = 16
    while bound > 1 << shift:
        digit = (key >> shift).astype(np.uint16 if bound > 1 << (shift + 8) else np.uint8)
        order = order[np.argsort(digit[order], kind="stable")]
        shift += 16
    return order


@dataclass
class OrderCounts:
    """Counts of the n-grams of one order: entry j says sentence `sent[j]` holds gram `gram[j]` `count[j]` times.

    Entries are sorted by gram, then sentence; `n_grams` is the number of distinct grams (ids 0..n_grams-1).
    """

    sent: np.ndarray
    gram: np.ndarray
    count: np.ndarray
    n_grams: int
    keys: np.ndarray | None = None  # per gram id: (id of its (n-1)-gram prefix) * n_words + last word id


def count_ngrams(ids: np.ndarray, lengths: np.ndarray, n: int, n_words: int,
                 word_order: np.ndarray | None = None) -> list[OrderCounts]:
    """Per-sentence n-gram counts for orders 1..n; `n_words` bounds the word ids.

    `word_order` is `radix_argsort(ids, n_words)`, when the caller has it already.
    """
    n_words = max(n_words, 1)
    n_tok = len(ids)
    index = np.int32 if max(n_tok, n_words) < 2**31 else np.int64  # positions, sentences and gram ids
    ids = ids.astype(index, copy=False)
    if word_order is None:
        word_order = radix_argsort(ids, n_words)
    word_order = word_order.astype(index, copy=False)
    sent_of_pos = np.repeat(np.arange(len(lengths), dtype=index), lengths)
    depth = (np.arange(n_tok, dtype=index) - np.repeat(starts_of(lengths).astype(index), lengths))[word_order]
    gram_of_pos = ids  # id of the gram of the previous order that starts at each position
    n_grams = n_words
    out = []
    for k in range(1, n + 1):
        # The positions where a k-gram starts, sorted by its last word (the word order, shifted back),
        # then by its (k-1)-gram prefix: a two-digit stable radix sort with one digit already done.
        if k == 1:
            start = word_order
            key = ids[start]
        else:
            start = word_order[depth >= k - 1] - (k - 1)
            prefix = gram_of_pos[start]
            order = radix_argsort(prefix, n_grams)
            start = start[order]
            wide = np.int64 if n_grams * n_words >= 2**31 else index
            key = prefix[order].astype(wide, copy=False) * n_words + ids[start + (k - 1)]
        new_gram = np.empty(len(start), bool)
        new_gram[:1] = True
        np.not_equal(key[1:], key[:-1], out=new_gram[1:])
        gram = np.cumsum(new_gram, dtype=index) - 1
        if k < n:
            gram_of_pos = np.empty(n_tok, index)
            gram_of_pos[start] = gram
        sent = sent_of_pos[start]
        new_entry = new_gram.copy()
        new_entry[1:] |= sent[1:] != sent[:-1]
        first = np.flatnonzero(new_entry)
        n_grams = int(gram[-1]) + 1 if len(gram) else 0
        out.append(OrderCounts(sent[first], gram[first], np.diff(first, append=len(start)), n_grams, key[new_gram]))
    return out


def lookup(sorted_keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query: whether it is in `sorted_keys`, and its index there (0 where absent)."""
    if len(sorted_keys) == 0:
        return np.zeros(len(queries), bool), np.zeros(len(queries), np.int64)
    where = np.minimum(sorted_search(sorted_keys, queries, "left"), len(sorted_keys) - 1)
    found = sorted_keys[where] == queries
    return found, np.where(found, where, 0)


def sorted_search(sorted_keys: np.ndarray, queries: np.ndarray, side: str) -> np.ndarray:
    """np.searchsorted, with the queries sorted first (much faster on large tables)."""
    if len(queries) < 2:
        return np.searchsorted(sorted_keys, queries, side)
    order = np.argsort(queries, kind="stable")
    out = np.empty(len(queries), np.int64)
    out[order] = np.searchsorted(sorted_keys, queries[order], side)
    return out
