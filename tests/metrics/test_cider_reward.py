"""Batched CIDEr-D rewards: same numbers as CiderD scoring one caption at a time, for every input form."""
from __future__ import annotations

import random

import numpy as np
import pytest

from imcap.errors import ImcapError
from imcap.metrics import Cider, CiderD, CiderDReward, DocumentFrequency, PTBTokenizer

WORDS = "a the dog cat man woman runs sits on in grass red big small ball park water".split()


def _caption(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(0 if rng.random() < 0.05 else 2, 12)))


@pytest.fixture(scope="module")
def train() -> dict[str, list[str]]:
    rng = random.Random(0)
    return {f"im{i}": [_caption(rng) for _ in range(rng.randint(1, 5))] for i in range(300)}


def test_batch_equals_one_at_a_time(train):
    reward = CiderDReward(train, tokenize=False)
    rng = random.Random(1)
    images = [k for k in rng.sample(list(train), 50) for _ in range(5)]
    candidates = [_caption(rng) + (" zebra" if rng.random() < 0.2 else "") for _ in images]
    got = reward.score(images, candidates)
    scorer = CiderD(df=reward.table)
    expected = [scorer.compute_score({0: train[k]}, {0: [c]})[1][0] for k, c in zip(images, candidates)]
    assert got.shape == (250,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert reward.table.n_docs == len(train)


def test_equals_pycocoevalcap_cider_when_references_are_the_corpus(train, pycoco):
    # With df over exactly the scored images and one candidate each, CIDEr-D is pycocoevalcap's CIDEr.
    from pycocoevalcap.cider.cider import Cider as PCider

    rng = random.Random(2)
    res = {k: [_caption(rng)] for k in train}
    theirs = PCider().compute_score(train, res)[1]
    ours = CiderDReward(train, tokenize=False).score(list(train), [res[k][0] for k in train])
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
    np.testing.assert_allclose(Cider().compute_score(train, res)[1], theirs, rtol=0, atol=1e-9)


def test_word_lists_and_model_ids(train):
    vocab = ["<NULL>", "<START>", "<END>", "<UNK>"] + WORDS + ["unicorn"]
    reward = CiderDReward(train, vocab=vocab, tokenize=False)
    rng = random.Random(3)
    images = rng.sample(list(train), 20)
    sentences = [[rng.choice(WORDS + ["unicorn"]) for _ in range(rng.randint(1, 9))] for _ in images]
    ids = np.zeros((len(images), 12), np.int64)  # <NULL>-padded rows; some end with <END> then junk
    for r, words in enumerate(sentences):
        row = [vocab.index(w) for w in words]
        ids[r, :len(row)] = row
        if r % 2:
            ids[r, len(row)] = 2
            ids[r, len(row) + 1:] = 5
    from_strings = reward.score(images, [" ".join(s) for s in sentences])
    np.testing.assert_allclose(reward.score(images, sentences), from_strings, rtol=0, atol=0)
    np.testing.assert_allclose(reward.score(images, ids), from_strings, rtol=0, atol=0)


def test_raw_captions_are_ptb_tokenized(train):
    raw = {k: [c.capitalize() + "." for c in v] for k, v in list(train.items())[:50]}
    tokenized = {k: PTBTokenizer().tokenize_captions(v) for k, v in raw.items()}
    images = list(raw)
    cands = [raw[k][0].upper() for k in images]
    a = CiderDReward(raw).score(images, cands)
    b = CiderDReward(tokenized, tokenize=False).score(images, PTBTokenizer().tokenize_captions(cands))
    np.testing.assert_allclose(a, b, rtol=0, atol=0)


def test_errors(train):
    reward = CiderDReward(train, tokenize=False)
    with pytest.raises(ImcapError, match="no references for image"):
        reward.score(["nope"], ["a dog"])
    with pytest.raises(ImcapError, match="2 image ids but 1 candidates"):
        reward.score(["im0", "im1"], ["a dog"])
    with pytest.raises(ImcapError, match="need `vocab`"):
        reward.score(["im0"], np.array([[4, 5, 2]]))
    with pytest.raises(ImcapError, match="at least one reference"):
        CiderDReward({"a": []})


def test_document_frequency_roundtrip(tmp_path, train):
    table = DocumentFrequency.from_references(list(train.values()))
    table.save(tmp_path / "df.npz")
    loaded = DocumentFrequency.load(tmp_path / "df.npz")
    assert loaded.words == table.words and loaded.n_docs == table.n_docs
    assert all(np.array_equal(a, b) for a, b in zip(loaded.df, table.df))
    gts = {k: train[k] for k in list(train)[:30]}
    res = {k: [v[0]] for k, v in gts.items()}
    np.testing.assert_allclose(CiderD(df=tmp_path / "df.npz").compute_score(gts, res)[1],
                               CiderD(df=table).compute_score(gts, res)[1], rtol=0, atol=0)
    (tmp_path / "bad.npz").write_text("not numpy")
    with pytest.raises(ImcapError, match="not a document-frequency file"):
        DocumentFrequency.load(tmp_path / "bad.npz")
