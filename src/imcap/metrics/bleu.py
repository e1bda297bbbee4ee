"""BLEU-1..4 exactly as pycocoevalcap's BleuScorer ("closest" reference length), vectorised."""
from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from imcap.metrics._corpus import ImageLayout, ImageRuns, image_major, image_runs, pair_lines, word_ids
from imcap.metrics._inputs import check_pairs
from imcap.metrics._ngrams import OrderCounts, Vocabulary, count_ngrams, encode, starts_of

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
    return np.minimum.reduceat(key, starts_of(n_refs)) % span


def bleu_stats_from_counts(counts: list[OrderCounts], layout: ImageLayout,
                           runs: list[ImageRuns] | None = None) -> BleuStats:
    """Statistics from the n-gram counts of sentences laid out image by image (see `ImageLayout`).

    `runs` are the orders' `image_runs`, when the caller has them already.
    """
    runs = [image_runs(oc, layout) for oc in counts] if runs is None else runs
    correct = np.zeros((len(counts), layout.n_images), np.int64)
    for k, (oc, run) in enumerate(zip(counts, runs)):
        if len(run.hyp_entry):  # clipped matches: hypothesis count, at most the largest reference count
            max_ref = np.maximum.reduceat(oc.count[run.ref_entry], run.ref_offset)
            clipped = np.minimum(oc.count[run.hyp_entry], max_ref)
            image = layout.image_of_sent[oc.sent[run.hyp_entry]]
            correct[k] = np.bincount(image, weights=clipped, minlength=layout.n_images)
    testlen = layout.hyp_lengths
    guess = np.maximum(0, testlen[None, :] - np.arange(len(counts))[:, None])
    return BleuStats(testlen, closest_ref_lengths(testlen, layout.ref_lengths, layout.n_refs), guess, correct)


def bleu_stats(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]], n: int = 4) -> BleuStats:
    """Statistics for tokenized hypotheses and their tokenized references."""
    vocab = Vocabulary()
    ids, lengths = encode(image_major(hyps, refs), vocab)
    layout = ImageLayout(np.fromiter(map(len, refs), np.int64, len(refs)), lengths)
    return bleu_stats_from_counts(count_ngrams(ids, lengths, n, len(vocab)), layout)


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
        lines, n_refs = pair_lines(gts, res, check_pairs(gts, res, "Bleu"))
        words, lengths, n_words = word_ids(lines, (None,))[0]
        layout = ImageLayout(n_refs, lengths)
        return bleu_from_stats(bleu_stats_from_counts(count_ngrams(words, lengths, self._n, n_words), layout))

    def method(self) -> str:
        """Metric name, as pycocoevalcap reports it."""
        return "Bleu"
