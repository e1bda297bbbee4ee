"""Recurrent cells for step-by-step decoders: LSTM/GRU/RNN, stacked in layers with dropout between them.

`StackedCell` is one time step of a multi-layer `nn.LSTM`/`nn.GRU`/`nn.RNN`: the same parameters per
layer (torch's fused cells, each with its own gate weights), the same state layout
((num_layers, B, H) tensors) and dropout on the outputs of every layer but the last.

Teacher forcing can project the parts of the first layer's input that do not depend on the recurrence
(the word embeddings, an image's mean feature) for all steps at once: `split_input` splits the first
layer's input weights by input columns, the caller applies each block once to all T steps or per step,
and `step_projected` runs one step from the summed projection. The result equals calling the cell on the
concatenated input.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

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
        return self._layers_from(0, x, state, [], [])

    def _layers_from(self, first: int, inp: torch.Tensor, state: CellState, hs: list[torch.Tensor], cs: list[torch.Tensor]) -> tuple[torch.Tensor, CellState]:
        """Run layers `first`.. on `inp` (B, I) after the outputs `hs` (and cells `cs`) of the layers below -> top output (B, H), next state."""
        for i in range(first, self.num_layers):
            cell = self.cells[i]
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

    def split_input(self, sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """The first layer's input weights (G, I) split by input columns into blocks (G, size), in input order; sizes sum to I."""
        return self.cells[0].weight_ih.split(list(sizes), dim=1)

    def step_projected(self, gates_in: torch.Tensor, state: CellState) -> tuple[torch.Tensor, CellState]:
        """One step from the first layer's input projection `gates_in` = W_ih x + b_ih (B, G) -> top output (B, H), next state.

        The same as `self(x, state)`; the caller computes W_ih x block by block (`split_input`), the
        recurrence-free blocks once for all steps.
        """
        first = self.cells[0]
        h0 = state[0][0]  # (B, H)
        hidden = F.linear(h0, first.weight_hh, first.bias_hh)  # (B, G)
        if self.rnn_type == "lstm":
            i, f, g, o = (gates_in + hidden).chunk(4, dim=1)
            c = torch.sigmoid(f) * state[1][0] + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hs, cs = [h], [c]
        elif self.rnn_type == "gru":
            ir, iz, in_ = gates_in.chunk(3, dim=1)
            hr, hz, hn = hidden.chunk(3, dim=1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(in_ + r * hn)
            hs, cs = [(1 - z) * n + z * h0], []
        else:
            pre = gates_in + hidden
            hs, cs = [torch.tanh(pre) if first.nonlinearity == "tanh" else torch.relu(pre)], []
        return self._layers_from(1, hs[0], state, hs, cs)

    def load_from_rnn(self, rnn: nn.RNNBase) -> None:
        """Copy the weights of an `nn.LSTM`/`nn.GRU`/`nn.RNN` with the same type and sizes."""
        with torch.no_grad():
            for i, cell in enumerate(self.cells):
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    getattr(cell, name).copy_(getattr(rnn, f"{name}_l{i}"))
