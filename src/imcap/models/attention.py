"""Show, Attend and Tell (Xu et al. 2015): an RNN decoder with soft additive attention over image regions.

The decoder reads spatial features (B, K, C): a CNN's grid flattened (VGG conv5 14x14, ResNet layer4
7x7, the small CNN's S/8 x S/8 grid) or K region features per image. At each step:

    e_k   = w . tanh(W_v v_k + W_h h_{t-1})          additive attention scores over the K regions
    alpha = softmax(e)                               (B, K), returned by `step`
    z     = sigmoid(f_beta(h_{t-1})) * sum_k alpha_k v_k   gated context ("gating scalar")
    h_t   = cell([embed(y_{t-1}), z], h_{t-1})       LSTM/GRU/RNN, `num_layers` deep
    p(y_t) = softmax(W_o dropout(h_t + W_z z))       the context also feeds the output (deep output)

h0 (and c0) come from the mean region feature. Teacher forcing embeds all words, and applies the output
layer and the log-softmax, once over all steps; only the recurrence runs step by step. The paper's
doubly stochastic regulariser is `imcap.losses.attention_penalty`.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from imcap.models.additive import additive_scores, weighted_sum
from imcap.models.cells import StackedCell, state_parts
from imcap.models.decoder import Decoder, State, StepOutput


class ShowAttendTell(Decoder):
    """Soft-attention caption decoder; `feature_dim` is C of the (B, K, C) features it reads."""

    feature_kind = "spatial"
    has_attention = True
    state_batch_dims = (1, 0, 0)  # ((h[, c]) (L, B, H) each, annotations v (B, K, E), their projection (B, K, H))

    def __init__(self, vocab_size: int, feature_dim: int, input_encoding_size: int = 512, rnn_size: int = 512, num_layers: int = 1, dropout: float = 0.5, rnn_type: str = "lstm") -> None:
        super().__init__(vocab_size)
        self.rnn_size = rnn_size
        self.num_layers = num_layers
        self.rnn_type = rnn_type
        e, h = input_encoding_size, rnn_size
        self.feat_proj = nn.Sequential(nn.Linear(feature_dim, e), nn.ReLU())  # regions -> annotation vectors
        self.att_v = nn.Linear(e, h)
        self.att_h = nn.Linear(h, h, bias=False)
        self.att_w = nn.Linear(h, 1)
        self.gate = nn.Linear(h, 1)
        self.init_h = nn.Linear(e, num_layers * h * state_parts(rnn_type))
        self.embed = nn.Embedding(vocab_size + 1, e)
        self.cell = StackedCell(rnn_type, 2 * e, h, num_layers, dropout)
        self.ctx_out = nn.Linear(e, h, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.logit = nn.Linear(h, vocab_size + 1)

    def init_state(self, feats: torch.Tensor) -> State:
        """Region features (B, K, C) -> ((h[, c]) (L, B, H) each, annotations (B, K, E), their projection (B, K, H))."""
        v = self.feat_proj(feats)  # (B, K, E)
        batch = v.size(0)
        init = torch.tanh(self.init_h(v.mean(dim=1)))  # (B, parts*L*H)
        parts = init.view(batch, state_parts(self.rnn_type), self.num_layers, self.rnn_size).permute(1, 2, 0, 3)  # (parts, L, B, H)
        return tuple(parts.contiguous().unbind(0)), v, self.att_v(v)

    def attend(self, h: torch.Tensor, v: torch.Tensor, v_att: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top hidden state (B, H), annotations (B, K, E) and their projection (B, K, H) -> gated context (B, E), alpha (B, K)."""
        scores = additive_scores(v_att, self.att_h(h), self.att_w.weight.view(-1), self.att_w.bias)  # (B, K)
        alpha = scores.softmax(dim=1)
        context = weighted_sum(alpha, v)  # (B, E)
        return torch.sigmoid(self.gate(h)) * context, alpha

    def _recur(self, words: torch.Tensor, state: State) -> tuple[torch.Tensor, torch.Tensor, State, torch.Tensor]:
        """Embedded words (B, E) -> top output (B, H), gated context (B, E), the next state, alpha (B, K)."""
        core, v, v_att = state
        context, alpha = self.attend(core[0][-1], v, v_att)  # (B, E), (B, K)
        out, core = self.cell(torch.cat([words, context], dim=1), core)  # (B, H)
        return out, context, (core, v, v_att), alpha

    def _logprobs(self, out: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Outputs (..., H) and contexts (..., E) -> log-probabilities (..., V+1) (deep output)."""
        return torch.log_softmax(self.logit(self.dropout(out + self.ctx_out(context))), dim=-1)

    def step(self, tokens: torch.Tensor, state: State) -> StepOutput:
        """Tokens (B,) -> log-probabilities (B, V+1), the next state, attention weights (B, K)."""
        out, context, state, alpha = self._recur(self.embed(tokens), state)
        return self._logprobs(out, context), state, alpha

    def teacher_force(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From the state before <START> and input tokens (B, T) -> log-probabilities (B, T, V+1), alphas (B, T, K).

        Embedding, its part of the cell's input projection, output layer and log-softmax run once over all T
        steps; only the attention and the recurrence loop.
        """
        words = self.embed(tokens)  # (B, T, E)
        e = words.size(2)
        w_words, w_context = self.cell.split_input((e, e))  # the cell reads [word, context]
        word_gates = F.linear(words, w_words, self.cell.cells[0].bias_ih)  # (B, T, G): the word part of the input projection, once
        core, v, v_att = state
        outs, contexts, alphas = [], [], []
        for gates in word_gates.unbind(1):  # (B, G) per step; unbind's backward stacks the T gradients once
            context, alpha = self.attend(core[0][-1], v, v_att)  # (B, E), (B, K)
            out, core = self.cell.step_projected(gates + F.linear(context, w_context), core)  # (B, H)
            outs.append(out)
            contexts.append(context)
            alphas.append(alpha)
        return self._logprobs(torch.stack(outs, 1), torch.stack(contexts, 1)), torch.stack(alphas, 1)  # (B, T, V+1), (B, T, K)
