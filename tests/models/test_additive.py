"""Additive attention with hand-written backward passes (models/additive.py) equals the autograd formulas."""
import pytest
import torch

from imcap.models.additive import additive_scores, weighted_sum


def inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(3, 5, 4, generator=g, dtype=dtype)
    query = torch.randn(3, 4, generator=g, dtype=dtype)
    weight = torch.randn(4, generator=g, dtype=dtype)
    bias = torch.randn(1, generator=g, dtype=dtype)
    return [t.requires_grad_(True) for t in (keys, query, weight, bias)]


def test_additive_scores_equal_the_formula_with_gradients():
    keys, query, weight, bias = inputs()
    got = additive_scores(keys, query, weight, bias)  # (B, K)
    want = torch.tanh(keys + query.unsqueeze(1)) @ weight + bias
    torch.testing.assert_close(got, want)
    upstream = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, [keys, query, weight, bias], upstream), torch.autograd.grad(want, [keys, query, weight, bias], upstream)):
        torch.testing.assert_close(a, b)


def test_additive_scores_in_float32_within_tanh_precision():
    keys, query, weight, bias = inputs(torch.float32)
    want = torch.tanh(keys + query.unsqueeze(1)) @ weight + bias
    torch.testing.assert_close(additive_scores(keys, query, weight, bias), want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("needs", [(True, True, True, True), (False, True, False, False), (True, False, True, False)])
def test_gradcheck_additive_scores_and_weighted_sum(needs):
    keys, query, weight, bias = inputs()
    for t, need in zip((keys, query, weight, bias), needs):
        t.requires_grad_(need)
    assert torch.autograd.gradcheck(additive_scores, (keys, query, weight, bias))
    alpha = torch.randn(3, 5, dtype=torch.float64).softmax(1).requires_grad_(needs[0])
    values = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=needs[1])
    assert torch.autograd.gradcheck(weighted_sum, (alpha, values))
    torch.testing.assert_close(weighted_sum(alpha, values), torch.bmm(alpha.unsqueeze(1), values).squeeze(1))
