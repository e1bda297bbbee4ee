"""ROUGE-L as pycocoevalcap computes it (beta 1.2; per image, max precision and max recall over references).

The longest common subsequence of every (reference, hypothesis) pair comes from the bit-parallel
algorithm of Allison and Dix (1986): a 64-bit word per pair holds one DP row over the hypothesis
tokens, and all pairs advance together in NumPy, one reference token at a time. The match mask of a
reference token (the hypothesis positions holding the same word) comes from one sort of all tokens
by word. Hypotheses of more than 64 tokens, and references of more than `_MAX_STEPS`, use the same
algorithm on Python integers.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from imcap.metrics._corpus import ImageLayout, pair_lines, word_ids
from imcap.metrics._inputs import check_pairs
from imcap.metrics._ngrams import radix_argsort, starts_of

BETA = 1.2
_BITS = 64
_MAX_STEPS = 256


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (np.bitwise_count needs NumPy 2)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words).astype(np.int64)
    return np.unpackbits(words.view(np.uint8)).reshape(len(words), 64).sum(axis=1).astype(np.int64)


def _lcs_python(a: Sequence[int], b: Sequence[int]) -> int:
    """LCS length of two id sequences, Python integers as bit vectors over `a`."""
    masks: dict[int, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    full = (1 << len(a)) - 1
    row = full
    for tok in b:
        u = row & masks.get(tok, 0)
        row = ((row + u) | (row - u)) & full
    return len(a) - bin(row).count("1")


def lcs_with_hypotheses(ids: np.ndarray, layout: ImageLayout, n_words: int,
                        word_order: np.ndarray | None = None) -> np.ndarray:
    """LCS length of every reference with its image's hypothesis, in reference order; shape (R,).

    `ids` are the word ids (below `n_words`) of the sentences in `layout`'s image-by-image order;
    `word_order` is `radix_argsort(ids, n_words)`, when the caller has it already.
    """
    lengths = layout.lengths
    n_tok = len(ids)
    n_ref = len(layout.ref_sent)
    index = np.int32 if n_tok < 2**31 else np.int64
    short_hyp = layout.hyp_lengths <= _BITS  # (N,)
    fast = short_hyp[layout.image_of_ref] & (layout.ref_lengths <= _MAX_STEPS)  # (R,) pairs done in NumPy
    ref_of_sent = np.zeros(len(lengths), index)
    ref_of_sent[layout.ref_sent] = np.arange(n_ref)
    fast_ref_sent = np.zeros(len(lengths), bool)  # (S,)
    fast_ref_sent[layout.ref_sent[fast]] = True
    # All tokens sorted by word (stably, so by image, each image's hypothesis tokens first): the runs
    # of equal (word, image) give each reference token its match mask, the OR of the bits of the
    # hypothesis tokens in its run.
    order = radix_argsort(ids, n_words) if word_order is None else word_order
    sent = np.repeat(np.arange(len(lengths), dtype=index), lengths)[order]  # (T,) in word order
    pos = (np.arange(n_tok, dtype=index) - np.repeat(starts_of(lengths).astype(index), lengths))[order]
    image, word = layout.image_of_sent[sent], ids[order]
    new = np.empty(n_tok, bool)
    new[:1] = True
    np.not_equal(word[1:], word[:-1], out=new[1:])
    new[1:] |= image[1:] != image[:-1]
    run = np.flatnonzero(new)
    is_bit = layout.is_hyp[sent] & short_hyp[image]
    bits = np.left_shift(np.uint64(1), np.minimum(pos, _BITS - 1).astype(np.uint64)) * is_bit
    mask = np.repeat(np.bitwise_or.reduceat(bits, run), np.diff(run, append=n_tok)) if n_tok else bits
    step = np.flatnonzero((mask != 0) & fast_ref_sent[sent])  # reference tokens that match something
    n_steps = int(layout.ref_lengths[fast].max()) if fast.any() else 0
    masks = np.zeros((n_steps, n_ref), np.uint64)  # (L, R): reference r's k-th token's mask
    masks[pos[step], ref_of_sent[sent[step]]] = mask[step]
    row = np.full(n_ref, np.iinfo(np.uint64).max, np.uint64)
    u, total, diff = (np.empty(n_ref, np.uint64) for _ in range(3))
    for k in range(n_steps):
        np.bitwise_and(row, masks[k], out=u)
        np.add(row, u, out=total)
        np.subtract(row, u, out=diff)
        np.bitwise_or(total, diff, out=row)
    # Bits above the hypothesis length stay set, so the zero bits of the row count the LCS.
    out = _popcount(~row)
    starts = starts_of(lengths)
    for r in np.flatnonzero(~fast).tolist():
        s, h = layout.ref_sent[r], layout.hyp_sent[layout.image_of_ref[r]]
        out[r] = _lcs_python(ids[starts[h]:starts[h] + lengths[h]].tolist(), ids[starts[s]:starts[s] + lengths[s]].tolist())
    return out


def rouge_from_lcs(lcs: np.ndarray, layout: ImageLayout, beta: float = BETA) -> np.ndarray:
    """Per-image ROUGE-L from the LCS of every reference with its hypothesis."""
    lcs = lcs.astype(np.float64)
    prec = lcs / layout.hyp_lengths[layout.image_of_ref].astype(np.float64)
    rec = lcs / layout.ref_lengths.astype(np.float64)
    starts = starts_of(layout.n_refs)
    prec_max = np.maximum.reduceat(prec, starts) if len(prec) else np.zeros(layout.n_images)
    rec_max = np.maximum.reduceat(rec, starts) if len(rec) else np.zeros(layout.n_images)
    b2 = beta**2
    ok = (prec_max != 0) & (rec_max != 0)
    denom = np.where(ok, rec_max + b2 * prec_max, 1.0)
    return np.where(ok, ((1 + b2) * prec_max * rec_max) / denom, 0.0)


class Rouge:
    """Drop-in for `pycocoevalcap.rouge.rouge.Rouge`: `compute_score(gts, res)` -> (mean, per-image array)."""

    def __init__(self) -> None:
        self.beta = BETA

    def compute_score(self, gts: Mapping[Hashable, Sequence[str]],
                      res: Mapping[Hashable, Sequence[str]]) -> tuple[float, np.ndarray]:
        """Mean ROUGE-L over images, and the per-image scores in the order of `gts`."""
        lines, n_refs = pair_lines(gts, res, check_pairs(gts, res, "Rouge"))
        words, lengths, n_words = word_ids(lines, (" ",))[0]
        layout = ImageLayout(n_refs, lengths)
        scores = rouge_from_lcs(lcs_with_hypotheses(words, layout, n_words), layout, self.beta)
        return float(np.mean(scores)), scores

    def method(self) -> str:
        """Metric name, as pycocoevalcap reports it."""
        return "Rouge"
