"""The captions of N images as one integer-coded corpus, laid out image by image.

Each image contributes its hypothesis, then its references. With this order the entries of an
n-gram (sorted by sentence) group by image, the hypothesis first, so BLEU's clipping, CIDEr's
products and ROUGE-L's match masks are runs over sorted arrays. `word_ids` codes the words of all
captions at once: one `str.split()` of the joined text when every caption is plain single-spaced text.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TypeVar

import numpy as np

from imcap.metrics._ngrams import OrderCounts, Vocabulary, encode, starts_of

T = TypeVar("T")


def image_major(hyps: Sequence[T], refs: Sequence[Sequence[T]]) -> list[T]:
    """[hyps[0], *refs[0], hyps[1], *refs[1], ...]."""
    sizes = set(map(len, refs))
    if len(sizes) == 1:  # the same number of references everywhere: interleave by slices
        m = sizes.pop()
        out: list = [None] * (len(hyps) * (m + 1))
        out[::m + 1] = hyps
        flat = list(chain.from_iterable(refs))
        for j in range(m):
            out[j + 1::m + 1] = flat[j::m]
        return out
    out = []
    for hyp, rs in zip(hyps, refs):
        out.append(hyp)
        out.extend(rs)
    return out


def pair_lines(gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]],
               ids: Sequence[Hashable]) -> tuple[list[str], np.ndarray]:
    """The captions of pycocoevalcap-style inputs in `image_major` order, and the references per image."""
    refs = [gts[i] for i in ids]
    return image_major([res[i][0] for i in ids], refs), np.fromiter(map(len, refs), np.int64, len(refs))


Encoded = tuple[np.ndarray, np.ndarray, int]  # word ids of all lines, words per line, number of distinct words
# Lines split at a time: the word strings of one block are freed before the next block's are made, so
# Python reuses their memory instead of asking the system for new pages (a quarter of the time).
_BLOCK_LINES = 256


def _single_spaced_lengths(text: str, n_lines: int) -> np.ndarray | None:
    """Words per line of `text` when str.split() and str.split(" ") agree on every line (single spaces,
    no empty line, ASCII without other whitespace); else None."""
    if not text.isascii():
        return None
    b = np.frombuffer(f"\n{text}\n".encode(), np.uint8)
    sep = (b == ord(" ")) | (b == ord("\n"))
    other_space = ((b - np.uint8(9) < 5) & (b != ord("\n"))) | (b - np.uint8(28) < 4)  # \t\v\f\r, \x1c-\x1f
    if (sep[:-1] & sep[1:]).any() or other_space.any():
        return None
    cut = np.flatnonzero(sep)
    newline = np.flatnonzero(b[cut] == ord("\n"))  # the separators before each line, and one after the last
    if len(newline) != n_lines + 1:  # a line holds a line break
        return None
    return np.diff(newline)


def word_ids(lines: list[str], seps: Sequence[str | None]) -> list[Encoded]:
    """The lines' words coded as integers, for each separator (None: str.split(), " ": str.split(" ")).

    When the splits agree (plain single-spaced captions), all separators share one encoding.
    """
    text = "\n".join(lines)
    lengths = _single_spaced_lengths(text, len(lines))
    if lengths is not None:
        vocab = Vocabulary()
        blocks = []
        for i in range(0, len(lines), _BLOCK_LINES):
            words = "\n".join(lines[i:i + _BLOCK_LINES]).split()
            blocks.append(np.fromiter(map(vocab.__getitem__, words), np.int32, len(words)))
        return [(np.concatenate(blocks), lengths, len(vocab))] * len(seps)
    out = []
    for sep in seps:
        vocab = Vocabulary()
        ids, lengths = encode([line.split(sep) for line in lines], vocab)
        out.append((ids, lengths, len(vocab)))
    return out


class ImageLayout:
    """Index arrays for sentences in `image_major` order, given the references per image and all lengths."""

    def __init__(self, n_refs: np.ndarray, lengths: np.ndarray) -> None:
        n_img = len(n_refs)
        self.n_images = n_img
        self.n_refs = n_refs  # (N,)
        self.lengths = lengths  # (S,) tokens per sentence, S = N + n_refs.sum()
        self.hyp_sent = starts_of(n_refs + 1)  # (N,) sentence index of each hypothesis
        self.image_of_sent = np.repeat(np.arange(n_img), n_refs + 1)  # (S,)
        self.is_hyp = np.zeros(len(lengths), bool)  # (S,)
        self.is_hyp[self.hyp_sent] = True
        self.ref_sent = np.flatnonzero(~self.is_hyp)  # (R,) sentence index of each reference
        self.image_of_ref = np.repeat(np.arange(n_img), n_refs)  # (R,)
        self.hyp_lengths = lengths[self.hyp_sent]  # (N,)
        self.ref_lengths = lengths[self.ref_sent]  # (R,)


@dataclass
class ImageRuns:
    """The entries of one n-gram order (sorted by gram, then sentence) cut into runs of equal (gram, image).

    A run holds the image's hypothesis entry first (when the hypothesis has the gram), then the entries
    of the image's references that have it. "Shared" runs hold both: there the hypothesis and references
    share the gram, which is all that BLEU's clipped matches and CIDEr's products need.
    """

    start: np.ndarray  # (G,) first entry of each run
    length: np.ndarray  # (G,) entries in each run
    has_hyp: np.ndarray  # (G,) whether the run starts with a hypothesis entry
    hyp_entry: np.ndarray  # (P,) the hypothesis entry of each shared run
    ref_offset: np.ndarray  # (P,) where each shared run's reference entries start in `ref_entry`
    ref_entry: np.ndarray  # (M,) the reference entries of the shared runs, run by run
    hyp_of_ref: np.ndarray  # (M,) the hypothesis entry of each one's run


def image_runs(counts: OrderCounts, layout: ImageLayout) -> ImageRuns:
    """The (gram, image) runs of one order's entries."""
    image = layout.image_of_sent[counts.sent]
    new = np.empty(len(image), bool)
    new[:1] = True
    np.not_equal(counts.gram[1:], counts.gram[:-1], out=new[1:])
    new[1:] |= image[1:] != image[:-1]
    start = np.flatnonzero(new)
    length = np.diff(start, append=len(image))
    has_hyp = layout.is_hyp[counts.sent[start]]
    shared = has_hyp & (length > 1)
    hyp_entry = start[shared]
    n_ref = length[shared] - 1
    ref_offset = starts_of(n_ref)
    ref_entry = np.arange(int(n_ref.sum())) + np.repeat(hyp_entry + 1 - ref_offset, n_ref)
    return ImageRuns(start, length, has_hyp, hyp_entry, ref_offset, ref_entry, np.repeat(hyp_entry, n_ref))
