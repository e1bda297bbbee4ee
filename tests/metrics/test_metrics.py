"""BLEU/ROUGE-L/CIDEr on awkward synthetic inputs against pycocoevalcap's pure-Python scorers, and score()."""
from __future__ import annotations

import logging
import random

import numpy as np
import pytest

from imcap.errors import ImcapError
from imcap.metrics import Bleu, Cider, CiderD, DocumentFrequency, Rouge, evaluate, metric_names, score
from imcap.metrics._corpus import ImageLayout, image_major
from imcap.metrics._ngrams import Vocabulary, encode
from imcap.metrics.rouge import _lcs_python, lcs_with_hypotheses

WORDS = ["a", "dog", "the", "cat", "runs", "on", "grass", "red", "big", "x"]


def _sentence(rng: random.Random, awkward: bool = True) -> str:
    kind = rng.random()
    if kind < 0.05 and awkward:
        return ""
    if kind < 0.1:
        return " ".join(rng.choice(WORDS[:3]) for _ in range(rng.randint(65, 140)))  # > 64 tokens
    if kind < 0.15 and awkward:
        return rng.choice(["a  dog", " a dog", "a dog ", "a\u00a0dog runs", "dog\tdog", "a a a a"])
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14)))


def synthetic(seed: int, n_images: int, awkward: bool = True) -> tuple[dict, dict]:
    """Images with 1-6 references; `awkward` adds empty captions and double, leading or other spaces."""
    rng = random.Random(seed)
    gts = {f"img{i}": [_sentence(rng, awkward) for _ in range(rng.randint(1, 6))] for i in range(n_images)}
    res = {k: [_sentence(rng, awkward)] for k in gts}
    return gts, res


@pytest.mark.parametrize("seed, n_images", [(0, 1), (1, 2), (2, 40), (3, 300)])
def test_against_pycocoevalcap_python_scorers(pycoco, seed, n_images):
    from pycocoevalcap.bleu.bleu import Bleu as PBleu
    from pycocoevalcap.cider.cider import Cider as PCider
    from pycocoevalcap.rouge.rouge import Rouge as PRouge

    gts, res = synthetic(seed, n_images)
    for ours, theirs in ((Bleu(4).compute_score(gts, res), PBleu(4).compute_score(gts, res, verbose=0)),
                         (Rouge().compute_score(gts, res), PRouge().compute_score(gts, res)),
                         (Cider().compute_score(gts, res), PCider().compute_score(gts, res))):
        np.testing.assert_allclose(np.asarray(ours[0], float), np.asarray(theirs[0], float), rtol=0, atol=1e-9)
        np.testing.assert_allclose(np.asarray(ours[1], float), np.asarray(theirs[1], float), rtol=0, atol=1e-9)


@pytest.mark.parametrize("seed, awkward", [(3, True), (9, True), (4, False)])
def test_evaluate_on_pretokenized_captions(pycoco, seed, awkward):
    # evaluate() codes the words once for all metrics; captions with empty tokens, double or other
    # spaces make split() and split(" ") differ, and it must then code them twice, like pycocoevalcap.
    from pycocoevalcap.bleu.bleu import Bleu as PBleu
    from pycocoevalcap.cider.cider import Cider as PCider
    from pycocoevalcap.rouge.rouge import Rouge as PRouge

    gts, res = synthetic(seed, 200, awkward)
    out = evaluate(gts, {k: v[0] for k, v in res.items()}, ["Bleu", "ROUGE_L", "CIDEr"], tokenize=False)
    bleu = PBleu(4).compute_score(gts, res, verbose=0)
    for name, (corpus, per_image) in [(f"Bleu_{k + 1}", (bleu[0][k], bleu[1][k])) for k in range(4)] + [
            ("ROUGE_L", PRouge().compute_score(gts, res)), ("CIDEr", PCider().compute_score(gts, res))]:
        assert out.corpus[name] == pytest.approx(corpus, abs=1e-9, rel=0)
        np.testing.assert_allclose([out.per_image[k][name] for k in gts], per_image, rtol=0, atol=1e-9)


def test_lcs_matches_dynamic_programming():
    # Each reference against its image's hypothesis: bit-parallel in NumPy, and on Python integers for
    # hypotheses over 64 tokens or references over 256.
    rng = random.Random(5)

    def sentence() -> list[str]:
        n = rng.choice([0, 1, 3, 10, 40, 64, 65, 90, 300]) if rng.random() < 0.3 else rng.randint(1, 20)
        return [rng.choice("abcd") for _ in range(n)]

    hyps = [sentence() for _ in range(120)]
    refs = [[sentence() for _ in range(rng.randint(1, 4))] for _ in hyps]
    vocab = Vocabulary()
    ids, lengths = encode(image_major(hyps, refs), vocab)
    layout = ImageLayout(np.array([len(r) for r in refs]), lengths)

    def dp(a: list, b: list) -> int:
        prev = [0] * (len(b) + 1)
        for x in a:
            cur = [0]
            for j, y in enumerate(b):
                cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
            prev = cur
        return prev[-1]

    got = lcs_with_hypotheses(ids, layout, len(vocab))
    assert got.tolist() == [dp(h, r) for h, rs in zip(hyps, refs) for r in rs]
    assert _lcs_python([1, 2, 3, 2], [2, 2, 3]) == 2


def test_corpus_bleu_is_not_the_mean_of_per_image_bleu():
    gts = {1: ["a dog runs on the grass"], 2: ["the cat"]}
    res = {1: ["a dog runs on grass"], 2: ["a big red cat sits"]}
    corpus, per_image = Bleu(4).compute_score(gts, res)
    assert corpus[0] != pytest.approx(np.mean(per_image[0]))
    assert 0 < corpus[0] < 1


def test_input_errors():
    with pytest.raises(ImcapError, match="different image ids"):
        Bleu().compute_score({1: ["a"]}, {2: ["a"]})
    with pytest.raises(ImcapError, match="exactly one"):
        Cider().compute_score({1: ["a"]}, {1: ["a", "b"]})
    with pytest.raises(ImcapError, match="non-empty list"):
        Rouge().compute_score({1: []}, {1: ["a"]})


def test_cider_d_with_training_document_frequencies():
    gts, res = synthetic(7, 60)
    df = DocumentFrequency.from_references([gts[k] for k in gts])
    assert np.allclose(CiderD(df=df).compute_score(gts, res)[1], Cider().compute_score(gts, res)[1], atol=1e-12)
    train_docs = list(synthetic(8, 200)[0].values())
    ours = CiderD(df=DocumentFrequency.from_references(train_docs)).compute_score(gts, res)[1]
    expected = [_cider_d_reference(res[k][0], gts[k], train_docs) for k in gts]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-9)


def _cider_d_reference(hyp: str, refs: list[str], docs: list[list[str]], sigma: float = 6.0) -> float:
    """CIDEr-D with idf from `docs`, written out with dictionaries like pycocoevalcap's scorer."""
    def grams(s: str) -> dict:
        words = s.split()
        out: dict = {}
        for n in range(1, 5):
            for i in range(len(words) - n + 1):
                g = tuple(words[i:i + n])
                out[g] = out.get(g, 0) + 1
        return out

    df: dict = {}
    for rs in docs:
        for g in {g for r in rs for g in grams(r)}:
            df[g] = df.get(g, 0) + 1

    def vec(s: str):
        v: list[dict] = [{} for _ in range(4)]
        for g, c in grams(s).items():
            v[len(g) - 1][g] = c * (np.log(float(len(docs))) - np.log(max(1.0, df.get(g, 0.0))))
        return v, [np.sqrt(sum(x * x for x in d.values())) for d in v], max(len(s.split()) - 1, 0)

    vh, nh, lh = vec(hyp)
    total = np.zeros(4)
    for r in refs:
        vr, nr, lr = vec(r)
        for n in range(4):
            val = sum(min(w, vr[n].get(g, 0.0)) * vr[n].get(g, 0.0) for g, w in vh[n].items())
            if nh[n] != 0 and nr[n] != 0:
                val /= nh[n] * nr[n]
            total[n] += val * np.e ** (-((lh - lr) ** 2) / (2 * sigma**2))
    return float(np.mean(total) / len(refs) * 10.0)


def test_metric_names():
    assert metric_names("Bleu") == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]
    assert metric_names(["cider", "Bleu_4", "METEOR"]) == ["Bleu_4", "METEOR", "CIDEr"]
    assert metric_names(None) == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE"]
    with pytest.raises(ImcapError, match="unknown metric"):
        metric_names(["BLEURT"])


def test_score_from_raw_strings_and_empty_prediction():
    refs = {1: ["A dog runs on the grass.", "A dog is running."], 2: ["Two cats sleep.", "Cats on a bed."]}
    out = evaluate(refs, {1: "A dog runs.", 2: ""}, ["Bleu", "ROUGE_L", "CIDEr"])
    assert set(out.corpus) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"}
    empty = out.per_image[2]
    assert empty["ROUGE_L"] == 0 and empty["CIDEr"] == 0 and empty["Bleu_1"] < 1e-5
    assert out.per_image[1]["CIDEr"] > 0
    assert score(refs, {1: "A dog runs.", 2: ""}, ["CIDEr"]) == {"CIDEr": out.corpus["CIDEr"]}
    # pycocoevalcap-style single-item lists are accepted for predictions
    assert score(refs, {1: ["A dog runs."], 2: [""]}, ["CIDEr"]) == {"CIDEr": out.corpus["CIDEr"]}


def test_score_id_errors():
    with pytest.raises(ImcapError, match="no references"):
        score({1: ["a dog"]}, {1: "a dog", 3: "a cat"}, ["CIDEr"])
    with pytest.raises(ImcapError, match="one caption string"):
        score({1: ["a dog"]}, {1: 5}, ["CIDEr"])
    with pytest.raises(ImcapError, match="no reference captions"):
        score({1: []}, {1: "a dog"}, ["CIDEr"])


def test_score_skips_unavailable_tools_with_one_notice(caplog, tmp_path):
    refs = {1: ["a dog runs"], 2: ["a cat sits"]}
    preds = {1: "a dog", 2: "a cat"}
    with caplog.at_level(logging.WARNING, logger="imcap.metrics.scoring"):
        for _ in range(3):
            out = evaluate(refs, preds, ["METEOR", "CIDEr", "SPICE"], meteor_jar=tmp_path / "none.jar",
                           spice_jar=tmp_path / "none.jar")
            assert list(out.corpus) == ["CIDEr"]
            assert set(out.skipped) == {"METEOR", "SPICE"}
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 2 and all("skipped" in m and "none.jar" in m for m in notices)
