"""The IVQA co-attention decoder: conditioning, fused teacher forcing, MLB attention, decoding."""
import pytest
import torch

from imcap.data.vocab import START
from imcap.decoding import DecodeOptions, decode
from imcap.models.coatt import COND_PAD, COND_UNK, CoAttention, build_condition_vocab, encode_conditions
from imcap.models.scheduled import unroll

V, C, K = 18, 6, 5


def make(rnn_type="lstm", layers=1, seed=0) -> CoAttention:
    torch.manual_seed(seed)
    m = CoAttention(V, C, condition_size=7, input_encoding_size=8, rnn_size=10, num_layers=layers, dropout=0.0, rnn_type=rnn_type).eval()
    with torch.no_grad():
        m.logit.weight.mul_(4.0)
    return m


def test_condition_vocabulary_and_ids():
    words = build_condition_vocab(["Red", "two", "red circle"])
    assert words == ["circle", "red", "two"]
    ids = encode_conditions(["red", "red circle", "purple", ""], words)
    assert ids.tolist() == [[3, COND_PAD], [3, 2], [COND_UNK, COND_PAD], [COND_PAD, COND_PAD]]


@pytest.mark.parametrize("rnn_type,layers", [("lstm", 1), ("gru", 2), ("rnn", 1)])
@torch.no_grad()
def test_fused_teacher_forcing_equals_stepping(rnn_type, layers):
    m = make(rnn_type, layers)
    feats = (torch.randn(3, K, C), torch.tensor([[2, 0], [3, 4], [5, 0]]))
    tokens = torch.randint(4, V + 1, (3, 6))
    fused, fused_alphas = m.forward_with_attention(feats, tokens)
    stepped, stepped_alphas = unroll(m, m.start(feats), tokens)
    torch.testing.assert_close(fused, stepped, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused_alphas, stepped_alphas, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fused.exp().sum(2), torch.ones(3, 6))
    torch.testing.assert_close(fused_alphas.sum(2), torch.ones(3, 6))


@torch.no_grad()
def test_mlb_attention_equals_the_naive_four_dimensional_form():
    m = make()
    v, a = torch.randn(2, K, C), torch.randn(2, 8)
    o = torch.randn(2, 3, 10)
    _, alpha = m._predict(o, v, torch.tanh(m.att.left(v)), a)
    z = torch.relu(m.z_o(o) + m.z_a(a).unsqueeze(1))  # (B, T, H)
    naive = m.att(v.unsqueeze(1).expand(-1, 3, -1, -1), z.unsqueeze(2).expand(-1, -1, K, -1)).squeeze(3)  # (B, T, K)
    torch.testing.assert_close(alpha, naive.softmax(2))


@torch.no_grad()
def test_the_condition_changes_the_prediction_and_the_attention():
    m = make(seed=2)
    v = torch.randn(1, K, C).expand(2, -1, -1)
    feats = (v, torch.tensor([[2], [5]]))
    lp, _, alpha = m.step(torch.full((2,), START), m.init_state(feats))
    assert not torch.allclose(lp[0], lp[1])
    assert not torch.allclose(alpha[0], alpha[1])
    pad_only = m.embed_condition(torch.tensor([[COND_PAD, COND_PAD]]))
    assert torch.equal(pad_only, torch.zeros_like(pad_only))


@torch.no_grad()
def test_every_decoding_strategy_with_a_condition():
    m = make(seed=1)
    feats = (torch.randn(4, K, C), torch.tensor([[2], [3], [4], [2]]))
    for opts in (DecodeOptions(max_length=5), DecodeOptions(beam_size=3, max_length=5, n=2), DecodeOptions(sample=True, max_length=5, n=2, top_k=3)):
        seqs, scores, alphas = decode(m, feats, opts, generator=torch.Generator().manual_seed(0), return_attention=True)
        assert seqs.shape[:2] == (4, opts.n) and scores.shape == (4, opts.n)
        assert alphas.shape == (*seqs.shape, K)
    one = decode(m, (feats[0][1:2], feats[1][1:2]), DecodeOptions(beam_size=3, max_length=5))
    batched = decode(m, feats, DecodeOptions(beam_size=3, max_length=5))
    assert torch.equal(batched[0][1, :, : one[0].size(2)], one[0][0])
