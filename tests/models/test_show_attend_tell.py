"""Show-Attend-Tell: shapes, attention weights, the regulariser, and attention returned by every decoding strategy."""
import pytest
import torch

from imcap.data.vocab import END, NULL, START
from imcap.decoding import DecodeOptions, beam_search, decode, greedy, sample
from imcap.losses import attention_penalty
from imcap.models.attention import ShowAttendTell
from imcap.models.scheduled import unroll

V, C, K = 20, 7, 9


def make(rnn_type="lstm", layers=1, seed=0) -> ShowAttendTell:
    torch.manual_seed(seed)
    m = ShowAttendTell(V, C, input_encoding_size=8, rnn_size=10, num_layers=layers, dropout=0.0, rnn_type=rnn_type).eval()
    with torch.no_grad():
        m.att_w.weight.mul_(20.0)  # peaky attention, so that it depends on the state
        m.logit.weight.mul_(4.0)
        m.logit.bias[END] += 0.5
    return m


@pytest.mark.parametrize("rnn_type,layers", [("lstm", 1), ("gru", 2), ("rnn", 2)])
@torch.no_grad()
def test_step_shapes_and_attention_distribution(rnn_type, layers):
    m = make(rnn_type, layers)
    feats = torch.randn(3, K, C)
    state = m.init_state(feats)
    core, v, v_att = state
    assert all(s.shape == (layers, 3, 10) for s in core) and v.size(0) == v_att.size(0) == 3
    logprobs, state, alpha = m.step(torch.full((3,), START), state)
    assert logprobs.shape == (3, V + 1)
    torch.testing.assert_close(logprobs.exp().sum(1), torch.ones(3))
    assert alpha.shape == (3, K)
    torch.testing.assert_close(alpha.sum(1), torch.ones(3))
    # The attention looks at the content: permuting the regions permutes the weights.
    perm = torch.randperm(K)
    _, _, permuted = m.step(torch.full((3,), START), m.init_state(feats[:, perm]))
    torch.testing.assert_close(permuted, alpha[:, perm])


@torch.no_grad()
def test_forward_equals_stepping_and_keeps_alphas():
    m = make()
    feats, tokens = torch.randn(2, K, C), torch.randint(4, V + 1, (2, 5))
    out, alphas = m.forward_with_attention(feats, tokens)
    assert out.shape == (2, 5, V + 1) and alphas.shape == (2, 5, K)
    torch.testing.assert_close(m(feats, tokens), out)
    state = m.init_state(feats)
    for t in range(5):
        lp, state, alpha = m.step(tokens[:, t], state)
        torch.testing.assert_close(out[:, t], lp)
        torch.testing.assert_close(alphas[:, t], alpha)


def test_attention_penalty_values():
    targets = torch.tensor([[5, 6, END, NULL]])
    alphas = torch.zeros(1, 4, 3)
    alphas[0, :, 0] = 1.0  # every step looks at region 0, including the padded one (ignored)
    # Region 0 gets 3 (from the 3 real steps), regions 1 and 2 get 0: ((1-3)^2 + 1 + 1) / 3 = 2.
    assert float(attention_penalty(alphas, targets, 0.5)) == pytest.approx(0.5 * 2.0)
    assert attention_penalty(alphas, targets, 0.0) == 0.0
    assert attention_penalty(None, targets, 1.0) == 0.0  # a decoder without attention
    alphas = torch.full((1, 4, 3), 1 / 3)
    alphas[0, 3] = 0.0
    assert float(attention_penalty(alphas, targets, 1.0)) == pytest.approx(0.0, abs=1e-6)


def test_penalty_gradient_reaches_the_attention():
    m = make().train()
    feats, tokens = torch.randn(2, K, C), torch.randint(4, V + 1, (2, 4))
    _, alphas = m.forward_with_attention(feats, tokens)
    attention_penalty(alphas, tokens, 1.0).backward()
    assert m.att_w.weight.grad.abs().sum() > 0


@torch.no_grad()
def test_greedy_and_sample_return_attention_rows_for_each_token():
    m = make()
    feats = torch.randn(5, K, C)
    seqs, logps, alphas = greedy(m, feats, max_length=6, return_attention=True)
    plain, plain_lp = greedy(m, feats, max_length=6)
    assert torch.equal(seqs, plain) and torch.equal(logps, plain_lp)
    assert alphas.shape == (*seqs.shape, K)
    real = seqs != NULL
    torch.testing.assert_close(alphas.sum(2)[real], torch.ones(int(real.sum())))
    assert (alphas.sum(2)[~real] == 0).all()
    s, _, sa = sample(m, feats, max_length=6, generator=torch.Generator().manual_seed(0), return_attention=True)
    assert sa.shape == (*s.shape, K)


def teacher_forced_alphas(m, feats, seq):
    """The attention weights of one sequence (L,) replayed by teacher forcing."""
    tokens = [t for t in seq.tolist() if t != NULL]
    return unroll(m, m.start(feats), torch.tensor([[START, *tokens[:-1]]]))[1][0]


@torch.no_grad()
def test_beam_attention_follows_the_beams():
    m = make(seed=3)
    feats = torch.randn(4, K, C)
    seqs, scores, alphas = beam_search(m, feats, beam_size=3, max_length=6, n_best=3, return_attention=True)
    s2, sc2 = beam_search(m, feats, beam_size=3, max_length=6, n_best=3)
    assert torch.equal(seqs, s2) and torch.equal(scores, sc2)
    assert alphas.shape == (*seqs.shape, K)
    for b in range(4):
        for j in range(3):
            n = int((seqs[b, j] != NULL).sum())
            torch.testing.assert_close(alphas[b, j, :n], teacher_forced_alphas(m, feats[b : b + 1], seqs[b, j]), atol=1e-5, rtol=1e-4)
            assert (alphas[b, j, n:] == 0).all()


@torch.no_grad()
def test_beam_one_equals_greedy_with_attention_and_batched_equals_single():
    m = make(seed=4)
    feats = torch.randn(3, K, C)
    g, _, ga = greedy(m, feats, max_length=6, return_attention=True)
    b, _, ba = beam_search(m, feats, beam_size=1, max_length=6, return_attention=True)
    torch.testing.assert_close(ba[:, 0, : g.size(1)], ga)
    batched = decode(m, feats, DecodeOptions(beam_size=3, max_length=6, n=2), return_attention=True)
    for i in range(3):
        single = decode(m, feats[i : i + 1], DecodeOptions(beam_size=3, max_length=6, n=2), return_attention=True)
        n = single[0].size(2)
        assert torch.equal(batched[0][i, :, :n], single[0][0])
        torch.testing.assert_close(batched[2][i, :, :n], single[2][0])


def test_no_attention_to_return_is_an_error():
    from imcap.models import ShowTell

    with pytest.raises(ValueError, match="no attention"):
        greedy(ShowTell(10, 4, 4).eval(), torch.randn(2, 4), max_length=3, return_attention=True)
