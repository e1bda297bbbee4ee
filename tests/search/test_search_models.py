"""GNA and dual-encoder scoring: batched gallery scoring equals a per-pair loop; losses; ranking metrics."""
from __future__ import annotations

import pytest
import torch

from imcap.search import models as search_models
from imcap.search.evaluate import rank_metrics
from imcap.search.models import GNA, DualEncoder, SearchModelArgs, build_search_model


def _args(kind: str, **kw) -> SearchModelArgs:
    base = dict(cnn_width=4, image_size=32, input_encoding_size=12, rnn_size=10, units=9, embed_size=8, drop_prob_lm=0.3)
    base.update(kw)
    return SearchModelArgs(kind, vocab_size=30, **base)


def _sentences(q: int, t: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 30, (q, t), generator=g)
    for i in range(q):
        tokens[i, 1 + i % t:] = 0  # lengths 1..t
    return tokens


@pytest.fixture
def gna() -> GNA:
    torch.manual_seed(0)
    model = build_search_model(_args("gna"))
    model.train()
    images = torch.rand(8, 3, 32, 32)
    tokens = _sentences(8, 6)
    model.loss(images, tokens, torch.arange(8), torch.ones(8))[0].backward()  # move BatchNorm statistics off their start
    return model.eval()


def test_gna_batched_gallery_scores_equal_a_per_pair_loop(gna, monkeypatch):
    images = torch.rand(7, 3, 32, 32)
    tokens = _sentences(5, 6, seed=1)
    with torch.no_grad():
        gallery = gna.image_features(images)  # (7, U + 4H)
        batched = gna.scores(gna.text_features(tokens), gallery)  # (5, 7)
        monkeypatch.setattr(search_models, "PAIR_BUDGET", 3 * (4 * 10 + 9))  # force many small chunks
        chunked = gna.scores(gna.text_features(tokens), gallery)
        loop = torch.empty(5, 7)
        for i in range(5):
            for j in range(7):  # the training forward, one pair at a time, with the sentence cut to its length
                length = int((tokens[i] != 0).sum())
                loop[i, j] = gna.pair_logits(images[j:j + 1], tokens[i:i + 1, :length], torch.zeros(1, dtype=torch.long))[0]
    assert batched.shape == (5, 7)
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, loop, rtol=1e-5, atol=1e-5)
    assert batched.std() > 0  # the scores depend on the pair


def test_gna_padding_does_not_change_a_score(gna):
    images = torch.rand(3, 3, 32, 32)
    short = torch.tensor([[4, 5, 6]])
    padded = torch.tensor([[4, 5, 6, 0, 0, 0]])
    with torch.no_grad():
        gallery = gna.image_features(images)
        torch.testing.assert_close(gna.scores(gna.text_features(short), gallery), gna.scores(gna.text_features(padded), gallery))


def test_gna_training_loss_learns_to_separate_pairs():
    torch.manual_seed(1)
    model = build_search_model(_args("gna", drop_prob_lm=0.0))
    images = torch.rand(4, 3, 32, 32)
    tokens = _sentences(8, 5, seed=2)
    image_of_pair = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    target = torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(40):
        loss, _ = model.loss(images, tokens, image_of_pair, target)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, acc = model.loss(images, tokens, image_of_pair, target)
    assert float(loss.detach()) < 0.5 * first and acc == 1.0


def test_dual_scores_are_cosines_and_loss_ignores_same_identity_pairs():
    torch.manual_seed(0)
    model: DualEncoder = build_search_model(_args("dual")).eval()
    images = torch.rand(4, 3, 32, 32)
    tokens = _sentences(3, 5)
    with torch.no_grad():
        gallery = model.image_features(images)
        text = model.text_features(tokens)
        scores = model.scores(text, gallery.half())
    assert torch.allclose(gallery.norm(dim=1), torch.ones(4), atol=1e-5)
    loop = torch.tensor([[float(text[i] @ gallery[j]) for j in range(4)] for i in range(3)])
    torch.testing.assert_close(scores, loop, rtol=2e-3, atol=2e-3)  # float16 gallery
    tokens4 = _sentences(4, 5, seed=3)
    with torch.no_grad():
        distinct, _ = model.loss(images, tokens4, torch.tensor([0, 1, 2, 3]))
        shared, _ = model.loss(images, tokens4, torch.tensor([0, 0, 2, 3]))
    assert float(shared) < float(distinct)  # fewer negatives once pairs of one person are not counted as wrong


def test_rank_metrics_by_hand():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5], [0.1, 0.2, 0.3, 0.9], [0.0, 0.5, 0.6, 0.7]])
    gallery = torch.tensor([0, 1, 1, 2])
    queries = torch.tensor([1, 2, 0])
    m = rank_metrics(scores, queries, gallery, ks=(1, 2, 5))
    assert m["top1"] == pytest.approx(1 / 3)
    assert m["top2"] == pytest.approx(2 / 3)
    assert m["top5"] == pytest.approx(1.0)
    assert m["mAP"] == pytest.approx((0.5 + 1.0 + 0.25) / 3)


def test_unknown_model_is_a_one_line_error():
    from imcap.errors import ImcapError

    with pytest.raises(ImcapError, match="unknown search model"):
        build_search_model(_args("clip"))
