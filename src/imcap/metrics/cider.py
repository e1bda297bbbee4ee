"""CIDEr and CIDEr-D as pycocoevalcap computes them, vectorised, plus cached CIDEr-D rewards for SCST.

pycocoevalcap 1.2's `Cider` already is the CIDEr-D formula: tf-idf n-gram vectors (n = 1..4) with
document frequencies from the references of the evaluated images, clipped matches
`min(w_hyp, w_ref) * w_ref`, a Gaussian length penalty (sigma 6; "length" is the number of bigrams,
as in its code), the mean over n, divided by the number of references, times 10. `CiderD` is the same
with an optional `DocumentFrequency` from a training corpus, which is what self-critical training
(Rennie et al. 2017) uses; `CiderDReward` scores many sampled captions against cached references.
"""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import numpy as np

from imcap.errors import ImcapError
from imcap.metrics._corpus import ImageLayout, ImageRuns, image_runs, pair_lines, word_ids
from imcap.metrics._inputs import check_pairs
from imcap.metrics._ngrams import OrderCounts, Vocabulary, count_ngrams, encode, lookup, sorted_search, starts_of
from imcap.metrics.tokenizer import PTBTokenizer

SIGMA = 6.0
N = 4


def cider_from_counts(counts: list[OrderCounts], layout: ImageLayout, df: list[np.ndarray] | None = None,
                      log_docs: float | None = None, sigma: float = SIGMA,
                      runs: list[ImageRuns] | None = None) -> np.ndarray:
    """Per-image CIDEr from the n-gram counts of sentences laid out image by image (see `ImageLayout`).

    `df[k][g]` is the document frequency of gram g of order k+1 and `log_docs` the log of the number of
    documents; both default to pycocoevalcap's: computed from the references, over the images scored.
    `runs` are the orders' `image_runs`, when the caller has them already.
    """
    runs = [image_runs(oc, layout) for oc in counts] if runs is None else runs
    n_img, n_sent, n = layout.n_images, len(layout.lengths), len(counts)
    if log_docs is None:
        log_docs = float(np.log(float(n_img)))
    val = np.zeros((n, n_sent))  # per order and reference sentence: sum of min(w_hyp, w_ref) * w_ref
    norm = np.zeros((n, n_sent))
    for k, (oc, run) in enumerate(zip(counts, runs)):
        if df is None:  # the number of images whose references hold the gram
            df_k = np.bincount(oc.gram[run.start], weights=(run.length > 1) | ~run.has_hyp, minlength=oc.n_grams)
        else:
            df_k = df[k]
        idf = log_docs - np.log(np.maximum(1.0, df_k))  # (n_grams,)
        weight = oc.count * idf[oc.gram]
        norm[k] = np.bincount(oc.sent, weights=weight * weight, minlength=n_sent)
        w_ref = weight[run.ref_entry]
        val[k] = np.bincount(oc.sent[run.ref_entry], weights=np.minimum(weight[run.hyp_of_ref], w_ref) * w_ref,
                             minlength=n_sent)
    norm = np.sqrt(norm)
    ref, hyp = layout.ref_sent, layout.hyp_sent[layout.image_of_ref]
    val, nh, nr = val[:, ref], norm[:, hyp], norm[:, ref]  # (n, R)
    both = (nh != 0) & (nr != 0)
    val = np.where(both, val / np.where(both, nh * nr, 1.0), val)
    bigrams = np.maximum(layout.lengths - 1, 0).astype(np.float64)  # pycocoevalcap's "length": its bigram count
    delta = bigrams[hyp] - bigrams[ref]
    val *= np.power(np.e, -(delta**2) / (2 * sigma**2))
    per_image = np.add.reduceat(val, starts_of(layout.n_refs), axis=1) if len(ref) else np.zeros((n, n_img))
    return np.mean(per_image, axis=0) / layout.n_refs * 10.0


class DocumentFrequency:
    """Document frequencies of the n-grams of a reference corpus (one document = one image's references).

    Built once from training captions (already tokenized: lists of words, or strings split on spaces);
    `CiderD(df=...)` and `CiderDReward` use it. Grams are stored as sorted integer keys per order
    (the id of the (n-1)-gram prefix times the vocabulary size plus the last word's id).
    """

    def __init__(self, words: list[str], keys: list[np.ndarray], df: list[np.ndarray], n_docs: int) -> None:
        self.words = words
        self.vocab = Vocabulary((w, i) for i, w in enumerate(words))
        self.keys = keys
        self.df = df
        self.n_docs = n_docs

    @property
    def n(self) -> int:
        """Largest n-gram order."""
        return len(self.keys)

    @property
    def log_docs(self) -> float:
        """log(number of documents), the `ref_len` of pycocoevalcap's formula."""
        return float(np.log(float(self.n_docs)))

    @classmethod
    def from_references(cls, refs: Sequence[Sequence[Sequence[str] | str]], n: int = N) -> DocumentFrequency:
        """Count, for each n-gram, the number of images whose references contain it."""
        docs = [[r.split() if isinstance(r, str) else list(r) for r in rs] for rs in refs]
        vocab = Vocabulary()
        ids, lengths = encode([r for rs in docs for r in rs], vocab)
        n_refs = np.fromiter(map(len, docs), np.int64, len(docs))
        doc_of_sent = np.repeat(np.arange(len(docs)), n_refs)
        keys, dfs = [], []
        for oc in count_ngrams(ids, lengths, n, len(vocab)):
            # entries are sorted by gram, then sentence, and a document's sentences are consecutive
            key = oc.gram.astype(np.int64) * max(len(docs), 1) + doc_of_sent[oc.sent]
            distinct = np.concatenate(([True], key[1:] != key[:-1])) if len(key) else np.zeros(0, bool)
            keys.append(oc.keys.astype(np.int64))
            dfs.append(np.bincount(oc.gram[distinct], minlength=oc.n_grams).astype(np.float64))
        return cls(list(vocab), keys, dfs, len(docs))

    def gram_ids(self, ids: np.ndarray, lengths: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """Per order: (positions where a gram starts, the gram's id, number of ids in use).

        `ids` are word ids from `self.vocab`, possibly extended (ids >= len(self.words) are words the
        corpus lacks). Grams of the corpus get their corpus ids (which index `self.df`); others get fresh
        ids above those, equal grams equal ids.
        """
        v = len(self.words)
        w_total = max(int(ids.max()) + 1 if len(ids) else 0, v, 1)
        starts = starts_of(lengths)
        remaining = np.repeat(lengths, lengths) - (np.arange(len(ids)) - np.repeat(starts, lengths))
        gram_of_pos = np.zeros(len(ids), np.int64)
        out = []
        n_known_prev = 0
        for k in range(1, self.n + 1):
            pos = np.flatnonzero(remaining >= k)
            word = ids[pos + k - 1]
            if k == 1:
                known = word < v
                corpus_key = word
                own_key = word
            else:
                prefix = gram_of_pos[pos]
                known = (prefix < n_known_prev) & (word < v)
                corpus_key = prefix * v + word
                own_key = prefix * w_total + word
            n_known = len(self.keys[k - 1])
            if k == 1 and n_known == v and (v == 0 or self.keys[0][-1] == v - 1):  # every word is a unigram:
                found, where = known, np.where(known, word, 0)  # its id is its word id
            else:  # only grams of corpus words with a corpus prefix can be in the corpus
                found, where = np.zeros(len(pos), bool), np.zeros(len(pos), np.int64)
                maybe = np.flatnonzero(known)
                found[maybe], where[maybe] = lookup(self.keys[k - 1], corpus_key[maybe])
            gram = where.copy()
            unseen = np.flatnonzero(~found)
            n_ids = n_known
            if len(unseen):
                _, inverse = np.unique(own_key[unseen], return_inverse=True)
                gram[unseen] = n_known + inverse
                n_ids = n_known + int(inverse.max()) + 1
            gram_of_pos[pos] = gram
            out.append((pos, gram, n_ids))
            n_known_prev = n_known
        return out

    def df_of(self, order: int, gram: np.ndarray) -> np.ndarray:
        """Document frequency (float) of gram ids of `order` (1-based); 0 for grams the corpus lacks."""
        table = self.df[order - 1]
        out = np.zeros(len(gram))
        inside = gram < len(table)
        out[inside] = table[gram[inside]]
        return out

    def save(self, path: str | Path) -> None:
        """Write the tables to a .npz file."""
        arrays = {f"keys{k}": a for k, a in enumerate(self.keys)} | {f"df{k}": a for k, a in enumerate(self.df)}
        np.savez_compressed(path, words=np.array(self.words, dtype=object).astype(str), n_docs=self.n_docs,
                            **arrays)

    @classmethod
    def load(cls, path: str | Path) -> DocumentFrequency:
        """Read tables written by `save`."""
        try:
            with np.load(path, allow_pickle=False) as z:
                n = sum(1 for name in z.files if name.startswith("keys"))
                return cls([str(w) for w in z["words"]], [z[f"keys{k}"] for k in range(n)],
                           [z[f"df{k}"] for k in range(n)], int(z["n_docs"]))
        except (OSError, KeyError, ValueError) as exc:
            raise ImcapError(f"{path}: not a document-frequency file ({exc})") from exc


def counts_from_gram_ids(gram_ids: list[tuple[np.ndarray, np.ndarray, int]], lengths: np.ndarray) -> list[OrderCounts]:
    """Per-sentence counts (sorted by gram, then sentence) from `DocumentFrequency.gram_ids` output."""
    n_sent = max(len(lengths), 1)
    sent_of_pos = np.repeat(np.arange(len(lengths)), lengths)
    span = max(max((n_ids for _, _, n_ids in gram_ids), default=1), 1) * n_sent
    key = np.concatenate([k * span + gram * n_sent + sent_of_pos[pos] for k, (pos, gram, _) in enumerate(gram_ids)])
    uniq, count = np.unique(key, return_counts=True)
    bounds = np.searchsorted(uniq, np.arange(len(gram_ids) + 1) * span)
    out = []
    for k, (_, _, n_ids) in enumerate(gram_ids):
        rest = uniq[bounds[k]:bounds[k + 1]] - k * span
        out.append(OrderCounts(rest % n_sent, rest // n_sent, count[bounds[k]:bounds[k + 1]], n_ids))
    return out


def _full_df(table: DocumentFrequency, counts: list[OrderCounts]) -> list[np.ndarray]:
    """df arrays indexed by the gram ids in `counts` (0 for grams the table lacks)."""
    return [np.concatenate((table.df[k], np.zeros(max(oc.n_grams - len(table.df[k]), 0))))
            for k, oc in enumerate(counts)]


class Cider:
    """Drop-in for `pycocoevalcap.cider.cider.Cider`: `compute_score(gts, res)` -> (mean, per-image array)."""

    def __init__(self, test: object = None, refs: object = None, n: int = N, sigma: float = SIGMA) -> None:
        self._n = n
        self._sigma = sigma

    def compute_score(self, gts: Mapping[Hashable, Sequence[str]],
                      res: Mapping[Hashable, Sequence[str]]) -> tuple[float, np.ndarray]:
        """Mean CIDEr over images and per-image CIDEr (df from the references of these images)."""
        lines, n_refs = pair_lines(gts, res, check_pairs(gts, res, self.method()))
        words, lengths, n_words = word_ids(lines, (None,))[0]
        layout = ImageLayout(n_refs, lengths)
        scores = cider_from_counts(count_ngrams(words, lengths, self._n, n_words), layout, sigma=self._sigma)
        return float(np.mean(scores)), scores

    def method(self) -> str:
        """Metric name, as pycocoevalcap reports it."""
        return "CIDEr"


class CiderD(Cider):
    """CIDEr-D; with `df` (a `DocumentFrequency` or a path saved from one), idf comes from that corpus."""

    def __init__(self, n: int = N, sigma: float = SIGMA, df: DocumentFrequency | str | Path | None = None) -> None:
        super().__init__(n=n, sigma=sigma)
        self._df = DocumentFrequency.load(df) if isinstance(df, (str, Path)) else df

    def compute_score(self, gts: Mapping[Hashable, Sequence[str]],
                      res: Mapping[Hashable, Sequence[str]]) -> tuple[float, np.ndarray]:
        """Mean CIDEr-D and per-image CIDEr-D."""
        if self._df is None:
            return super().compute_score(gts, res)
        lines, n_refs = pair_lines(gts, res, check_pairs(gts, res, self.method()))
        words, lengths = encode([line.split() for line in lines], Vocabulary(self._df.vocab))
        layout = ImageLayout(n_refs, lengths)
        counts = counts_from_gram_ids(self._df.gram_ids(words, lengths), lengths)
        scores = cider_from_counts(counts, layout, _full_df(self._df, counts), self._df.log_docs, self._sigma)
        return float(np.mean(scores)), scores

    def method(self) -> str:
        """Metric name."""
        return "CIDEr-D"


@dataclass
class _RefTable:
    keys: np.ndarray  # sorted ((image * n + order) * n_ids + gram) of every reference entry
    weight: np.ndarray  # tf-idf weight of the entry
    ref: np.ndarray  # global reference index of the entry
    run_left: np.ndarray  # entries from this one to the last one with the same key
    stride: int  # n_ids used in the key


class CiderDReward:
    """CIDEr-D of sampled captions against cached references, for self-critical sequence training.

    `refs` maps image id -> reference captions (strings, tokenized with the PTB tokenizer unless
    `tokenize=False`, or lists of words). Document frequencies come from these references (one
    document per image). `score(image_ids, candidates)` returns one CIDEr-D per candidate; candidates are
    strings, word lists, or rows of word ids (give `vocab`: an index -> word list, or an
    `imcap.data.vocab.Vocab`; ids 0 and 2 end a caption and 1 is skipped, as in imcap's vocabulary).
    For training, give references tokenized the way the model's vocabulary was built, so that sampled
    words and reference words are spelled alike.
    """

    def __init__(self, refs: Mapping[Hashable, Sequence[str] | Sequence[Sequence[str]]], *,
                 vocab: Sequence[str] | Any | None = None, tokenize: bool = True, n: int = N,
                 sigma: float = SIGMA) -> None:
        if not refs:
            raise ImcapError("CiderDReward: no reference captions")
        self._tokenize = tokenize
        self._tokenizer = PTBTokenizer()  # one instance, so that its caches serve every image
        self._sigma = sigma
        self._image_index = {key: i for i, key in enumerate(refs)}
        docs = [self._words_list(list(caps), f"references of {key!r}") for key, caps in refs.items()]
        if any(len(d) == 0 for d in docs):
            raise ImcapError("CiderDReward: every image needs at least one reference caption")
        self.table = DocumentFrequency.from_references(docs, n)
        self.n_refs = np.fromiter(map(len, docs), np.int64, len(docs))
        self._first_ref = starts_of(self.n_refs)
        sentences = [r for d in docs for r in d]
        word_ids, lengths = encode(sentences, Vocabulary(self.table.vocab))
        counts = counts_from_gram_ids(self.table.gram_ids(word_ids, lengths), lengths)
        img_of_ref = np.repeat(np.arange(len(docs)), self.n_refs)
        self._ref_local = np.arange(len(sentences)) - self._first_ref[img_of_ref]
        self._ref_bigrams = np.maximum(lengths - 1, 0).astype(np.float64)
        stride = max(max((oc.n_grams for oc in counts), default=1), 1)
        keys, weights, owners = [], [], []
        self._ref_norm = np.zeros((len(sentences), len(counts)))
        for k, oc in enumerate(counts):
            w = oc.count * (self.table.log_docs - np.log(np.maximum(1.0, self.table.df_of(k + 1, oc.gram))))
            self._ref_norm[:, k] = np.sqrt(np.bincount(oc.sent, weights=w * w, minlength=len(sentences)))
            keys.append((img_of_ref[oc.sent] * len(counts) + k) * stride + oc.gram)
            weights.append(w)
            owners.append(oc.sent)
        key = np.concatenate(keys)
        order = np.argsort(key, kind="stable")
        key = key[order]
        last = np.flatnonzero(np.append(key[1:] != key[:-1], True))  # the last entry of each run of equal keys
        run_left = np.repeat(last, np.diff(last, prepend=-1)) - np.arange(len(key)) + 1
        self._refs = _RefTable(key, np.concatenate(weights)[order], np.concatenate(owners)[order], run_left, stride)
        # entries of image i are self._refs.*[_image_range[i]:_image_range[i + 1]]
        self._image_range = np.searchsorted(self._refs.keys, np.arange(len(docs) + 1) * len(counts) * stride)
        self._model_map: np.ndarray | None = None
        if vocab is not None:
            vocab = getattr(vocab, "idx_to_word", vocab)
            extra = Vocabulary()
            self._model_map = np.array(
                [self.table.vocab[w] if w in self.table.vocab else len(self.table.words) + extra[w] for w in vocab],
                np.int64)

    def _words_list(self, caps: list, what: str) -> list[list[str]]:
        if any(isinstance(c, str) for c in caps):
            if not all(isinstance(c, str) for c in caps):
                raise ImcapError(f"CiderDReward: {what} mix strings and word lists")
            if self._tokenize:
                return [t.split() for t in self._tokenizer.tokenize_captions(caps)]
            return [c.split() for c in caps]
        return [list(c) for c in caps]

    def _encode(self, candidates: Sequence[str] | Sequence[Sequence[str]] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Word ids (table vocabulary, unknown words above it) and lengths of the candidates."""
        if isinstance(candidates, np.ndarray) and candidates.dtype.kind in "iu":
            if self._model_map is None:
                raise ImcapError("CiderDReward: candidates given as word ids need `vocab`")
            rows = np.atleast_2d(candidates).astype(np.int64)  # (B, T)
            stop = (rows == 0) | (rows == 2)
            alive = np.cumsum(stop, axis=1) == 0
            keep = alive & (rows != 1)
            lengths = keep.sum(axis=1).astype(np.int64)
            return self._model_map[rows[keep]], lengths
        words = self._words_list(list(candidates), "candidates")
        lengths = np.fromiter(map(len, words), np.int64, len(words))
        flat = list(chain.from_iterable(words))
        ids = np.fromiter(map(self.table.vocab.get, flat, repeat(-1)), np.int64, len(flat))
        missing = np.flatnonzero(ids < 0)
        if len(missing):  # words the references never use: fresh ids above the vocabulary, equal words equal ids
            unknown = Vocabulary()
            ids[missing] = [len(self.table.words) + unknown[flat[i]] for i in missing]
        return ids, lengths

    def score(self, image_ids: Sequence[Hashable], candidates: Sequence[str] | Sequence[Sequence[str]] | np.ndarray
              ) -> np.ndarray:
        """CIDEr-D of candidates[i] against the references of image_ids[i]; shape (len(candidates),)."""
        try:
            img = np.fromiter((self._image_index[k] for k in image_ids), np.int64, len(image_ids))
        except KeyError as exc:
            raise ImcapError(f"CiderDReward: no references for image {exc.args[0]!r}") from None
        word_ids, lengths = self._encode(candidates)
        if len(lengths) != len(img):
            raise ImcapError(f"CiderDReward: {len(img)} image ids but {len(lengths)} candidates")
        b = len(img)
        n_orders = self.table.n
        counts = counts_from_gram_ids(self.table.gram_ids(word_ids, lengths), lengths)
        # All orders at once: entry arrays concatenated, each entry tagged with its order.
        sent = np.concatenate([oc.sent for oc in counts])
        gram = np.concatenate([oc.gram for oc in counts])
        order = np.repeat(np.arange(n_orders), [len(oc.gram) for oc in counts])
        df = np.concatenate([self.table.df_of(k + 1, oc.gram) for k, oc in enumerate(counts)])
        w = np.concatenate([oc.count for oc in counts]) * (self.table.log_docs - np.log(np.maximum(1.0, df)))
        norm = np.sqrt(np.bincount(sent * n_orders + order, weights=w * w, minlength=b * n_orders)).reshape(b, n_orders)
        m = self.n_refs[img]
        pair_start = starts_of(m)
        n_pairs = int(m.sum())
        # The reference entries of this batch's images only (each image's entries are one sorted run).
        refs = self._refs
        images = np.unique(img)
        lo_img, hi_img = self._image_range[images], self._image_range[images + 1]
        take = np.repeat(lo_img - np.concatenate(([0], np.cumsum(hi_img - lo_img)[:-1])), hi_img - lo_img)
        take += np.arange(len(take))
        local_keys, local_weight, local_ref = refs.keys[take], refs.weight[take], refs.ref[take]
        known = gram < np.array([len(k) for k in self.table.keys])[order]
        key = np.where(known, (img[sent] * n_orders + order) * refs.stride + gram, -1)
        lo = np.minimum(sorted_search(local_keys, key, "left"), max(len(take) - 1, 0))
        hits = np.where(known & (local_keys[lo] == key), refs.run_left[take[lo]], 0) if len(take) else 0 * lo
        has = np.flatnonzero(hits)
        rep = np.repeat(has, hits[has])
        within = np.arange(len(rep)) - np.repeat(np.cumsum(hits[has]) - hits[has], hits[has])
        entry = lo[rep] + within
        w_ref = local_weight[entry]
        slot = pair_start[sent[rep]] + self._ref_local[local_ref[entry]]
        val = np.bincount(slot * n_orders + order[rep], weights=np.minimum(w[rep], w_ref) * w_ref,
                          minlength=n_pairs * n_orders).reshape(n_pairs, n_orders)
        cand_of_slot = np.repeat(np.arange(b), m)
        ref_of_slot = np.repeat(self._first_ref[img], m) + (np.arange(len(val)) - np.repeat(pair_start, m))
        nh, nr = norm[cand_of_slot], self._ref_norm[ref_of_slot]
        both = (nh != 0) & (nr != 0)
        val = np.where(both, val / np.where(both, nh * nr, 1.0), val)
        delta = np.maximum(lengths - 1, 0)[cand_of_slot] - self._ref_bigrams[ref_of_slot]
        val *= np.power(np.e, -(delta**2) / (2 * self._sigma**2))[:, None]
        per_cand = np.add.reduceat(val, pair_start, axis=0) if len(val) else np.zeros((b, n_orders))
        return np.mean(per_cand, axis=1) / m * 10.0
