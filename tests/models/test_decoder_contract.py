"""The decoder contract (models/decoder.py), checked for every decoder: log-probabilities, teacher forcing equal
to stepping, select_state, and every decoding strategy (greedy, beam, sampling) on the contract alone."""
import pytest
import torch

from imcap.data.vocab import END, NULL, START
from imcap.decoding import DecodeOptions, beam_search, decode, greedy, sample
from imcap.models import CoAttention, Decoder, ShowAttendTell, ShowTell, TransformerCaptioner, UpDown
from imcap.models.decoder import repeat_features, select_rows
from imcap.models.scheduled import unroll

V, C, K = 20, 7, 9
DECODERS = ("show_tell", "show_attend_tell", "coatt", "updown", "transformer")


def make(name: str, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    if name == "show_tell":
        m: Decoder = ShowTell(V, C, 10, num_layers=2, dropout=0.0)
    elif name == "show_attend_tell":
        m = ShowAttendTell(V, C, 8, 10, dropout=0.0)
    elif name == "coatt":
        m = CoAttention(V, C, condition_size=6, input_encoding_size=8, rnn_size=10, dropout=0.0)
    elif name == "updown":
        m = UpDown(V, C, 8, 10, dropout=0.0)
    else:
        m = TransformerCaptioner(V, C, d_model=16, num_heads=2, ff_size=24, num_layers=2, dropout=0.0)
    with torch.no_grad():
        m.logit.weight.mul_(4.0)  # peaky, state-dependent distributions
        m.logit.bias[END] += 0.5  # captions of varied lengths
    return m.eval()


def features(m: Decoder, batch: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    if m.feature_kind == "pooled":
        return torch.randn(batch, C, generator=g)
    regions = torch.randn(batch, K, C, generator=g)
    return (regions, torch.randint(2, 6, (batch, 2), generator=g)) if m.conditioned else regions


def rows(feats, index):
    return tuple(f[index] for f in feats) if isinstance(feats, tuple) else feats[index]


def test_select_rows_follows_each_parts_batch_dim():
    h = torch.arange(2 * 3 * 4).view(2, 3, 4)  # (L, B, H): batch dim 1
    v = torch.arange(3 * 5).view(3, 5)  # (B, K): batch dim 0
    index = torch.tensor([2, 2, 0])
    state = ((h, h + 1), v, None)
    out = select_rows(state, index, (1, 0, 0))
    assert torch.equal(out[0][0], h[:, index]) and torch.equal(out[0][1], (h + 1)[:, index])
    assert torch.equal(out[1], v[index]) and out[2] is None
    with pytest.raises(ValueError, match="3 parts"):
        select_rows(state, index, (1, 0))


@pytest.mark.parametrize("name", DECODERS)
@torch.no_grad()
def test_teacher_forcing_equals_stepping_and_gives_log_probabilities(name):
    m = make(name)
    feats = features(m, 3)
    tokens = torch.randint(4, V + 1, (3, 6))
    tokens[:, 0] = START
    fused, alphas = m.forward_with_attention(feats, tokens)
    assert fused.shape == (3, 6, V + 1)
    torch.testing.assert_close(fused.exp().sum(2), torch.ones(3, 6))
    torch.testing.assert_close(m(feats, tokens), fused)
    stepped, stepped_alphas = unroll(m, m.start(feats), tokens)
    torch.testing.assert_close(fused, stepped, atol=1e-5, rtol=1e-4)
    assert (alphas is None) == (stepped_alphas is None) == (not m.has_attention)
    if m.has_attention:
        assert alphas.shape == (3, 6, K)
        torch.testing.assert_close(alphas, stepped_alphas, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(alphas.sum(2), torch.ones(3, 6))


@pytest.mark.parametrize("name", DECODERS)
def test_repeats_share_the_images_work_and_equal_repeated_features(name):
    """forward_with_attention(feats, tokens, repeats=n) runs init_state once per image; it must equal teacher forcing
    on features repeated n times, in values and in the gradient that reaches the features (which the CNN trains on)."""
    m = make(name).train()  # dropout is 0: train mode only checks that nothing depends on eval
    feats = features(m, 3)
    first = feats[0] if isinstance(feats, tuple) else feats
    first.requires_grad_(True)
    tokens = torch.randint(4, V + 1, (3 * 4, 6))
    tokens[:, 0] = START
    shared, shared_alphas = m.forward_with_attention(feats, tokens, repeats=4)
    (grad_shared,) = torch.autograd.grad(shared[..., 1:].sum(), first)
    repeated, repeated_alphas = m.forward_with_attention(repeat_features(feats, 4), tokens)
    (grad_repeated,) = torch.autograd.grad(repeated[..., 1:].sum(), first)
    torch.testing.assert_close(shared, repeated, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad_shared, grad_repeated, atol=1e-5, rtol=1e-4)
    if m.has_attention:
        torch.testing.assert_close(shared_alphas, repeated_alphas, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        stepped, _ = unroll(m, m.start(feats, 4), tokens)
    torch.testing.assert_close(stepped, shared.detach(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", DECODERS)
@torch.no_grad()
def test_select_state_reorders_the_batch(name):
    m = make(name)
    feats = features(m, 4)
    index = torch.tensor([3, 1, 1, 0, 2])
    tokens = torch.tensor([START, 5, 6, 7])
    state = m.init_state(feats)
    _, state, _ = m.step(tokens, state)  # a state with one word decoded (a grown transformer cache)
    lp, _, alpha = m.step(torch.full((5,), 8), m.select_state(state, index))
    ref_state = m.init_state(rows(feats, index))
    _, ref_state, _ = m.step(tokens[index], ref_state)
    ref_lp, _, ref_alpha = m.step(torch.full((5,), 8), ref_state)
    torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=1e-4)
    if m.has_attention:
        torch.testing.assert_close(alpha, ref_alpha, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", DECODERS)
@torch.no_grad()
def test_beam_one_equals_greedy(name):
    m = make(name, seed=2)
    feats = features(m, 5)
    attention = m.has_attention
    g = greedy(m, feats, max_length=7, return_attention=attention)
    b = beam_search(m, feats, beam_size=1, max_length=7, return_attention=attention)
    assert torch.equal(b[0][:, 0, : g[0].size(1)], g[0])
    assert (b[0][:, 0, g[0].size(1):] == NULL).all()
    torch.testing.assert_close(b[1][:, 0], g[1].sum(1))
    if attention:
        torch.testing.assert_close(b[2][:, 0, : g[0].size(1)], g[2])


@pytest.mark.parametrize("name", DECODERS)
@torch.no_grad()
def test_batched_beam_equals_per_image_beam(name):
    m = make(name, seed=3)
    feats = features(m, 4)
    opts = DecodeOptions(beam_size=3, max_length=7, n=2, length_penalty=0.5)
    attention = m.has_attention
    batched = decode(m, feats, opts, return_attention=attention)
    for i in range(4):
        single = decode(m, rows(feats, slice(i, i + 1)), opts, return_attention=attention)
        n = single[0].size(2)
        assert torch.equal(batched[0][i, :, :n], single[0][0])
        assert (batched[0][i, :, n:] == NULL).all()
        torch.testing.assert_close(batched[1][i], single[1][0])
        if attention:
            torch.testing.assert_close(batched[2][i, :, :n], single[2][0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", DECODERS)
@torch.no_grad()
def test_beam_scores_are_the_sequence_log_probabilities(name):
    m = make(name, seed=4)
    feats = features(m, 3)
    seqs, scores = beam_search(m, feats, beam_size=3, max_length=7)
    tokens = torch.cat([torch.full((3, 1), START), seqs[:, 0, :-1]], dim=1).clamp(min=1)  # <NULL> inputs after <END> are ignored
    logprobs = m(feats, tokens).gather(2, seqs[:, 0].unsqueeze(2)).squeeze(2)  # (3, L)
    torch.testing.assert_close((logprobs * (seqs[:, 0] != NULL)).sum(1), scores[:, 0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", DECODERS)
@torch.no_grad()
def test_sampling_options(name):
    m = make(name, seed=5)
    feats = features(m, 6)
    g = greedy(m, feats, max_length=6)[0]
    for kw in ({"top_k": 1}, {"top_p": 1e-6}, {"temperature": 1e-4}):  # each leaves only the arg-max word
        s = sample(m, feats, max_length=6, generator=torch.Generator().manual_seed(0), **kw)[0]
        assert torch.equal(s, g), kw
    one = sample(m, feats, max_length=6, generator=torch.Generator().manual_seed(1))
    two = sample(m, feats, max_length=6, generator=torch.Generator().manual_seed(1))
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])
    many = decode(m, features(m, 1), DecodeOptions(sample=True, n=30, max_length=6, temperature=3.0), generator=torch.Generator().manual_seed(2))[0]
    assert len({tuple(r) for r in many[0].tolist()}) > 5  # a hot temperature gives varied captions
    for row in many[0].tolist():
        body = row[: row.index(END)] if END in row else row
        assert START not in body and NULL not in body


@pytest.mark.parametrize("name", DECODERS)
def test_scheduled_sampling_feeds_samples_and_trains(name):
    m = make(name).train()
    feats = features(m, 8)
    tokens = torch.full((8, 5), 9)
    tokens[:, 0] = START
    torch.manual_seed(0)
    out, alphas = m.forward_with_attention(feats, tokens, ss_prob=1.0)
    assert out.shape == (8, 5, V + 1) and (alphas is not None) == m.has_attention
    with torch.no_grad():
        assert not torch.allclose(out, m(feats, tokens))  # the sampled inputs differ from the given ones
    out.sum().backward()
    assert m.logit.weight.grad is not None and m.embed.weight.grad.abs().sum() > 0
