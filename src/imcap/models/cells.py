"""Recurrent cells for step-by-step decoders: LSTM/GRU/RNN, stacked in layers with dropout between them.

`StackedCell` is one time step of a multi-layer `nn.LSTM`/`nn.GRU`/`nn.RNN`: the same parameters per
layer (torch's fused cells, each with its own gate weights), the same state layout
((num_layers, B, H) tensors) and dropout on the outputs of every layer but the last.
"""
from __future__ import annotations

import torch
from torch import nn

RNN_CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}

CellState = tuple[torch.Tensor, ...]


def state_parts(rnn_type: str) -> int:
    """Tensors in the recurrent state: 2 for an LSTM (h, c), 1 for a GRU or plain RNN (h)."""
    return 2 if rnn_type == "lstm" else 1


class StackedCell(nn.Module):
    """`num_layers` cells of `rnn_type`; layer l > 0 reads the (dropped-out) output of layer l - 1."""

    def __init__(self, rnn_type: str, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if rnn_type not in RNN_CELLS:
            raise ValueError(f"rnn_type must be one of {tuple(RNN_CELLS)}")
        if num_layers < 1:
            raise ValueError("num_layers must be at least 1")
        self.rnn_type = rnn_type
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        cell = RNN_CELLS[rnn_type]
        self.cells = nn.ModuleList(cell(input_size if i == 0 else hidden_size, hidden_size) for i in range(num_layers))
        self.dropout = nn.Dropout(dropout if num_layers > 1 else 0.0)

    def zero_state(self, batch: int, like: torch.Tensor) -> CellState:
        """All-zero state: `state_parts` tensors of shape (num_layers, batch, hidden)."""
        zeros = like.new_zeros(self.num_layers, batch, self.hidden_size)
        return tuple(zeros.clone() for _ in range(state_parts(self.rnn_type)))

    def forward(self, x: torch.Tensor, state: CellState) -> tuple[torch.Tensor, CellState]:
        """Input (B, I) and state ((L, B, H), ...) -> top layer output (B, H) and the next state."""
        hs, cs = [], []
        inp = x
        for i, cell in enumerate(self.cells):
            if i > 0:
                inp = self.dropout(inp)
            if self.rnn_type == "lstm":
                h, c = cell(inp, (state[0][i], state[1][i]))  # (B, H) each
                cs.append(c)
            else:
                h = cell(inp, state[0][i])  # (B, H)
            hs.append(h)
            inp = h
        new = (torch.stack(hs), torch.stack(cs)) if self.rnn_type == "lstm" else (torch.stack(hs),)
        return inp, new

    def load_from_rnn(self, rnn: nn.RNNBase) -> None:
        """Copy the weights of an `nn.LSTM`/`nn.GRU`/`nn.RNN` with the same type and sizes."""
        with torch.no_grad():
            for i, cell in enumerate(self.cells):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, name).copy_(getattr(rnn, f"{name}_l{i}"))
