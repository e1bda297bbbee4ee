"""Step-by-step teacher forcing with scheduled sampling (Bengio et al. 2015), for any decoder.

`unroll` drives a decoder's step interface (init_state / step, see models/decoder.py) over a whole
target sequence. With `ss_prob` > 0 each input token after <START> is, with that probability, replaced
by a token sampled from the model's own prediction at the previous step. Attention decoders also give
back their per-step weights (B, T, K), for the doubly stochastic regulariser.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from imcap.data.vocab import NULL, START

if TYPE_CHECKING:
    from imcap.models.decoder import Decoder, State


def ss_probability(iteration: int, start: int, every: int, increase: float, max_prob: float) -> float:
    """Scheduled-sampling probability at `iteration`: +`increase` every `every` iterations after `start` (-1: off)."""
    if start < 0 or iteration < start:
        return 0.0
    return min(increase * ((iteration - start) // max(every, 1)), max_prob)


def sample_inputs(logprobs: torch.Tensor, truth: torch.Tensor, prob: float) -> torch.Tensor:
    """Replace each of `truth` (B,) with probability `prob` by a sample of `logprobs` (B, V+1), never <NULL>/<START>."""
    use = torch.rand(truth.shape, device=truth.device) < prob  # (B,)
    if not bool(use.any()):
        return truth
    logits = logprobs.detach().clone()
    logits[:, NULL] = float("-inf")
    logits[:, START] = float("-inf")
    sampled = torch.multinomial(logits.softmax(dim=1), 1).squeeze(1)  # (B,)
    return torch.where(use, sampled, truth)


def unroll(decoder: Decoder, state: State, tokens: torch.Tensor, ss_prob: float = 0.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """From the state before <START> (`decoder.start(feats)`), feed `tokens` (B, T) (starting with <START>) one step at a time
    -> log-probabilities (B, T, V+1), attention (B, T, K) or None."""
    outs: list[torch.Tensor] = []
    alphas: list[torch.Tensor] = []
    for t in range(tokens.size(1)):
        tok = tokens[:, t]  # (B,)
        if t > 0 and ss_prob > 0:
            tok = sample_inputs(outs[-1], tok, ss_prob)
        logprobs, state, alpha = decoder.step(tok, state)  # (B, V+1), state, (B, K) or None
        outs.append(logprobs)
        if alpha is not None:
            alphas.append(alpha)
    return torch.stack(outs, 1), (torch.stack(alphas, 1) if alphas else None)
