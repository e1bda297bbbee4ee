"""BLEU-1..4 exactly as pycocoevalcap's BleuScorer ("closest" reference length), vectorised."""
from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from imcap.metrics._inputs import check_pairs
from imcap.metrics._ngrams import OrderCounts, Vocabulary, count_ngrams, encode, lookup

log = logging.getLogger(__name__)

# pycocoevalcap's smoothing constants: "tiny" on the numerator, "small" on the denominator.
TINY = 1e-15
SMALL = 1e-9


@dataclass
class BleuStats:
    """Sufficient statistics per image: hypothesis length, closest reference length, guesses, matches."""

    testlen: np.ndarray  # (N,) int
    reflen: np.ndarray  # (N,) int
    guess: np.ndarray  # (n, N) int
    correct: np.ndarray  # (n, N) int


def closest_ref_lengths(testlen: np.ndarray, ref_lengths: np.ndarray, n_refs: np.ndarray) -> np.ndarray:
    """Per image, the reference length closest to the hypothesis length (ties go to the shorter one)."""
    if len(ref_lengths) == 0:
        return np.zeros(len(testlen), np.int64)
    span = int(ref_lengths.max()) + 1
    t = np.repeat(testlen, n_refs)
    key = np.abs(ref_lengths - t) * span + ref_lengths
    starts = np.concatenate(([0], np.cumsum(n_refs)[:-1]))
    return np.minimum.reduceat(key, starts) % span


def bleu_stats_from_counts(counts: list[OrderCounts], testlen: np.ndarray, ref_lengths: np.ndarray,
                           n_refs: np.ndarray) -> BleuStats:
    """Statistics from n-gram counts whose sentences are the N hypotheses, then the references image by image."""
    n_img = len(testlen)
    img_of_sent = np.concatenate((np.arange(n_img), np.repeat(np.arange(n_img), n_refs)))
    n = len(counts)
    correct = np.zeros((n, n_img), np.int64)
    for k, oc in enumerate(counts):
        is_ref = oc.sent >= n_img
        # Within a gram, entries are sorted by sentence, and references are laid out image by image,
        # so (gram, image) keys of the references are already sorted.
        ref_key = oc.gram[is_ref] * n_img + img_of_sent[oc.sent[is_ref]]
        ref_count = oc.count[is_ref]
        if len(ref_key):
            first = np.flatnonzero(np.concatenate(([True], ref_key[1:] != ref_key[:-1])))
            uniq_key = ref_key[first]
            max_count = np.maximum.reduceat(ref_count, first)
        else:
            uniq_key = np.zeros(0, np.int64)
            max_count = np.zeros(1, np.int64)
        hyp_sent = oc.sent[~is_ref]
        found, where = lookup(uniq_key, oc.gram[~is_ref] * n_img + hyp_sent)
        clipped = np.minimum(oc.count[~is_ref], np.where(found, max_count[where], 0))
        correct[k] = np.bincount(hyp_sent, weights=clipped, minlength=n_img).astype(np.int64)
    guess = np.maximum(0, testlen[None, :] - np.arange(n)[:, None])
    return BleuStats(testlen, closest_ref_lengths(testlen, ref_lengths, n_refs), guess, correct)


def bleu_stats(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]], n: int = 4) -> BleuStats:
    """Statistics for tokenized hypotheses and their tokenized references."""
    n_refs = np.fromiter(map(len, refs), np.int64, len(refs))
    sentences = list(hyps) + [r for rs in refs for r in rs]
    vocab = Vocabulary()
    ids, lengths = encode(sentences, vocab)
    counts = count_ngrams(ids, lengths, n, len(vocab))
    return bleu_stats_from_counts(counts, lengths[:len(hyps)], lengths[len(hyps):], n_refs)


def bleu_from_stats(stats: BleuStats) -> tuple[list[float], list[list[float]]]:
    """Corpus BLEU-1..n and per-image BLEU-1..n, with pycocoevalcap's operation order."""
    n = stats.guess.shape[0]
    per_image = []
    running = np.ones(len(stats.testlen))
    for k in range(n):
        running = running * ((stats.correct[k] + TINY) / (stats.guess[k] + SMALL))
        per_image.append(running ** (1.0 / (k + 1)))
    ratio = (stats.testlen + TINY) / (stats.reflen + SMALL)
    brevity = np.where(ratio < 1, np.exp(1 - 1 / np.where(ratio < 1, ratio, 1.0)), 1.0)
    per_image = [np.where(ratio < 1, p * brevity, p) for p in per_image]

    testlen, reflen = int(stats.testlen.sum()), int(stats.reflen.sum())
    corpus = []
    bleu = 1.0
    for k in range(n):
        bleu *= float(int(stats.correct[k].sum()) + TINY) / (int(stats.guess[k].sum()) + SMALL)
        corpus.append(bleu ** (1.0 / (k + 1)))
    corpus_ratio = (testlen + TINY) / (reflen + SMALL)
    if corpus_ratio < 1:
        corpus = [b * math.exp(1 - 1 / corpus_ratio) for b in corpus]
    log.debug("bleu: testlen=%d reflen=%d ratio=%s", testlen, reflen, corpus_ratio)
    return corpus, [p.tolist() for p in per_image]


class Bleu:
    """Drop-in for `pycocoevalcap.bleu.bleu.Bleu`: `compute_score(gts, res)` -> ([B1..Bn], [[per image]...])."""

    def __init__(self, n: int = 4) -> None:
        self._n = n

    def compute_score(self, gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]],
                      verbose: int = 0) -> tuple[list[float], list[list[float]]]:
        """Corpus BLEU-1..n (not the mean of the per-image values) and per-image BLEU-1..n lists."""
        ids = check_pairs(gts, res, "Bleu")
        stats = bleu_stats([res[i][0].split() for i in ids], [[r.split() for r in gts[i]] for i in ids], self._n)
        return bleu_from_stats(stats)

    def method(self) -> str:
        """Metric name, as pycocoevalcap reports it."""
        return "Bleu"
