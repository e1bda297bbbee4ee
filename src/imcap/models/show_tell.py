"""ShowTell: neuraltalk2's language model (image embedding at t=0, then <START>, then the words).

It implements the decoder contract of models/decoder.py. Its state is ((h, c), feats) for an LSTM or
((h,), feats) for a GRU/RNN: h and c (num_layers, B, H), feats the image embedding (B, E) that
image_input="every" feeds at every step (None for "first").
"""
from __future__ import annotations

import torch
from torch import nn

from imcap.models.decoder import Decoder, State, StepOutput

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
IMAGE_INPUTS = ("first", "every")


class ShowTell(Decoder):
    """CNN-embedding-fed RNN language model; `vocab_size` counts tokens besides <NULL>.

    image_input="first" is neuraltalk2 (the image is the input at t=0, "init-inject");
    "every" concatenates the image embedding to every word embedding instead ("par-inject"),
    which learns much faster with a CNN trained from scratch.
    Parameters match neuraltalk2: ShowTell(9567, 512, 512) has 11,908,448 of them
    (lookup (V+1) x E, the LSTM's two weight matrices and biases, output H -> V+1).
    """

    feature_kind = "pooled"
    state_batch_dims = (1, 0)  # ((h[, c]) (L, B, H) each, image embedding (B, E) or None)

    def __init__(self, vocab_size: int, input_encoding_size: int = 512, rnn_size: int = 512, num_layers: int = 1, dropout: float = 0.5, rnn_type: str = "lstm", image_input: str = "first") -> None:
        super().__init__(vocab_size)
        if image_input not in IMAGE_INPUTS:
            raise ValueError(f"image_input must be one of {IMAGE_INPUTS}")
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

    def _rnn_state(self, core: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """(h, c) or (h,) -> what nn.LSTM / nn.GRU / nn.RNN take."""
        return core if self.rnn_type == "lstm" else core[0]

    def _core(self, rnn_state: tuple[torch.Tensor, torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What nn.LSTM / nn.GRU / nn.RNN return -> (h, c) or (h,)."""
        return tuple(rnn_state) if isinstance(rnn_state, tuple) else (rnn_state,)

    def init_state(self, feats: torch.Tensor) -> State:
        """Image embeddings (B, E) -> the state before <START>."""
        if self.image_input == "every":
            zeros = feats.new_zeros(self.num_layers, feats.size(0), self.rnn_size)  # (L, B, H)
            core = (zeros, zeros.clone()) if self.rnn_type == "lstm" else (zeros,)
            return core, feats
        _, rnn_state = self.rnn(feats.unsqueeze(1))  # read the image at t=0 from a zero state
        return self._core(rnn_state), None

    def forward_tokens(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Teacher forcing from `state`: tokens (B, T) -> log-probabilities (B, T, V+1) and the state after them, with one fused RNN call."""
        core, feats = state
        x = self.embed(tokens)  # (B, T, E)
        if feats is not None:
            x = torch.cat([x, feats.unsqueeze(1).expand(-1, x.size(1), -1)], dim=2)  # (B, T, 2E)
        out, rnn_state = self.rnn(x, self._rnn_state(core))  # (B, T, H)
        return torch.log_softmax(self.logit(self.dropout(out)), dim=-1), (self._core(rnn_state), feats)

    def teacher_force(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        """From the state before <START> and input tokens (B, T) starting with <START> -> log-probabilities (B, T, V+1), no attention."""
        return self.forward_tokens(tokens, state)[0], None

    def step(self, tokens: torch.Tensor, state: State) -> StepOutput:
        """One decoding step: tokens (B,) -> log-probabilities (B, V+1), the next state, no attention."""
        logprobs, state = self.forward_tokens(tokens.unsqueeze(1), state)  # (B, 1, V+1)
        return logprobs.squeeze(1), state, None
