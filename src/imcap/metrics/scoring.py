"""One call for all caption metrics: raw strings in, pycocoevalcap's numbers out."""
from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from imcap.errors import ImcapError
from imcap.metrics._corpus import ImageLayout, image_major, image_runs, word_ids
from imcap.metrics._ngrams import count_ngrams, radix_argsort
from imcap.metrics.bleu import bleu_from_stats, bleu_stats_from_counts
from imcap.metrics.cider import cider_from_counts
from imcap.metrics.meteor import Meteor, MetricUnavailable
from imcap.metrics.rouge import lcs_with_hypotheses, rouge_from_lcs
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
    hyps = [preds[k] for k in ids]
    ref_lists = [refs[k] for k in ids]
    # The usual case, checked in bulk: caption strings and non-empty lists of caption strings.
    if (all(type(h) is str for h in hyps) and all(type(rs) is list for rs in ref_lists) and 0 not in map(len, ref_lists)
            and all(type(c) is str for c in chain.from_iterable(ref_lists))):
        if len(ids) < len(refs):
            log.info("scoring %d of %d images that have references", len(ids), len(refs))
        return ids, hyps, ref_lists
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


def _compute(refs: Mapping[Hashable, Sequence[str]], preds: Mapping[Hashable, str | Sequence[str]],
             metrics: Iterable[str] | str | None, tokenize: bool, meteor_jar: str | os.PathLike[str] | None,
             spice_jar: str | os.PathLike[str] | None, java: str | os.PathLike[str] | None,
             tokenizer: PTBTokenizer | None
             ) -> tuple[list[Hashable], dict[str, float], dict[str, Sequence[float]], dict[str, str]]:
    """Evaluated ids, corpus scores, per-image scores (in id order) and skipped metrics, for `evaluate`."""
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
    n_refs = np.fromiter(map(len, ref_lists), np.int64, len(ref_lists))
    if tokenize:  # like pycocoevalcap: the references as one batch, the predictions as another
        tok = _tokenizer if tokenizer is None else tokenizer
        hyps = tok.tokenize_captions(hyps)
        flat = tok.tokenize_captions(list(chain.from_iterable(ref_lists)))
        bounds = np.cumsum(n_refs).tolist()
        ref_lists = [flat[a:b] for a, b in zip([0] + bounds[:-1], bounds)]
    corpus: dict[str, float] = {}
    per_image: dict[str, Sequence[float]] = {}
    bleu_names = [m for m in names if m.startswith("Bleu_")]
    if bleu_names or "CIDEr" in names or "ROUGE_L" in names:
        (ids_ws, lengths_ws, n_ws), (ids_sp, lengths_sp, n_sp) = word_ids(image_major(hyps, ref_lists), (None, " "))
        word_order = radix_argsort(ids_ws, n_ws)  # for the n-gram count, and ROUGE-L when it shares the ids
        if bleu_names or "CIDEr" in names:
            layout = ImageLayout(n_refs, lengths_ws)
            counts = count_ngrams(ids_ws, lengths_ws, 4, n_ws, word_order)
            runs = [image_runs(oc, layout) for oc in counts]
            if bleu_names:
                bleu, bleu_each = bleu_from_stats(bleu_stats_from_counts(counts, layout, runs))
                for k in range(4):
                    if f"Bleu_{k + 1}" in names:
                        corpus[f"Bleu_{k + 1}"] = float(bleu[k])
                        per_image[f"Bleu_{k + 1}"] = bleu_each[k]
            if "CIDEr" in names:
                cider = cider_from_counts(counts, layout, runs=runs)
                corpus["CIDEr"] = float(np.mean(cider))
                per_image["CIDEr"] = cider
        if "ROUGE_L" in names:
            layout = ImageLayout(n_refs, lengths_sp)
            same = ids_sp is ids_ws
            rouge = rouge_from_lcs(lcs_with_hypotheses(ids_sp, layout, n_sp, word_order if same else None), layout)
            corpus["ROUGE_L"] = float(np.mean(rouge))
            per_image["ROUGE_L"] = rouge
    if meteor is not None or "SPICE" in names:
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
    return ids, ordered, per_image, skipped


def evaluate(refs: Mapping[Hashable, Sequence[str]], preds: Mapping[Hashable, str | Sequence[str]],
             metrics: Iterable[str] | str | None = None, *, tokenize: bool = True,
             meteor_jar: str | os.PathLike[str] | None = None, spice_jar: str | os.PathLike[str] | None = None,
             java: str | os.PathLike[str] | None = None, tokenizer: PTBTokenizer | None = None) -> Evaluation:
    """Score `preds` ({id: caption}) against `refs` ({id: [captions]}): corpus and per-image values.

    Captions are PTB-tokenized once (unless `tokenize=False`, for captions already tokenized), by
    `tokenizer` or a shared module-level one (whose cache speeds up repeated calls); BLEU, ROUGE-L and
    CIDEr then share one integer coding of the tokens, and BLEU and CIDEr one n-gram count.
    METEOR and SPICE are skipped with one logged notice when Java or their jars are missing.
    """
    ids, corpus, per_image, skipped = _compute(refs, preds, metrics, tokenize, meteor_jar, spice_jar, java,
                                               tokenizer)
    names = list(corpus)
    columns = [np.asarray(per_image[m], dtype=np.float64).tolist() for m in names]
    images = {i: dict(zip(names, row)) for i, row in zip(ids, zip(*columns))} if names else {i: {} for i in ids}
    return Evaluation(corpus, images, skipped)


def score(refs: Mapping[Hashable, Sequence[str]], preds: Mapping[Hashable, str | Sequence[str]],
          metrics: Iterable[str] | str | None = None, *, tokenize: bool = True,
          meteor_jar: str | os.PathLike[str] | None = None, spice_jar: str | os.PathLike[str] | None = None,
          java: str | os.PathLike[str] | None = None, tokenizer: PTBTokenizer | None = None) -> dict[str, float]:
    """Corpus scores {"Bleu_1".."Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"} (those asked for and available).

    One call from raw strings: the captions are PTB-tokenized once, and BLEU, ROUGE-L and CIDEr are all
    computed from that one tokenization (one integer coding of the words; BLEU and CIDEr share one n-gram
    count). The options are those of `evaluate`, which also returns the per-image scores.
    """
    return _compute(refs, preds, metrics, tokenize, meteor_jar, spice_jar, java, tokenizer)[1]
