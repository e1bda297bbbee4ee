"""A text-conditioned co-attention decoder with MLB pooling (IVQA: generate a question from an image and an answer).

Inputs are region features (B, K, C) and condition tokens (B, Lc) (the answer, optionally with concept
words; embedded and averaged into a (B, E) vector `a`). At every step t:

    o_t   = RNN(embed(y_{t-1}))                              LSTM/GRU/RNN, `num_layers` deep
    z_t   = relu(W_o o_t + W_a a)                            fuse state and condition (project, then add)
    e_tk  = p . (tanh(U v_k) * tanh(W_z z_t))                MLB (low-rank bilinear) scores of the K regions
    alpha = softmax_k(e_t)                                   (B, K), returned by `step`
    c_t   = sum_k alpha_k v_k                                the attended context
    g_t   = tanh(P (tanh(C c_t) * tanh(W_g z_t)))            a second MLB fusion of context and z_t
    p(y_t) = softmax(W dropout(g_t + W_c c_t))               the context also feeds the output directly

h0 = tanh(W a + W' mean_k v_k), c0 = 0. The RNN reads only words, so teacher forcing runs it fused over
the whole sequence and attends for all steps at once (no (B, T, K, M) tensor: p . (x * y) = (x * p) . y).
The direct path W_c c_t (a "deep output", as in Show-Attend-Tell) is not in IVQA's decoder: on the synthetic
VQA task it makes the generated question name the object the answer is about far more often.
"""
from __future__ import annotations

import torch
from torch import nn

from imcap.data.vocab import tokenize
from imcap.models.cells import state_parts
from imcap.models.decoder import Decoder, State, StepOutput

RNN_TYPES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
COND_PAD, COND_UNK = 0, 1

Features = tuple[torch.Tensor, torch.Tensor]  # regions (B, K, C), condition ids (B, Lc)


def build_condition_vocab(texts: list[str]) -> list[str]:
    """The sorted distinct words of `texts` (the condition vocabulary stored in ModelArgs)."""
    return sorted({w for t in texts for w in tokenize(t)})


def condition_vocab_of(data, field: str) -> list[str]:
    """The condition vocabulary of a PreproData: the words of `field` over its training images."""
    return build_condition_vocab(data.condition_texts(data.split_indices("train"), field))


def encode_conditions(texts: list[str], words: list[str]) -> torch.Tensor:
    """Condition texts -> ids (B, Lc): word i of `words` is i + 2, unknown words 1, padding 0."""
    index = {w: i + 2 for i, w in enumerate(words)}
    ids = [[index.get(w, COND_UNK) for w in tokenize(t)] for t in texts]
    out = torch.zeros(len(texts), max([1, *map(len, ids)]), dtype=torch.long)
    for b, row in enumerate(ids):
        out[b, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


class MLB(nn.Module):
    """Multimodal low-rank bilinear pooling: P(tanh(L x) * tanh(R y)), `rank` hidden units."""

    def __init__(self, dim_x: int, dim_y: int, rank: int, out: int) -> None:
        super().__init__()
        self.left = nn.Linear(dim_x, rank)
        self.right = nn.Linear(dim_y, rank)
        self.out = nn.Linear(rank, out)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (..., dim_x) and y (..., dim_y) of the same leading shape -> (..., out)."""
        return self.out(torch.tanh(self.left(x)) * torch.tanh(self.right(y)))


class CoAttention(Decoder):
    """IVQA decoder; `condition_size` counts condition ids (words + 2), `feature_dim` is C of the regions."""

    feature_kind = "spatial"
    has_attention = True
    conditioned = True
    state_batch_dims = (1, 0, 0, 0)  # ((h[, c]) (L, B, H) each, regions (B, K, C), tanh(U v) (B, K, H), condition a (B, E))

    def __init__(self, vocab_size: int, feature_dim: int, condition_size: int, input_encoding_size: int = 512, rnn_size: int = 512, num_layers: int = 1, dropout: float = 0.5, rnn_type: str = "lstm") -> None:
        super().__init__(vocab_size)
        e, h = input_encoding_size, rnn_size
        self.rnn_size = rnn_size
        self.num_layers = num_layers
        self.rnn_type = rnn_type
        self.embed = nn.Embedding(vocab_size + 1, e)
        self.cond_embed = nn.Embedding(condition_size, e, padding_idx=COND_PAD)
        self.init_a = nn.Linear(e, num_layers * h)
        self.init_v = nn.Linear(feature_dim, num_layers * h, bias=False)
        self.rnn = RNN_TYPES[rnn_type](e, h, num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.z_o = nn.Linear(h, h)
        self.z_a = nn.Linear(e, h, bias=False)
        self.att = MLB(feature_dim, h, h, 1)
        self.fuse = MLB(feature_dim, h, h, h)
        self.ctx_out = nn.Linear(feature_dim, h, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.logit = nn.Linear(h, vocab_size + 1)

    def embed_condition(self, cond: torch.Tensor) -> torch.Tensor:
        """Condition ids (B, Lc) -> the mean embedding of the non-padding ids (B, E)."""
        mask = (cond != COND_PAD).unsqueeze(2).float()  # (B, Lc, 1)
        return (self.cond_embed(cond) * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def init_state(self, feats: Features) -> State:
        """(regions (B, K, C), condition ids (B, Lc)) -> ((h[, c]) (L, B, H) each, regions (B, K, C), tanh(U v) (B, K, H), a (B, E))."""
        v, cond = feats
        a = self.embed_condition(cond)  # (B, E)
        batch = v.size(0)
        h0 = torch.tanh(self.init_a(a) + self.init_v(v.mean(1))).view(batch, self.num_layers, self.rnn_size).transpose(0, 1).contiguous()  # (L, B, H)
        core = (h0, torch.zeros_like(h0)) if state_parts(self.rnn_type) == 2 else (h0,)
        return core, v, torch.tanh(self.att.left(v)), a

    def _predict(self, o: torch.Tensor, v: torch.Tensor, v_att: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RNN outputs (B, T, H), regions (B, K, C), tanh(U v) (B, K, H), a (B, E) -> logits (B, T, V+1), alpha (B, T, K)."""
        z = torch.relu(self.z_o(o) + self.z_a(a).unsqueeze(1))  # (B, T, H)
        weighted = v_att * self.att.out.weight.view(1, 1, -1)  # (B, K, H): p folded into the region side
        scores = torch.bmm(torch.tanh(self.att.right(z)), weighted.transpose(1, 2)) + self.att.out.bias  # (B, T, K)
        alpha = scores.softmax(dim=2)
        context = torch.bmm(alpha, v)  # (B, T, C)
        g = torch.tanh(self.fuse(context, z))  # (B, T, H)
        return self.logit(self.dropout(g + self.ctx_out(context))), alpha

    def _rnn_state(self, core: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """(h, c) or (h,) -> what nn.LSTM / nn.GRU / nn.RNN take."""
        return core if self.rnn_type == "lstm" else core[0]

    def step(self, tokens: torch.Tensor, state: State) -> StepOutput:
        """Tokens (B,) -> log-probabilities (B, V+1), the next state, attention weights (B, K)."""
        core, v, v_att, a = state
        o, rnn_state = self.rnn(self.embed(tokens).unsqueeze(1), self._rnn_state(core))  # (B, 1, H)
        logits, alpha = self._predict(o, v, v_att, a)  # (B, 1, V+1), (B, 1, K)
        core = tuple(rnn_state) if isinstance(rnn_state, tuple) else (rnn_state,)
        return torch.log_softmax(logits[:, 0], dim=-1), (core, v, v_att, a), alpha[:, 0]

    def teacher_force(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From the state before <START> and input tokens (B, T) -> log-probabilities (B, T, V+1), alphas (B, T, K)."""
        core, v, v_att, a = state
        o, _ = self.rnn(self.embed(tokens), self._rnn_state(core))  # (B, T, H): one fused call over all steps
        logits, alphas = self._predict(o, v, v_att, a)
        return torch.log_softmax(logits, dim=-1), alphas
