"""Vectorised n-gram counting shared by BLEU and CIDEr.

Sentences become one flat array of word ids; the n-grams of each order get dense ids by sorting,
and each sentence's n-gram counts come out as flat (sentence, n-gram, count) arrays.
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


def count_ngrams(ids: np.ndarray, lengths: np.ndarray, n: int, n_words: int) -> list[OrderCounts]:
    """Per-sentence n-gram counts for orders 1..n; `n_words` bounds the word ids."""
    n_sent = len(lengths)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])) if n_sent else np.zeros(0, np.int64)
    sent_of_pos = np.repeat(np.arange(n_sent, dtype=np.int64), lengths)
    pos_in_sent = np.arange(len(ids), dtype=np.int64) - np.repeat(starts, lengths)
    remaining = np.repeat(lengths, lengths) - pos_in_sent  # words from this position to the sentence end
    gram_at = ids.copy()  # id of the current-order gram starting at each position (where one starts)
    out = []
    for k in range(1, n + 1):
        pos = np.flatnonzero(remaining >= k)
        if k == 1:
            key = ids[pos]
        else:
            key = gram_at[pos] * n_words + ids[pos + k - 1]
        if len(pos) and int(key.max()) >= (2**62) // max(n_sent, 1):  # composite must fit in int64
            raise OverflowError("too many distinct n-grams to count")
        composite = key * n_sent + sent_of_pos[pos]
        order = np.argsort(composite)  # equal composites are the same (gram, sentence): order among them is free
        comp_sorted = composite[order]
        key_sorted = key[order]
        new_gram = np.empty(len(order), bool)
        new_gram[:1] = True
        np.not_equal(key_sorted[1:], key_sorted[:-1], out=new_gram[1:])
        gram_sorted = np.cumsum(new_gram) - 1
        gram_at[pos[order]] = gram_sorted
        new_entry = np.empty(len(order), bool)
        new_entry[:1] = True
        np.not_equal(comp_sorted[1:], comp_sorted[:-1], out=new_entry[1:])
        first = np.flatnonzero(new_entry)
        count = np.diff(np.append(first, len(order)))
        n_grams = int(gram_sorted[-1]) + 1 if len(order) else 0
        out.append(OrderCounts(sent_of_pos[pos[order[first]]], gram_sorted[first], count, n_grams,
                               key_sorted[new_gram]))
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
