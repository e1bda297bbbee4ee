"""BLEU, ROUGE-L, CIDEr, CIDEr-D and METEOR against pycocoevalcap 1.2 on Flickr8k (corpus and per image)."""
from __future__ import annotations

import numpy as np
import pytest

from imcap.metrics import Bleu, Cider, CiderD, DocumentFrequency, Meteor, Rouge, evaluate
from imcap.metrics import scoring as score_module

TOL = 1e-9
METEOR_IMAGES = 150


def assert_close(ours, theirs, what: str) -> None:
    a, b = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    assert diff <= TOL, f"{what}: max difference {diff}"


@pytest.fixture(scope="module", params=["preds", "shuffled"])
def case(request, leave_one_out, java_tokenized):
    """One prediction set (caption #0, or shuffled across images), tokenized by pycocoevalcap, with its scores."""
    from pycocoevalcap.bleu.bleu import Bleu as PBleu
    from pycocoevalcap.cider.cider import Cider as PCider
    from pycocoevalcap.rouge.rouge import Rouge as PRouge

    refs, preds, shuffled = leave_one_out
    raw_preds = preds if request.param == "preds" else shuffled
    gts, res = java_tokenized["refs"], java_tokenized[request.param]
    theirs = {
        "Bleu": PBleu(4).compute_score(gts, res, verbose=0),
        "ROUGE_L": PRouge().compute_score(gts, res),
        "CIDEr": PCider().compute_score(gts, res),
    }
    return refs, raw_preds, gts, res, theirs


def test_bleu(case):
    _, _, gts, res, theirs = case
    corpus, per_image = Bleu(4).compute_score(gts, res)
    assert_close(corpus, theirs["Bleu"][0], "corpus BLEU")
    assert_close(per_image, theirs["Bleu"][1], "per-image BLEU")
    assert isinstance(corpus, list) and len(per_image) == 4 and len(per_image[0]) == len(gts)


def test_rouge(case):
    _, _, gts, res, theirs = case
    corpus, per_image = Rouge().compute_score(gts, res)
    assert_close(corpus, theirs["ROUGE_L"][0], "corpus ROUGE_L")
    assert_close(per_image, theirs["ROUGE_L"][1], "per-image ROUGE_L")


def test_cider(case):
    _, _, gts, res, theirs = case
    corpus, per_image = Cider().compute_score(gts, res)
    assert_close(corpus, theirs["CIDEr"][0], "corpus CIDEr")
    assert_close(per_image, theirs["CIDEr"][1], "per-image CIDEr")


def test_cider_d_with_document_frequencies_of_the_same_references(case):
    # CIDEr-D with idf from a corpus equals pycocoevalcap's CIDEr when that corpus is the references.
    _, _, gts, res, theirs = case
    df = DocumentFrequency.from_references([gts[k] for k in gts])
    corpus, per_image = CiderD(df=df).compute_score(gts, res)
    assert_close(corpus, theirs["CIDEr"][0], "corpus CIDEr-D")
    assert_close(per_image, theirs["CIDEr"][1], "per-image CIDEr-D")


def test_score_from_raw_strings(case):
    # One call from raw strings (imcap's tokenizer included) gives pycocoevalcap's pipeline numbers.
    refs, preds, gts, _, theirs = case
    result = evaluate(refs, preds, ["Bleu", "ROUGE_L", "CIDEr"])
    assert list(result.corpus) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]
    ids = list(gts)
    for k in range(4):
        assert_close(result.corpus[f"Bleu_{k + 1}"], theirs["Bleu"][0][k], f"score() Bleu_{k + 1}")
        assert_close([result.per_image[i][f"Bleu_{k + 1}"] for i in ids], theirs["Bleu"][1][k], "per-image BLEU")
    for name in ("ROUGE_L", "CIDEr"):
        assert_close(result.corpus[name], theirs[name][0], f"score() {name}")
        assert_close([result.per_image[i][name] for i in ids], theirs[name][1], f"per-image {name}")


class _Detached:
    """Stands in for pycocoevalcap's process handle after the test, so its __del__ leaves ours alone."""

    class _Pipe:
        def close(self) -> None:
            pass

    stdin = _Pipe()

    def kill(self) -> None:
        pass

    def wait(self) -> None:
        pass


def test_meteor(java_tokenized, leave_one_out, monkeypatch):
    # pycocoevalcap's Meteor wrapper must start the same command as ours; then its own code talks to
    # our (single, slow to start) METEOR process, so both wrappers are compared on the same jar run.
    import pycocoevalcap.meteor.meteor as pmeteor

    started = {}

    class FakePopen:
        def __init__(self, cmd, cwd=None, **kwargs):
            started["cmd"], started["cwd"] = cmd, cwd

    monkeypatch.setattr(pmeteor.subprocess, "Popen", FakePopen)
    theirs = pmeteor.Meteor()
    monkeypatch.undo()
    ids = list(java_tokenized["refs"])[:METEOR_IMAGES]
    gts = {k: java_tokenized["refs"][k] for k in ids}
    with Meteor() as ours:
        assert started["cmd"][1:] == ours._proc.args[1:] and started["cmd"][0] == "java"
        assert str(started["cwd"]) == str(ours.jar.parent)
        theirs.meteor_p = ours._proc
        try:
            for part in ("preds", "shuffled"):
                res = {k: java_tokenized[part][k] for k in ids}
                score, per_image = ours.compute_score(gts, res)
                their_score, their_per_image = theirs.compute_score(gts, res)
                assert_close(score, their_score, "corpus METEOR")
                assert_close(per_image, their_per_image, "per-image METEOR")
            refs, preds, _ = leave_one_out
            monkeypatch.setitem(score_module._meteors, (None, None), ours)  # reuse the running process
            result = evaluate({k: refs[k] for k in ids}, {k: preds[k] for k in ids}, ["METEOR"])
            their_score, _ = theirs.compute_score(gts, {k: java_tokenized["preds"][k] for k in ids})
            assert_close(result.corpus["METEOR"], their_score, "score() METEOR")
        finally:
            theirs.meteor_p = _Detached()
