"""ShowTell: neuraltalk2's language model (image embedding at t=0, then <START>, then the words).

Every decoder in imcap implements the same step interface, which `imcap.decoding` drives:
    init_state(feats)            -> state after reading the image
    step(tokens, state)          -> (log-probabilities over the vocabulary, next state)
    select_state(state, index)   -> state of the batch rows `index` (beam search, sampling n)
"""
from __future__ import annotations

import torch
from torch import nn

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class ShowTell(nn.Module):
    """CNN-embedding-fed RNN language model; `vocab_size` counts tokens besides <NULL>.

    Parameters match neuraltalk2: ShowTell(9567, 512, 512) has 11,908,448 of them
    (lookup (V+1) x E, the LSTM's two weight matrices and biases, output H -> V+1).
    """

    def __init__(self, vocab_size: int, input_encoding_size: int = 512, rnn_size: int = 512, num_layers: int = 1, dropout: float = 0.5, rnn_type: str = "lstm") -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.input_encoding_size = input_encoding_size
        self.rnn_size = rnn_size
        self.num_layers = num_layers
        self.rnn_type = rnn_type
        self.embed = nn.Embedding(vocab_size + 1, input_encoding_size)
        self.rnn = RNN_TYPES[rnn_type](input_encoding_size, rnn_size, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.logit = nn.Linear(rnn_size, vocab_size + 1)

    def init_state(self, feats: torch.Tensor) -> State:
        """Run the image embedding (B, E) through the RNN from a zero state; return the state."""
        _, state = self.rnn(feats.unsqueeze(1))  # input (B, 1, E)
        return state

    def forward_tokens(self, tokens: torch.Tensor, state: State | None) -> tuple[torch.Tensor, State]:
        """Teacher forcing from `state`: tokens (B, T) -> logits (B, T, V+1), with one fused RNN call."""
        out, state = self.rnn(self.embed(tokens), state)  # (B, T, H)
        return self.logit(self.dropout(out)), state

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, E) and input tokens (B, T) starting with <START> -> logits (B, T, V+1)."""
        x = torch.cat([feats.unsqueeze(1), self.embed(tokens)], dim=1)  # (B, T+1, E)
        out, _ = self.rnn(x)  # (B, T+1, H); step 0 read the image and predicts nothing
        return self.logit(self.dropout(out[:, 1:]))  # (B, T, V+1)

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One decoding step: tokens (B,) -> log-probabilities (B, V+1) and the next state."""
        logits, state = self.forward_tokens(tokens.unsqueeze(1), state)
        return torch.log_softmax(logits.squeeze(1), dim=-1), state

    def select_state(self, state: State, index: torch.Tensor) -> State:
        """Keep (and reorder or repeat) batch rows `index` of a state."""
        if isinstance(state, tuple):
            return tuple(s.index_select(1, index) for s in state)  # type: ignore[return-value]
        return state.index_select(1, index)  # (layers, B', H)
