"""Decoding for every decoder, through the contract of models/decoder.py (init_state, step, select_state) only.

greedy, sampling (temperature, top-k, top-p) and beam search batched over the whole batch.
All return token ids padded with <NULL> after <END>; with `return_attention=True` they also return the
per-word attention weights that `step` gives for decoders with `has_attention`.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from imcap.config import DecodingOptions
from imcap.data.vocab import END, NULL, START
from imcap.models.decoder import Decoder, Features, feature_batch, repeat_features

__all__ = ["DecodeOptions", "Features", "beam_search", "decode", "decode_steps", "feature_batch", "greedy", "repeat_features", "sample"]


DecodeOptions = DecodingOptions  # how to turn a model's step distribution into captions; defined (and validated) in config.py


def _mask_special(logprobs: torch.Tensor, last: bool = False) -> torch.Tensor:
    """Forbid <NULL> and <START>, which are never valid outputs; at the `last` step only <END> is left."""
    if last:
        end_only = torch.full_like(logprobs, float("-inf"))
        end_only[:, END] = logprobs[:, END]
        return end_only
    logprobs = logprobs.clone()
    logprobs[:, NULL] = float("-inf")
    logprobs[:, START] = float("-inf")
    return logprobs


def _check_attention(decoder: Decoder) -> None:
    if not decoder.has_attention:
        raise ValueError(f"{decoder.__class__.__name__} has no attention weights to return")


def decode_steps(decoder: Decoder, feats: Features, max_length: int, choose: Callable[[torch.Tensor], torch.Tensor], attention: bool = False, repeats: int = 1) -> tuple[torch.Tensor, ...]:
    """Feed back `choose(logprobs)` until every row said <END> (forced after `max_length` words), `repeats` rows per image.

    Returns ids (N, L), log-probabilities (N, L) and, with `attention`, the weights (N, L, K) of each step;
    N = B * repeats, image-major (row b*repeats + j is caption j of image b).
    """
    if attention:
        _check_attention(decoder)
    batch, device = feature_batch(feats)
    batch *= repeats
    state = decoder.start(feats, repeats)
    tokens = torch.full((batch,), START, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    seqs, logps, alphas = [], [], []
    for t in range(max_length + 1):  # at most max_length words, then <END>
        logprobs, state, alpha = decoder.step(tokens, state)  # (B, V+1), state, (B, K) or None
        if attention:
            alphas.append(alpha.masked_fill(done.unsqueeze(1), 0.0))  # (B, K)
        logprobs = _mask_special(logprobs, last=t == max_length)  # (B, V+1)
        tokens = choose(logprobs).masked_fill(done, NULL)  # (B,)
        logps.append(logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1).masked_fill(done, 0.0))
        seqs.append(tokens)
        done = done | (tokens == END)
        if bool(done.all()):
            break
    out = (torch.stack(seqs, 1), torch.stack(logps, 1))  # (B, L), (B, L)
    return (*out, torch.stack(alphas, 1)) if attention else out


def greedy(decoder: Decoder, feats: Features, max_length: int = 16, return_attention: bool = False, repeats: int = 1) -> tuple[torch.Tensor, ...]:
    """Return the arg-max caption ids (N, L), their log-probabilities (N, L) [and attention weights (N, L, K)]; N = B * repeats."""
    return decode_steps(decoder, feats, max_length, lambda lp: lp.argmax(dim=1), return_attention, repeats)


def _filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.size(1)), dim=1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=1, descending=True)
        cum = sorted_logits.softmax(dim=1).cumsum(dim=1)
        drop_sorted = cum - sorted_logits.softmax(dim=1) >= top_p  # keep the smallest set reaching top_p
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(decoder: Decoder, feats: Features, max_length: int = 16, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator: torch.Generator | None = None,
           return_attention: bool = False, repeats: int = 1) -> tuple[torch.Tensor, ...]:
    """Sample `repeats` captions per image; returns ids (N, L), the model's log-probabilities of the sampled ids (N, L) [and attention (N, L, K)]; N = B * repeats, image-major."""

    def choose(logprobs: torch.Tensor) -> torch.Tensor:
        logits = _filter_top_k_top_p(logprobs.detach() / temperature, top_k, top_p)
        return torch.multinomial(logits.softmax(dim=1), 1, generator=generator).squeeze(1)

    return decode_steps(decoder, feats, max_length, choose, return_attention, repeats)


def beam_search(decoder: Decoder, feats: Features, beam_size: int = 3, max_length: int = 16, length_penalty: float = 0.0, n_best: int = 1, return_attention: bool = False) -> tuple[torch.Tensor, ...]:
    """Beam search over the whole batch at once; returns ids (B, n_best, L) and scores (B, n_best).

    Scores are summed log-probabilities, divided by ((5 + length) / 6) ** length_penalty when it is > 0.
    With `return_attention`, also the attention weights (B, n_best, L, K) that produced each kept word.
    """
    if return_attention:
        _check_attention(decoder)
    batch, device = feature_batch(feats)
    k = beam_size
    state = decoder.start(feats, k)  # each image's state repeated for its k beams
    tokens = torch.full((batch * k,), START, dtype=torch.long, device=device)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam at the start, so the k beams do not repeat each other
    seqs = torch.empty(batch, k, 0, dtype=torch.long, device=device)
    finished = torch.zeros(batch, k, dtype=torch.bool, device=device)
    offsets = (torch.arange(batch, device=device) * k).unsqueeze(1)  # (B, 1)
    alphas = None
    for t in range(max_length + 1):
        logprobs, state, alpha = decoder.step(tokens, state)  # (B*k, V+1), state, (B*k, K) or None
        if return_attention:
            alpha = alpha.view(batch, k, 1, -1)  # (B, k, 1, K)
            alphas = alpha if alphas is None else torch.cat([alphas, alpha], dim=2)  # (B, k, t+1, K): beam order before this step's reordering
        logprobs = _mask_special(logprobs, last=t == max_length).view(batch, k, -1)  # (B, k, V+1)
        vocab = logprobs.size(2)
        after_end = torch.full((vocab,), float("-inf"), device=device)
        after_end[NULL] = 0.0  # a finished beam only continues with free <NULL>
        logprobs = torch.where(finished.unsqueeze(2), after_end, logprobs)
        top_scores, top_idx = (scores.unsqueeze(2) + logprobs).view(batch, -1).topk(k, dim=1)  # (B, k)
        beam_idx, tokens2d = top_idx // vocab, top_idx % vocab
        seqs = torch.cat([seqs.gather(1, beam_idx.unsqueeze(2).expand(-1, -1, t)), tokens2d.unsqueeze(2)], dim=2)
        was_finished = finished.gather(1, beam_idx)  # (B, k)
        if alphas is not None:
            alphas = alphas.gather(1, beam_idx.view(batch, k, 1, 1).expand(-1, -1, *alphas.shape[2:]))  # follow the beams
            alphas[:, :, t] = alphas[:, :, t].masked_fill(was_finished.unsqueeze(2), 0.0)  # no attention for <NULL> after <END>
        finished = was_finished | (tokens2d == END)
        scores = top_scores
        state = decoder.select_state(state, (beam_idx + offsets).view(-1))
        tokens = tokens2d.view(-1)
        if bool(finished.all()):
            break
    if length_penalty > 0:
        lengths = (seqs != NULL).sum(dim=2).float()  # (B, k), <END> included
        scores = scores / ((5.0 + lengths) / 6.0) ** length_penalty
    order = scores.argsort(dim=1, descending=True)[:, :n_best]  # (B, n_best)
    out = (seqs.gather(1, order.unsqueeze(2).expand(-1, -1, seqs.size(2))), scores.gather(1, order))
    if alphas is None:
        return out
    return (*out, alphas.gather(1, order.view(batch, -1, 1, 1).expand(-1, -1, *alphas.shape[2:])))


@torch.no_grad()
def decode(decoder: Decoder, feats: Features, opts: DecodeOptions, generator: torch.Generator | None = None, return_attention: bool = False) -> tuple[torch.Tensor, ...]:
    """Return `opts.n` captions per image: ids (B, n, L) and scores (B, n) (summed log-probabilities).

    With `return_attention` (decoders with `has_attention`), also the attention weights (B, n, L, K) of every word.
    """
    if (opts.beam_size > 1 or opts.n > 1) and not opts.sample:  # n greedy copies would be identical
        return beam_search(decoder, feats, max(opts.beam_size, opts.n), opts.max_length, opts.length_penalty, n_best=opts.n, return_attention=return_attention)
    if opts.sample:
        out = sample(decoder, feats, opts.max_length, opts.temperature, opts.top_k, opts.top_p, generator, return_attention, repeats=opts.n)  # (B*n, L)
    else:
        out = greedy(decoder, feats, opts.max_length, return_attention, repeats=opts.n)
    batch = feature_batch(feats)[0]
    result = (out[0].view(batch, opts.n, -1), out[1].sum(dim=1).view(batch, opts.n))
    return (*result, out[2].view(batch, opts.n, *out[2].shape[1:])) if return_attention else result
