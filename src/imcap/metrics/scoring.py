"""One call for all caption metrics: raw strings in, pycocoevalcap's numbers out."""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from imcap.errors import ImcapError
from imcap.metrics._ngrams import Vocabulary, count_ngrams, encode
from imcap.metrics.bleu import bleu_from_stats, bleu_stats_from_counts
from imcap.metrics.cider import cider_from_counts
from imcap.metrics.meteor import Meteor, MetricUnavailable
from imcap.metrics.rouge import rouge_l
from imcap.metrics.spice import Spice
from imcap.metrics.tokenizer import PTBTokenizer

log = logging.getLogger(__name__)

ALL_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
DEFAULT_METRICS = ("Bleu", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
_ALIASES = {
    "bleu": ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"),
    **{f"bleu_{k}": (f"Bleu_{k}",) for k in range(1, 5)},
    **{f"bleu{k}": (f"Bleu_{k}",) for k in range(1, 5)},
    "meteor": ("METEOR",),
    "rouge": ("ROUGE_L",),
    "rouge_l": ("ROUGE_L",),
    "rouge-l": ("ROUGE_L",),
    "cider": ("CIDEr",),
    "spice": ("SPICE",),
}

_tokenizer = PTBTokenizer()
_meteors: dict[tuple[str | None, str | None], Meteor] = {}
_notified: set[str] = set()


@dataclass
class Evaluation:
    """Corpus scores `{metric: value}` and per-image scores `{image_id: {metric: value}}`."""

    corpus: dict[str, float]
    per_image: dict[Hashable, dict[str, float]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it was not computed


def metric_names(metrics: Iterable[str] | str | None) -> list[str]:
    """Expand names like "Bleu", "bleu_4", "METEOR", "rouge", "CIDEr" to canonical names, in standard order."""
    if metrics is None:
        metrics = DEFAULT_METRICS
    if isinstance(metrics, str):
        metrics = [m for m in metrics.replace(",", " ").split() if m]
    wanted: set[str] = set()
    for name in metrics:
        found = _ALIASES.get(name.strip().lower())
        if found is None:
            raise ImcapError(f"unknown metric {name!r} (choose from Bleu, Bleu_1..Bleu_4, METEOR, ROUGE_L, CIDEr, SPICE)")
        wanted.update(found)
    return [m for m in ALL_METRICS if m in wanted]


def _notice(metric: str, reason: str) -> None:
    """Log why a metric is skipped, once per process and reason."""
    key = f"{metric}: {reason}"
    if key not in _notified:
        _notified.add(key)
        log.warning("%s skipped: %s", metric, reason)


def _meteor(jar: str | os.PathLike[str] | None, java: str | os.PathLike[str] | None) -> Meteor:
    """A running METEOR process, started on first use and kept for later calls."""
    key = (None if jar is None else str(jar), None if java is None else str(java))
    meteor = _meteors.get(key)
    if meteor is None or meteor._proc.poll() is not None:
        meteor = _meteors[key] = Meteor(jar=jar, java=java)
    return meteor


def _check(refs: Mapping[Hashable, Sequence[str]], preds: Mapping[Hashable, str | Sequence[str]]
           ) -> tuple[list[Hashable], list[str], list[list[str]]]:
    """Validate raw inputs; return evaluated ids (in prediction order), predictions, references."""
    if not isinstance(refs, Mapping) or not isinstance(preds, Mapping):
        raise ImcapError("score: refs must be {image_id: [caption, ...]} and preds {image_id: caption}")
    missing = [k for k in preds if k not in refs]
    if missing:
        shown = ", ".join(map(repr, missing[:3])) + (", ..." if len(missing) > 3 else "")
        raise ImcapError(f"score: {len(missing)} predicted image id(s) have no references ({shown})")
    if not preds:
        raise ImcapError("score: no predictions to score")
    ids = list(preds)
    hyps, ref_lists = [], []
    for key in ids:
        pred = preds[key]
        if not isinstance(pred, str):
            if isinstance(pred, Sequence) and len(pred) == 1 and isinstance(pred[0], str):
                pred = pred[0]
            else:
                raise ImcapError(f"score: the prediction for image {key!r} must be one caption string")
        caps = refs[key]
        if isinstance(caps, str):
            caps = [caps]
        if not isinstance(caps, Sequence) or len(caps) == 0:
            raise ImcapError(f"score: image {key!r} has no reference captions")
        if not all(isinstance(c, str) for c in caps):
            raise ImcapError(f"score: image {key!r} has a reference that is not a string")
        hyps.append(pred)
        ref_lists.append(list(caps))
    if len(ids) < len(refs):
        log.info("scoring %d of %d images that have references", len(ids), len(refs))
    return ids, hyps, ref_lists


_OTHER_SPACE = re.compile(r"[^\S ]")  # whitespace other than " "


def _split_whitespace(caption: str, words: list[str]) -> list[str]:
    """caption.split() (what BLEU and CIDEr use), reusing caption.split(" ") (ROUGE's) when equal."""
    if "" in words or _OTHER_SPACE.search(caption):
        return caption.split()
    return words


def evaluate(refs: Mapping[Hashable, Sequence[str]], preds: Mapping[Hashable, str | Sequence[str]],
             metrics: Iterable[str] | str | None = None, *, tokenize: bool = True,
             meteor_jar: str | os.PathLike[str] | None = None, spice_jar: str | os.PathLike[str] | None = None,
             java: str | os.PathLike[str] | None = None, tokenizer: PTBTokenizer | None = None) -> Evaluation:
    """Score `preds` ({id: caption}) against `refs` ({id: [captions]}): corpus and per-image values.

    Captions are PTB-tokenized once (unless `tokenize=False`, for captions already tokenized), by
    `tokenizer` or a shared module-level one (whose cache speeds up repeated calls).
    METEOR and SPICE are skipped with one logged notice when Java or their jars are missing.
    """
    names = metric_names(metrics)
    ids, hyps, ref_lists = _check(refs, preds)
    meteor: Meteor | None = None
    skipped: dict[str, str] = {}
    if "METEOR" in names:
        try:  # start Java now: it loads while the other metrics run
            meteor = _meteor(meteor_jar, java)
        except MetricUnavailable as exc:
            skipped["METEOR"] = str(exc)
            _notice("METEOR", str(exc))
    if tokenize:
        tok = _tokenizer if tokenizer is None else tokenizer
        hyps = tok.tokenize_captions(hyps)
        flat = tok.tokenize_captions([c for rs in ref_lists for c in rs])
        pos = 0
        tokenized = []
        for rs in ref_lists:
            tokenized.append(flat[pos:pos + len(rs)])
            pos += len(rs)
        ref_lists = tokenized
    n_img = len(ids)
    corpus: dict[str, float] = {}
    per_image: dict[str, Sequence[float]] = {}

    bleu_names = [m for m in names if m.startswith("Bleu_")]
    hyp_words = [h.split(" ") for h in hyps]
    ref_words = [[r.split(" ") for r in rs] for rs in ref_lists]
    if bleu_names or "CIDEr" in names:
        hyp_ws = [_split_whitespace(h, w) for h, w in zip(hyps, hyp_words)]
        ref_ws = [[_split_whitespace(r, w) for r, w in zip(rs, wss)] for rs, wss in zip(ref_lists, ref_words)]
        n_refs = np.fromiter(map(len, ref_ws), np.int64, n_img)
        vocab = Vocabulary()
        word_ids, lengths = encode(hyp_ws + [w for ws in ref_ws for w in ws], vocab)
        counts = count_ngrams(word_ids, lengths, 4, len(vocab))
        if bleu_names:
            bleu, bleu_each = bleu_from_stats(bleu_stats_from_counts(counts, lengths[:n_img], lengths[n_img:], n_refs))
            for k in range(4):
                if f"Bleu_{k + 1}" in names:
                    corpus[f"Bleu_{k + 1}"] = float(bleu[k])
                    per_image[f"Bleu_{k + 1}"] = bleu_each[k]
        if "CIDEr" in names:
            cider = cider_from_counts(counts, lengths, n_refs)
            corpus["CIDEr"] = float(np.mean(cider))
            per_image["CIDEr"] = cider
    if "ROUGE_L" in names:
        rouge = rouge_l(hyp_words, ref_words)
        corpus["ROUGE_L"] = float(np.mean(rouge))
        per_image["ROUGE_L"] = rouge
    gts = {i: ref_lists[j] for j, i in enumerate(ids)}
    res = {i: [hyps[j]] for j, i in enumerate(ids)}
    if meteor is not None:
        try:
            corpus["METEOR"], per_image["METEOR"] = meteor.compute_score(gts, res)
        except MetricUnavailable as exc:
            skipped["METEOR"] = str(exc)
            _notice("METEOR", str(exc))
    if "SPICE" in names:
        try:
            spice, spice_each = Spice(jar=spice_jar, java=java).compute_score(gts, res)
            corpus["SPICE"] = float(spice)
            order = {k: j for j, k in enumerate(sorted(gts))}
            per_image["SPICE"] = [spice_each[order[i]]["All"]["f"] for i in ids]
        except MetricUnavailable as exc:
            skipped["SPICE"] = str(exc)
            _notice("SPICE", str(exc))
    ordered = {m: corpus[m] for m in ALL_METRICS if m in corpus}
    images = {i: {m: float(per_image[m][j]) for m in ordered} for j, i in enumerate(ids)}
    return Evaluation(ordered, images, skipped)


def score(refs: Mapping[Hashable, Sequence[str]], preds: Mapping[Hashable, str | Sequence[str]],
          metrics: Iterable[str] | str | None = None, **options: object) -> dict[str, float]:
    """Corpus scores {"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"} (those asked for and available)."""
    return evaluate(refs, preds, metrics, **options).corpus  # type: ignore[arg-type]
