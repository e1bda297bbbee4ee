"""Show, Attend and Tell (Xu et al. 2015): an RNN decoder with soft additive attention over image regions.

The decoder reads spatial features (B, K, C): a CNN's grid flattened (VGG conv5 14x14, ResNet layer4
7x7, the small CNN's S/8 x S/8 grid) or K region features per image. At each step:

    e_k   = w . tanh(W_v v_k + W_h h_{t-1})          additive attention scores over the K regions
    alpha = softmax(e)                               (B, K), kept in `last_alpha`
    z     = sigmoid(f_beta(h_{t-1})) * sum_k alpha_k v_k   gated context ("gating scalar")
    h_t   = cell([embed(y_{t-1}), z], h_{t-1})       LSTM/GRU/RNN, `num_layers` deep
    p(y_t) = softmax(W_o dropout(h_t + W_z z))       the context also feeds the output (deep output)

h0 (and c0) come from the mean region feature. `attention_penalty` is the paper's doubly stochastic
regulariser alpha_c * (1 - sum_t alpha_tk)^2, averaged over the K regions (and the batch) so that
alpha_c means the same for a 7x7 grid and 36 regions.
"""
from __future__ import annotations

import torch
from torch import nn

from imcap.data.vocab import NULL
from imcap.models.cells import StackedCell, state_parts
from imcap.models.scheduled import unroll

State = tuple[torch.Tensor, ...]


class ShowAttendTell(nn.Module):
    """Soft-attention caption decoder; `feature_dim` is C of the (B, K, C) features it reads."""

    feature_kind = "spatial"
    has_attention = True

    def __init__(self, vocab_size: int, feature_dim: int, input_encoding_size: int = 512, rnn_size: int = 512, num_layers: int = 1, dropout: float = 0.5, rnn_type: str = "lstm") -> None:
        super().__init__()
        self.vocab_size = vocab_size
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
        self.last_alpha: torch.Tensor | None = None
        self.last_alphas: torch.Tensor | None = None

    def init_state(self, feats: torch.Tensor) -> State:
        """Region features (B, K, C) -> state (recurrent parts (L, B, H)..., annotations (1, B, K, E), their projection (1, B, K, H))."""
        v = self.feat_proj(feats)  # (B, K, E)
        batch = v.size(0)
        init = torch.tanh(self.init_h(v.mean(dim=1)))  # (B, parts*L*H)
        parts = init.view(batch, state_parts(self.rnn_type), self.num_layers, self.rnn_size).permute(1, 2, 0, 3)  # (parts, L, B, H)
        return (*parts.contiguous().unbind(0), v.unsqueeze(0), self.att_v(v).unsqueeze(0))

    def attend(self, h: torch.Tensor, v: torch.Tensor, v_att: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top hidden state (B, H), annotations (B, K, E) and their projection (B, K, H) -> gated context (B, E), alpha (B, K)."""
        scores = self.att_w(torch.tanh(v_att + self.att_h(h).unsqueeze(1))).squeeze(2)  # (B, K)
        alpha = scores.softmax(dim=1)
        context = torch.bmm(alpha.unsqueeze(1), v).squeeze(1)  # (B, E)
        return torch.sigmoid(self.gate(h)) * context, alpha

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Tokens (B,) -> log-probabilities (B, V+1) and the next state; the attention weights go to `last_alpha`."""
        n = state_parts(self.rnn_type)
        core, v, v_att = state[:n], state[n].squeeze(0), state[n + 1].squeeze(0)
        context, alpha = self.attend(core[0][-1], v, v_att)  # (B, E), (B, K)
        out, core = self.cell(torch.cat([self.embed(tokens), context], dim=1), core)  # (B, H)
        logits = self.logit(self.dropout(out + self.ctx_out(context)))  # (B, V+1)
        self.last_alpha = alpha
        return torch.log_softmax(logits, dim=-1), (*core, state[n], state[n + 1])

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Region features (B, K, C) and input tokens (B, T) -> log-probabilities (B, T, V+1); alphas in `last_alphas`."""
        return unroll(self, feats, tokens)

    def select_state(self, state: State, index: torch.Tensor) -> State:
        """Keep (and reorder or repeat) batch rows `index` of a state."""
        return tuple(s.index_select(1, index) for s in state)


def attention_penalty(decoder: nn.Module, targets: torch.Tensor, alpha_c: float) -> torch.Tensor | float:
    """Doubly stochastic regulariser over the last forward pass: alpha_c * mean over b, k of (1 - sum_t alpha_btk)^2.

    Only steps whose target is a real token (targets (B, T) != <NULL>) count; 0.0 when off or no attention.
    """
    alphas = getattr(decoder, "last_alphas", None)
    if alpha_c <= 0 or alphas is None:
        return 0.0
    mask = (targets != NULL).to(alphas.dtype).unsqueeze(2)  # (B, T, 1)
    total = (alphas * mask).sum(dim=1)  # (B, K)
    return alpha_c * ((1.0 - total) ** 2).mean()
