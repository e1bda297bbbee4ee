import pytest
import torch

from imcap.data.vocab import END, NULL, START
from imcap.decoding import DecodeOptions, beam_search, decode, greedy, sample
from imcap.models import ShowTell


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(3)
    m = ShowTell(25, 12, 16, dropout=0.0).eval()
    with torch.no_grad():
        m.logit.bias[END] += 1.0  # captions of varied lengths
    return m


@torch.no_grad()
def test_beam_size_one_equals_greedy(decoder):
    feats = torch.randn(16, 12)
    g, g_lp = greedy(decoder, feats, max_length=10)
    b, b_score = beam_search(decoder, feats, beam_size=1, max_length=10)
    assert torch.equal(b[:, 0, : g.size(1)], g)
    assert (b[:, 0, g.size(1):] == NULL).all()
    torch.testing.assert_close(b_score[:, 0], g_lp.sum(1))


@torch.no_grad()
def test_batched_beam_equals_per_image_beam(decoder):
    feats = torch.randn(6, 12)
    batched, scores = beam_search(decoder, feats, beam_size=4, max_length=8, n_best=3)
    for i in range(6):
        single, s = beam_search(decoder, feats[i : i + 1], beam_size=4, max_length=8, n_best=3)
        n = single.size(2)
        assert torch.equal(batched[i, :, :n], single[0])
        torch.testing.assert_close(scores[i], s[0])


@torch.no_grad()
def test_beam_finds_higher_likelihood_than_greedy():
    torch.manual_seed(4)
    decoder = ShowTell(25, 12, 16, dropout=0.0).eval()
    with torch.no_grad():
        decoder.logit.weight.mul_(8.0)  # peaky, state-dependent distributions
    feats = torch.randn(32, 12)
    _, g_lp = greedy(decoder, feats, max_length=8)
    _, b_score = beam_search(decoder, feats, beam_size=5, max_length=8)
    assert (b_score[:, 0] >= g_lp.sum(1) - 1e-5).all()
    assert (b_score[:, 0] > g_lp.sum(1) + 1e-4).any()


@torch.no_grad()
def test_beam_scores_are_true_sequence_logprobs(decoder):
    feats = torch.randn(3, 12)
    seqs, scores = beam_search(decoder, feats, beam_size=3, max_length=8)
    for i in range(3):
        state = decoder.init_state(feats[i : i + 1])
        tok, total = torch.tensor([START]), 0.0
        for t in seqs[i, 0].tolist():
            if t == NULL:
                break
            lp, state, _ = decoder.step(tok, state)
            total += float(lp[0, t])
            tok = torch.tensor([t])
        assert abs(total - float(scores[i, 0])) < 1e-4


@torch.no_grad()
def test_outputs_never_contain_start_or_null_before_end(decoder):
    feats = torch.randn(20, 12)
    for seqs in (greedy(decoder, feats)[0], sample(decoder, feats, temperature=2.0)[0], beam_search(decoder, feats, 3)[0][:, 0]):
        for row in seqs.tolist():
            body = row[: row.index(END)] if END in row else row
            assert START not in body and NULL not in body


@torch.no_grad()
def test_sampling_temperature_top_k_top_p(decoder):
    feats = torch.randn(1, 12).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    s1, _ = sample(decoder, feats, max_length=1, top_k=1, generator=g)
    greedy_first = greedy(decoder, feats[:1], max_length=1)[0][0, 0]
    assert (s1[:, 0] == greedy_first).all()  # top-k 1 is greedy
    s_hot, _ = sample(decoder, feats, max_length=1, temperature=5.0, generator=g)
    s_p, _ = sample(decoder, feats, max_length=1, top_p=0.3, generator=g)
    assert len(set(s_hot[:, 0].tolist())) > len(set(s_p[:, 0].tolist()))
    again, _ = sample(decoder, feats, max_length=3, generator=torch.Generator().manual_seed(1))
    again2, _ = sample(decoder, feats, max_length=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, again2)


@torch.no_grad()
def test_length_penalty_prefers_longer(decoder):
    feats = torch.randn(40, 12)
    short, _ = beam_search(decoder, feats, beam_size=5, max_length=12, length_penalty=0.0)
    long, _ = beam_search(decoder, feats, beam_size=5, max_length=12, length_penalty=2.0)
    def lengths(s):
        return (s[:, 0] != NULL).sum(1).float().mean()
    assert lengths(long) >= lengths(short)


@torch.no_grad()
def test_decode_n_captions(decoder):
    feats = torch.randn(2, 12)
    seqs, scores = decode(decoder, feats, DecodeOptions(n=3))
    assert seqs.shape[:2] == (2, 3) and scores.shape == (2, 3)
    assert (scores[:, :-1] >= scores[:, 1:]).all()


@torch.no_grad()
def test_max_length_bounds_the_words():
    torch.manual_seed(0)
    m = ShowTell(25, 12, 16, dropout=0.0).eval()
    with torch.no_grad():
        m.logit.bias[END] -= 100.0  # the model never wants to stop
    feats = torch.randn(4, 12)
    for seqs in (greedy(m, feats, max_length=5)[0], beam_search(m, feats, 3, max_length=5)[0][:, 0], sample(m, feats, max_length=5)[0]):
        assert seqs.size(1) == 6 and (seqs[:, 5] == END).all() and (seqs[:, :5] != END).all()
