"""ROUGE-L as pycocoevalcap computes it (beta 1.2; per image, max precision and max recall over references).

The longest common subsequence of every (reference, hypothesis) pair comes from the bit-parallel
algorithm of Allison and Dix (1986): a 64-bit word per pair holds one DP row, and all pairs advance
together in NumPy, one token of the longer sentence at a time. Pairs whose shorter sentence has more
than 64 tokens use the same algorithm on Python integers.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from imcap.metrics._inputs import check_pairs
from imcap.metrics._ngrams import Vocabulary, encode

BETA = 1.2
_BITS = 64


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


def _positions(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For sentences given by (start, length): owner index and position-in-sentence of every token."""
    owner = np.repeat(np.arange(len(starts)), lengths)
    offset = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, offset


def lcs_lengths(ids: np.ndarray, lengths: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """LCS length of sentences first[p] and second[p] (indices into the encoded `ids`/`lengths`)."""
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    n_words = int(ids.max()) + 1 if len(ids) else 1
    short = np.where(lengths[first] <= lengths[second], first, second)
    long = np.where(lengths[first] <= lengths[second], second, first)
    out = np.zeros(len(first), np.int64)
    fast = np.flatnonzero(lengths[short] <= _BITS)
    if len(fast):
        s, t = short[fast], long[fast]
        # Token j of the short sentence of pair p sets bit j of match[p, k] wherever it equals token k
        # of the long sentence: join the two sides on (pair, word id).
        bit_pair, bit_pos = _positions(starts[s], lengths[s])
        bit_key = bit_pair * n_words + ids[starts[s][bit_pair] + bit_pos]
        order = np.argsort(bit_key)
        bit_key, bit_pos = bit_key[order], bit_pos[order]
        step_pair, step_pos = _positions(starts[t], lengths[t])
        step_key = step_pair * n_words + ids[starts[t][step_pair] + step_pos]
        lo = np.searchsorted(bit_key, step_key, "left")
        hi = np.searchsorted(bit_key, step_key, "right")
        hits = hi - lo
        has = np.flatnonzero(hits)
        steps = int(lengths[t].max())
        match = np.zeros(len(fast) * steps, np.uint64)
        if len(has):
            rep = np.repeat(has, hits[has])
            within = np.arange(len(rep)) - np.repeat(np.cumsum(hits[has]) - hits[has], hits[has])
            bits = np.left_shift(np.uint64(1), bit_pos[lo[rep] + within].astype(np.uint64))
            group = np.concatenate(([0], np.cumsum(hits[has])[:-1]))
            match[step_pair[has] * steps + step_pos[has]] = np.bitwise_or.reduceat(bits, group)
        match = match.reshape(len(fast), steps)
        row = np.full(len(fast), np.iinfo(np.uint64).max, np.uint64)
        for k in range(steps):
            u = row & match[:, k]
            row = (row + u) | (row - u)
        # Bits above a sentence's length stay set, so the zero bits of the row count the LCS.
        out[fast] = _popcount(~row)
    for p in np.flatnonzero(lengths[short] > _BITS):
        a = ids[starts[short[p]]:starts[short[p]] + lengths[short[p]]].tolist()
        b = ids[starts[long[p]]:starts[long[p]] + lengths[long[p]]].tolist()
        out[p] = _lcs_python(a, b)
    return out


def rouge_l(hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]], beta: float = BETA) -> np.ndarray:
    """Per-image ROUGE-L of token lists (pycocoevalcap splits on single spaces, keeping empty tokens)."""
    n_img = len(hyps)
    n_refs = np.fromiter(map(len, refs), np.int64, n_img)
    ids, lengths = encode(list(hyps) + [r for rs in refs for r in rs], Vocabulary())
    hyp_of_ref = np.repeat(np.arange(n_img), n_refs)
    ref_sent = n_img + np.arange(int(n_refs.sum()))
    lcs = lcs_lengths(ids, lengths, ref_sent, hyp_of_ref).astype(np.float64)
    prec = lcs / lengths[hyp_of_ref].astype(np.float64)
    rec = lcs / lengths[ref_sent].astype(np.float64)
    starts = np.concatenate(([0], np.cumsum(n_refs)[:-1]))
    prec_max = np.maximum.reduceat(prec, starts) if len(prec) else np.zeros(n_img)
    rec_max = np.maximum.reduceat(rec, starts) if len(rec) else np.zeros(n_img)
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
        ids = check_pairs(gts, res, "Rouge")
        scores = rouge_l([res[i][0].split(" ") for i in ids], [[r.split(" ") for r in gts[i]] for i in ids],
                         self.beta)
        return float(np.mean(scores)), scores

    def method(self) -> str:
        """Metric name, as pycocoevalcap reports it."""
        return "Rouge"
