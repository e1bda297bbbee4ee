"""The decoder contract: the base class every caption decoder implements and `imcap.decoding` drives.

    state = decoder.init_state(feats)                     after reading the image, before <START>
    state = decoder.start(feats, repeats)                 the same, once per image, each row repeated (B*repeats)
    logprobs, state, alpha = decoder.step(tokens, state)  tokens (B,) -> log p(next word) (B, V+1),
                                                          alpha (B, K) attention weights or None
    state = decoder.select_state(state, index)            rows `index` (N,) of the batch (beam search)
    logprobs = decoder(feats, tokens)                     teacher forcing: tokens (B, T) -> (B, T, V+1)
    logprobs, alphas = decoder.forward_with_attention(feats, tokens, ss_prob, repeats)   alphas (B, T, K) or None

A subclass implements `init_state` and `step`; teacher forcing then steps through the tokens, unless it
overrides `teacher_force` with a faster pass from the initial state that gives the same numbers (one
fused RNN call, one masked transformer pass, or embeddings and output layer applied once over all
steps). Scheduled sampling (`ss_prob` > 0) always steps, feeding back the model's own samples
(models/scheduled.py).

Several captions of one image (`repeats`: 5 references per image in training, k samples in SCST) share
the image's work: `start` runs `init_state` once per image (feature projections, the transformer's
encoder and its memory keys/values) and then repeats each row of the state with `select_state`.

Every output is a log-probability (log-softmax over the V+1 ids, <NULL> included). What a decoder reads
and returns is declared on the class: `feature_kind` ("pooled" (B, E) image embeddings or "spatial"
(B, K, C) grid cells / regions), `has_attention` (step and forward return attention weights over the K
features), `conditioned` (the features are a tuple (regions, condition ids), as the IVQA decoder's).

States are a tensor, None, or a (nested) tuple of states. `state_batch_dims` says where each part keeps
the batch: it mirrors the state's tuple structure, and an int stands for a whole sub-tree. Recurrent
states follow torch's RNN layout (num_layers, B, H), batch dim 1; features and caches are (B, ...),
batch dim 0. ShowAttendTell's state ((h, c), v, v_att) declares (1, 0, 0); the transformer's (all
caches batch-first) declares 0. One `select_state` serves every decoder.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from imcap.models.scheduled import unroll

Features = torch.Tensor | tuple[torch.Tensor, ...]  # (B, E) pooled, (B, K, C) regions, or a tuple such as (regions, condition ids)
State = torch.Tensor | None | tuple["State", ...]
BatchDims = int | tuple["BatchDims", ...]
StepOutput = tuple[torch.Tensor, State, torch.Tensor | None]


def feature_batch(feats: Features) -> tuple[int, torch.device]:
    """Batch size and device of decoder features: a tensor (B, ...) or a tuple of them (e.g. regions and a condition)."""
    first = feats[0] if isinstance(feats, tuple) else feats
    return first.size(0), first.device


def repeat_features(feats: Features, n: int) -> Features:
    """Repeat every image's features `n` times along the batch (B -> B*n), tuples part by part."""
    if isinstance(feats, tuple):
        return tuple(f.repeat_interleave(n, dim=0) for f in feats)
    return feats.repeat_interleave(n, dim=0)


def select_rows(state: State, index: torch.Tensor, dims: BatchDims) -> State:
    """Rows `index` (N,) of every tensor of `state`, taken on the batch dim `dims` gives for it (see the module doc)."""
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        if not isinstance(dims, int):
            raise TypeError(f"a state tensor needs an int batch dim, got {dims!r}")
        return state.index_select(dims, index)
    parts = dims if isinstance(dims, tuple) else (dims,) * len(state)
    if len(parts) != len(state):
        raise ValueError(f"state has {len(state)} parts but state_batch_dims describes {len(parts)}")
    return tuple(select_rows(s, index, d) for s, d in zip(state, parts))


class Decoder(nn.Module, metaclass=ABCMeta):
    """A caption decoder over `vocab_size` words (ids 1..V; 0 is <NULL>); outputs are log-probabilities over V+1 ids."""

    feature_kind: ClassVar[str] = "pooled"  # "pooled": (B, E) embeddings; "spatial": (B, K, C) grid cells or regions
    has_attention: ClassVar[bool] = False  # step/forward_with_attention return weights over the K features
    conditioned: ClassVar[bool] = False  # features are (regions (B, K, C), condition ids (B, Lc))
    state_batch_dims: ClassVar[BatchDims] = 0  # where each state part keeps the batch (module doc)

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    @abstractmethod
    def init_state(self, feats: Features) -> State:
        """Features (B, ...) -> the state before <START>."""

    @abstractmethod
    def step(self, tokens: torch.Tensor, state: State) -> StepOutput:
        """Tokens (B,) -> log-probabilities (B, V+1), the next state, attention weights (B, K) or None."""

    def start(self, feats: Features, repeats: int = 1) -> State:
        """Features (B, ...) -> the state before <START> for `repeats` captions per image (batch B*repeats, image-major).

        `init_state` runs once per image; its rows are then repeated, so the captions share the image's work.
        """
        state = self.init_state(feats)
        if repeats == 1:
            return state
        batch, device = feature_batch(feats)
        return self.select_state(state, torch.arange(batch, device=device).repeat_interleave(repeats))

    def teacher_force(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """From the state before <START> (batch B): tokens (B, T) starting with <START> -> log-probabilities (B, T, V+1), attention (B, T, K) or None.

        This default steps once per token; decoders override it with a faster pass that gives the same numbers.
        """
        return unroll(self, state, tokens)

    def forward_with_attention(self, feats: Features, tokens: torch.Tensor, ss_prob: float = 0.0, repeats: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Teacher forcing (scheduled sampling with probability `ss_prob` > 0) of `repeats` captions per image:
        features (B, ...) and tokens (B*repeats, T), image-major -> log-probabilities (B*repeats, T, V+1), attention (B*repeats, T, K) or None."""
        state = self.start(feats, repeats)
        if ss_prob > 0:
            return unroll(self, state, tokens, ss_prob)
        return self.teacher_force(state, tokens)

    def forward(self, feats: Features, tokens: torch.Tensor, repeats: int = 1) -> torch.Tensor:
        """Teacher forcing: features (B, ...) and tokens (B*repeats, T) starting with <START> -> log-probabilities (B*repeats, T, V+1)."""
        return self.forward_with_attention(feats, tokens, repeats=repeats)[0]

    def select_state(self, state: State, index: torch.Tensor) -> State:
        """Keep (reorder or repeat) batch rows `index` (N,) of a state -> a state of batch N."""
        return select_rows(state, index, self.state_batch_dims)
