"""Additive (Bahdanau) attention: scores and the weighted sum, with backward passes written for the step loop.

    scores_k = w . tanh(keys_k + query) + b      keys (B, K, A), query (B, A), w (A,), b (1,) -> (B, K)
    context  = sum_k alpha_k v_k                 alpha (B, K), values (B, K, E) -> (B, E)

Show-Attend-Tell and Up-Down compute both at every word, for every caption, over all K features. Written
with autograd's generic pieces (Linear(A, 1), bmm), a CPU training step spends most of its time on the
(B, K, A) tensor: a separate broadcast add and tanh, and backward passes that form outer products as
(B*K x 1) @ (1 x A) matrix products. Here each function keeps one (B, K, A) buffer, works in place, and
computes its gradients with broadcast multiplications. tanh is computed as 2 * sigmoid(2x) - 1 (equal to
1e-7 in float32), because torch's CPU tanh is several times slower than its sigmoid
(`python benchmarks/bench_attention.py` measures both functions against the plain autograd version).
The results equal `w . tanh(keys + query) + b` and `bmm(alpha, values)`; tests check values and gradients
(float64 gradcheck). Without gradients (decoding) and under a tracer (ONNX export) they are exactly those
plain formulas.
"""
from __future__ import annotations

import torch


def _tanh_(x: torch.Tensor) -> torch.Tensor:
    """tanh(x), in place: 2 * sigmoid(2x) - 1."""
    return x.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


class _AdditiveScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, keys: torch.Tensor, query: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        hidden = _tanh_(keys + query.unsqueeze(1))  # (B, K, A): the one buffer
        ctx.save_for_backward(hidden, weight)
        return torch.matmul(hidden, weight) + bias  # (B, K)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        hidden, weight = ctx.saved_tensors  # (B, K, A), (A,)
        need_keys, need_query, need_weight, need_bias = ctx.needs_input_grad
        grad_weight = torch.matmul(hidden.flatten(0, 1).t(), grad.flatten()) if need_weight else None  # (A,)
        grad_bias = grad.sum().reshape(1) if need_bias else None
        grad_keys = grad_query = None
        if need_keys or need_query:
            pre = torch.mul(hidden, hidden).neg_().add_(1.0).mul_(weight).mul_(grad.unsqueeze(2))  # d scores / d (keys + query): (B, K, A)
            grad_query = pre.sum(dim=1) if need_query else None  # (B, A)
            grad_keys = pre if need_keys else None
        return grad_keys, grad_query, grad_weight, grad_bias


class _WeightedSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, alpha: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(alpha, values)
        return torch.bmm(alpha.unsqueeze(1), values).squeeze(1)  # (B, E)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        alpha, values = ctx.saved_tensors  # (B, K), (B, K, E)
        need_alpha, need_values = ctx.needs_input_grad
        grad_alpha = torch.bmm(values, grad.unsqueeze(2)).squeeze(2) if need_alpha else None  # (B, K)
        grad_values = alpha.unsqueeze(2) * grad.unsqueeze(1) if need_values else None  # (B, K, E)
        return grad_alpha, grad_values


def _plain(*tensors: torch.Tensor) -> bool:
    """Whether to use plain torch ops: no gradient is needed, or a tracer (ONNX export, torch.jit) records the graph."""
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return True
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def additive_scores(keys: torch.Tensor, query: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Keys (B, K, A), query (B, A), weight (A,), bias (1,) -> scores w . tanh(keys_k + query) + b (B, K)."""
    if _plain(keys, query, weight, bias):
        return torch.matmul(torch.tanh(keys + query.unsqueeze(1)), weight) + bias
    return _AdditiveScores.apply(keys, query, weight, bias)


def weighted_sum(alpha: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Weights (B, K) and values (B, K, E) -> sum_k alpha_k values_k (B, E)."""
    if _plain(alpha, values):
        return torch.bmm(alpha.unsqueeze(1), values).squeeze(1)
    return _WeightedSum.apply(alpha, values)
