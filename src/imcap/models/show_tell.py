"""ShowTell: neuraltalk2's language model (image embedding at t=0, then <START>, then the words).

Every decoder in imcap implements the same step interface, which `imcap.decoding` drives:
    init_state(feats)            -> state after reading the image
    step(tokens, state)          -> (log-probabilities over the vocabulary, next state)
    select_state(state, index)   -> state of the batch rows `index` (beam search, sampling n)
A state is a tuple of tensors whose batch dimension is dim 1.
"""
from __future__ import annotations

import torch
from torch import nn

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
IMAGE_INPUTS = ("first", "every")

State = tuple[torch.Tensor, ...]


class ShowTell(nn.Module):
    """CNN-embedding-fed RNN language model; `vocab_size` counts tokens besides <NULL>.

    image_input="first" is neuraltalk2 (the image is the input at t=0, "init-inject");
    "every" concatenates the image embedding to every word embedding instead ("par-inject"),
    which learns much faster with a CNN trained from scratch.
    Parameters match neuraltalk2: ShowTell(9567, 512, 512) has 11,908,448 of them
    (lookup (V+1) x E, the LSTM's two weight matrices and biases, output H -> V+1).
    """

    def __init__(self, vocab_size: int, input_encoding_size: int = 512, rnn_size: int = 512, num_layers: int = 1, dropout: float = 0.5, rnn_type: str = "lstm", image_input: str = "first") -> None:
        super().__init__()
        if image_input not in IMAGE_INPUTS:
            raise ValueError(f"image_input must be one of {IMAGE_INPUTS}")
        self.vocab_size = vocab_size
        self.input_encoding_size = input_encoding_size
        self.rnn_size = rnn_size
        self.num_layers = num_layers
        self.rnn_type = rnn_type
        self.image_input = image_input
        rnn_input = input_encoding_size * (2 if image_input == "every" else 1)
        self.embed = nn.Embedding(vocab_size + 1, input_encoding_size)
        self.rnn = RNN_TYPES[rnn_type](rnn_input, rnn_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.logit = nn.Linear(rnn_size, vocab_size + 1)

    def _split(self, state: State | torch.Tensor | None) -> tuple[object, torch.Tensor | None]:
        """State tuple -> (what nn.LSTM/GRU/RNN expect, image feats (1, B, E) or None)."""
        if state is None or isinstance(state, torch.Tensor):
            return state, None
        n = 2 if self.rnn_type == "lstm" else 1
        core = tuple(state[:n]) if n == 2 else state[0]
        return core, (state[n] if len(state) > n else None)

    def _join(self, core, feats: torch.Tensor | None) -> State:
        parts = tuple(core) if isinstance(core, tuple) else (core,)
        return parts + ((feats,) if feats is not None else ())

    def init_state(self, feats: torch.Tensor) -> State:
        """Image embeddings (B, E) -> the state before <START>."""
        if self.image_input == "every":
            zeros = feats.new_zeros(self.num_layers, feats.size(0), self.rnn_size)
            core = (zeros, zeros.clone()) if self.rnn_type == "lstm" else zeros
            return self._join(core, feats.unsqueeze(0))
        _, core = self.rnn(feats.unsqueeze(1))  # read the image at t=0 from a zero state
        return self._join(core, None)

    def forward_tokens(self, tokens: torch.Tensor, state: State | torch.Tensor | None) -> tuple[torch.Tensor, State]:
        """Teacher forcing from `state`: tokens (B, T) -> logits (B, T, V+1), with one fused RNN call."""
        core, feats = self._split(state)
        x = self.embed(tokens)  # (B, T, E)
        if feats is not None:
            x = torch.cat([x, feats.squeeze(0).unsqueeze(1).expand(-1, x.size(1), -1)], dim=2)  # (B, T, 2E)
        out, core = self.rnn(x, core)  # (B, T, H)
        return self.logit(self.dropout(out)), self._join(core, feats)

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, E) and input tokens (B, T) starting with <START> -> logits (B, T, V+1)."""
        if self.image_input == "every":
            return self.forward_tokens(tokens, self.init_state(feats))[0]
        x = torch.cat([feats.unsqueeze(1), self.embed(tokens)], dim=1)  # (B, T+1, E)
        out, _ = self.rnn(x)  # (B, T+1, H); step 0 read the image and predicts nothing
        return self.logit(self.dropout(out[:, 1:]))  # (B, T, V+1)

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One decoding step: tokens (B,) -> log-probabilities (B, V+1) and the next state."""
        logits, state = self.forward_tokens(tokens.unsqueeze(1), state)
        return torch.log_softmax(logits.squeeze(1), dim=-1), state

    def select_state(self, state: State, index: torch.Tensor) -> State:
        """Keep (and reorder or repeat) batch rows `index` of a state."""
        return tuple(s.index_select(1, index) for s in state)
