"""Training losses on decoder outputs: the caption cross-entropy (with label smoothing) and the attention regulariser.

Every decoder returns log-probabilities (models/decoder.py), so the losses take log-probabilities.
"""
from __future__ import annotations

import torch

from imcap.data.vocab import NULL


def caption_loss(logprobs: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean cross-entropy over real target tokens (words and <END>), as neuraltalk2's criterion.

    logprobs (B, T, V+1), targets (B, T) with <NULL> after <END> (ignored). With `label_smoothing` eps the
    target distribution is (1 - eps) on the target plus eps spread uniformly over all V+1 ids, as
    torch.nn.functional.cross_entropy(label_smoothing=eps) does.
    """
    lp = logprobs.flatten(0, 1).float()  # (N, V+1)
    flat = targets.flatten()  # (N,)
    nll = torch.nn.functional.nll_loss(lp, flat, ignore_index=NULL)
    if label_smoothing <= 0:
        return nll
    real = flat != NULL  # (N,)
    uniform = -lp[real].mean(dim=1).sum() / real.sum().clamp(min=1)  # mean over ids of -log p, averaged over real tokens
    return (1.0 - label_smoothing) * nll + label_smoothing * uniform


def attention_penalty(alphas: torch.Tensor | None, targets: torch.Tensor, alpha_c: float) -> torch.Tensor | float:
    """Show-Attend-Tell's doubly stochastic regulariser: alpha_c * mean over b, k of (1 - sum_t alpha_btk)^2.

    alphas (B, T, K) from `forward_with_attention`; only steps whose target (B, T) is a real token (not
    <NULL>) count. Averaged over the K regions so that alpha_c means the same for a 7x7 grid and 36 regions.
    0.0 when off or when the decoder has no attention (alphas None).
    """
    if alpha_c <= 0 or alphas is None:
        return 0.0
    mask = (targets != NULL).to(alphas.dtype).unsqueeze(2)  # (B, T, 1)
    total = (alphas * mask).sum(dim=1)  # (B, K)
    return alpha_c * ((1.0 - total) ** 2).mean()
