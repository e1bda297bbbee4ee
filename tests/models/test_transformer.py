"""The Transformer captioner: the key/value cache, the causal mask, box encodings, attention maps, a float64 gradcheck."""
import pytest
import torch

from imcap.data.vocab import START
from imcap.decoding import DecodeOptions, decode, greedy
from imcap.errors import ImcapError
from imcap.models import ModelArgs, TransformerCaptioner, build_model
from imcap.models.transformer import grid_boxes

V, C, K = 20, 7, 9


def make(position="none", seed=0, layers=2, dtype=torch.float32) -> TransformerCaptioner:
    torch.manual_seed(seed)
    m = TransformerCaptioner(V, C + (4 if position == "boxes" else 0), d_model=16, num_heads=4, ff_size=24, num_layers=layers, dropout=0.0, position_encoding=position)
    return m.to(dtype).eval()


@pytest.mark.parametrize("position", ["none", "grid", "boxes"])
@torch.no_grad()
def test_cached_steps_equal_rerunning_the_prefix(position):
    m = make(position)
    feats = torch.rand(4, K, C + (4 if position == "boxes" else 0))
    tokens = torch.randint(3, V + 1, (4, 10))
    tokens[:, 0] = START
    cached = m.init_state(feats)
    m.use_cache = False
    full = m.init_state(feats)  # (memory, the prefix ids so far)
    for t in range(tokens.size(1)):
        m.use_cache = True
        lp, cached, alpha = m.step(tokens[:, t], cached)
        m.use_cache = False
        ref_lp, full, ref_alpha = m.step(tokens[:, t], full)
        torch.testing.assert_close(lp, ref_lp, atol=1e-5, rtol=0)
        torch.testing.assert_close(alpha, ref_alpha, atol=1e-5, rtol=0)
    keys = cached[1][0][0]
    assert keys.shape == (4, 4, 10, 4)  # (B, heads, words so far, d/heads): one new key per step
    m.use_cache = True
    fused, alphas = m.forward_with_attention(feats, tokens)  # one masked pass over all words
    torch.testing.assert_close(fused[:, -1], lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(alphas[:, -1], alpha, atol=1e-5, rtol=0)


@torch.no_grad()
def test_beam_search_with_the_cache_equals_beam_search_without():
    m = make(seed=1)
    feats = torch.randn(5, K, C)
    opts = DecodeOptions(beam_size=3, max_length=12, n=3)
    fast = decode(m, feats, opts, return_attention=True)
    m.use_cache = False
    slow = decode(m, feats, opts, return_attention=True)
    assert torch.equal(fast[0], slow[0])
    torch.testing.assert_close(fast[1], slow[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(fast[2], slow[2], atol=1e-5, rtol=0)


@torch.no_grad()
def test_the_decoder_is_causal():
    m = make(seed=2)
    feats = torch.randn(2, K, C)
    tokens = torch.randint(3, V + 1, (2, 6))
    changed = tokens.clone()
    changed[:, 4:] = (changed[:, 4:] % V) + 1
    a, b = m(feats, tokens), m(feats, changed)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


@torch.no_grad()
def test_attention_maps_are_the_last_layers_cross_attention_averaged_over_heads():
    m = make(seed=3)
    feats = torch.randn(2, K, C)
    tokens = torch.randint(3, V + 1, (2, 5))
    seen = {}
    last = m.layers[-1].cross_attn
    last.register_forward_hook(lambda mod, args, out: seen.update(query=args[0], keys=args[1]))
    _, alphas = m.forward_with_attention(feats, tokens)
    q = last._split(last.query(seen["query"]))  # (B, heads, T, dh)
    weights = (q @ seen["keys"].transpose(-2, -1) / q.size(-1) ** 0.5).softmax(-1)  # (B, heads, T, K)
    torch.testing.assert_close(alphas, weights.mean(1))
    perm = torch.randperm(K)  # with no position encoding the regions are a set: permuting them permutes the weights
    _, permuted = m.forward_with_attention(feats[:, perm], tokens)
    torch.testing.assert_close(permuted, alphas[:, :, perm], atol=1e-6, rtol=1e-5)


def test_grid_and_box_encodings():
    assert grid_boxes(4, torch.zeros(1)).tolist() == [[0, 0, 0.5, 0.5], [0.5, 0, 1, 0.5], [0, 0.5, 0.5, 1], [0.5, 0.5, 1, 1]]
    grid = make("grid")
    with pytest.raises(ImcapError, match="square grid"):
        grid(torch.randn(1, 8, C), torch.tensor([[START]]))
    boxes = make("boxes")
    assert boxes.feat_proj[0].in_features == C  # the last 4 columns are the box, not features
    feats = torch.rand(1, K, C + 4)
    moved = feats.clone()
    moved[0, 0, -4:] = torch.tensor([0.0, 0.0, 0.1, 0.1])
    with torch.no_grad():
        assert not torch.allclose(boxes(feats, torch.tensor([[START]])), boxes(moved, torch.tensor([[START]])))
    with pytest.raises(ImcapError, match="must divide"):
        TransformerCaptioner(V, C, d_model=10, num_heads=3)


def test_auto_position_encoding_is_grid_with_a_cnn_and_none_on_regions():
    args = dict(model="transformer", vocab_size=V, cnn_width=4, d_model=16, num_heads=2, ff_size=16)
    assert build_model(ModelArgs(**args)).decoder.position_encoding == "grid"
    assert build_model(ModelArgs(**args, cnn="none", feature_dim=12)).decoder.position_encoding == "none"
    assert build_model(ModelArgs(**args, cnn="none", feature_dim=12, position_encoding="boxes")).decoder.feat_proj[0].in_features == 8


def test_float64_gradcheck_of_a_cached_step():
    m = make("grid", layers=2, dtype=torch.float64)
    feats = torch.randn(2, 4, C, dtype=torch.float64, requires_grad=True)
    words = torch.tensor([[START, 5], [START, 7]])

    def third_step(f):
        state = m.init_state(f)
        for t in range(2):
            _, state, _ = m.step(words[:, t], state)
        logprobs, state, alpha = m.step(torch.tensor([9, 4]), state)
        return logprobs, alpha, state[1][-1][0]  # log-probabilities, attention, the last layer's cached keys

    assert torch.autograd.gradcheck(third_step, (feats,), eps=1e-6, atol=1e-5)
    cache = torch.randn(2, 4, 2, 4, dtype=torch.float64, requires_grad=True)  # (B, heads, t, dh): gradients reach a cached key
    memory = tuple((k.detach(), v.detach()) for k, v in m._memory(feats))

    def step_from_cache(keys):
        words_kv = tuple((keys, keys * 0.5) for _ in m.layers)
        return m.step(torch.tensor([9, 4]), (memory, words_kv))[0]

    assert torch.autograd.gradcheck(step_from_cache, (cache,), eps=1e-6, atol=1e-5)


@torch.no_grad()
def test_greedy_decoding_runs_one_token_per_step():
    m = make(seed=4)
    calls = []
    first = m.layers[0]
    first.register_forward_hook(lambda mod, args, out: calls.append(args[0].size(1)))
    greedy(m, torch.randn(3, K, C), max_length=8)
    assert calls and set(calls) == {1}  # every step ran one token through the layers
