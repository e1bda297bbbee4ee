"""Up-Down (Anderson et al. 2018, "Bottom-up and top-down attention"): a two-LSTM decoder with additive attention.

The decoder reads K features (B, K, C): region features (e.g. 36 x 2048 bottom-up regions, --features-dir)
or a CNN grid flattened (the small CNN's S/8 x S/8, ResNet's 7 x 7). They are projected to v_k (E). At step t:

    h_att = AttLSTM([h_lang_{t-1}, mean_k v_k, embed(y_{t-1})], h_att_{t-1})   the attention ("top-down") LSTM
    e_k   = w . tanh(W_v v_k + W_h h_att)                                       additive attention over the K features
    alpha = softmax(e)                                                          (B, K), returned by `step`
    v_hat = sum_k alpha_k v_k
    h_lang = LangLSTM([v_hat, h_att], h_lang_{t-1})                             the language LSTM
    p(y_t) = softmax(W_o dropout(h_lang))

Both LSTMs start from zeros. `rnn_type` and `num_layers` apply to each of the two (LSTM, 1 layer in the
paper). Teacher forcing embeds all words, projects the words and the mean feature into the attention
LSTM's gates, and applies the output layer and the log-softmax, once over all steps; only the attention
and the two recurrences run step by step.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from imcap.models.additive import additive_scores, weighted_sum
from imcap.models.cells import StackedCell
from imcap.models.decoder import Decoder, State, StepOutput


class UpDown(Decoder):
    """Up-Down caption decoder; `feature_dim` is C of the (B, K, C) features it reads."""

    feature_kind = "spatial"
    has_attention = True
    state_batch_dims = (1, 1, 0, 0, 0)  # (attention core (L, B, H)..., language core (L, B, H)..., v (B, K, E), W_v v (B, K, H), mean v (B, E))

    def __init__(self, vocab_size: int, feature_dim: int, input_encoding_size: int = 512, rnn_size: int = 512, num_layers: int = 1, dropout: float = 0.5, rnn_type: str = "lstm") -> None:
        super().__init__(vocab_size)
        e, h = input_encoding_size, rnn_size
        self.feat_proj = nn.Sequential(nn.Linear(feature_dim, e), nn.ReLU())  # features -> v_k
        self.embed = nn.Embedding(vocab_size + 1, e)
        self.att_cell = StackedCell(rnn_type, h + 2 * e, h, num_layers, dropout)
        self.att_v = nn.Linear(e, h)
        self.att_h = nn.Linear(h, h, bias=False)
        self.att_w = nn.Linear(h, 1)
        self.lang_cell = StackedCell(rnn_type, e + h, h, num_layers, dropout)
        self.dropout = nn.Dropout(dropout)
        self.logit = nn.Linear(h, vocab_size + 1)

    def init_state(self, feats: torch.Tensor) -> State:
        """Features (B, K, C) -> (attention core, language core (zeros, (L, B, H) each), v (B, K, E), W_v v (B, K, H), mean v (B, E))."""
        v = self.feat_proj(feats)  # (B, K, E)
        batch = v.size(0)
        return self.att_cell.zero_state(batch, v), self.lang_cell.zero_state(batch, v), v, self.att_v(v), v.mean(dim=1)

    def _recur(self, words: torch.Tensor, state: State) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Embedded words (B, E) -> the language LSTM's top output (B, H), the next state, alpha (B, K)."""
        att_core, lang_core, v, v_att, v_mean = state
        h_att, att_core = self.att_cell(torch.cat([lang_core[0][-1], v_mean, words], dim=1), att_core)  # (B, H)
        h_lang, lang_core, alpha = self._attend_and_speak(h_att, lang_core, v, v_att)
        return h_lang, (att_core, lang_core, v, v_att, v_mean), alpha

    def _attend_and_speak(self, h_att: torch.Tensor, lang_core: State, v: torch.Tensor, v_att: torch.Tensor) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Attention LSTM output (B, H) -> the language LSTM's top output (B, H), its next state, alpha (B, K)."""
        scores = additive_scores(v_att, self.att_h(h_att), self.att_w.weight.view(-1), self.att_w.bias)  # (B, K)
        alpha = scores.softmax(dim=1)
        attended = weighted_sum(alpha, v)  # (B, E)
        h_lang, lang_core = self.lang_cell(torch.cat([attended, h_att], dim=1), lang_core)  # (B, H)
        return h_lang, lang_core, alpha

    def _logprobs(self, h_lang: torch.Tensor) -> torch.Tensor:
        """Language LSTM outputs (..., H) -> log-probabilities (..., V+1)."""
        return torch.log_softmax(self.logit(self.dropout(h_lang)), dim=-1)

    def step(self, tokens: torch.Tensor, state: State) -> StepOutput:
        """Tokens (B,) -> log-probabilities (B, V+1), the next state, attention weights (B, K)."""
        h_lang, state, alpha = self._recur(self.embed(tokens), state)
        return self._logprobs(h_lang), state, alpha

    def teacher_force(self, state: State, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From the state before <START> and input tokens (B, T) -> log-probabilities (B, T, V+1), alphas (B, T, K)."""
        words = self.embed(tokens)  # (B, T, E): one lookup for all steps
        att_core, lang_core, v, v_att, v_mean = state
        e = words.size(2)
        w_lang, w_mean, w_words = self.att_cell.split_input((self.att_cell.hidden_size, e, e))  # the attention LSTM reads [h_lang, mean v, word]
        fixed = F.linear(words, w_words) + F.linear(v_mean, w_mean, self.att_cell.cells[0].bias_ih).unsqueeze(1)  # (B, T, G): computed once
        outs, alphas = [], []
        for gates in fixed.unbind(1):  # (B, G) per step; unbind's backward stacks the T gradients once
            h_att, att_core = self.att_cell.step_projected(gates + F.linear(lang_core[0][-1], w_lang), att_core)  # (B, H)
            h_lang, lang_core, alpha = self._attend_and_speak(h_att, lang_core, v, v_att)
            outs.append(h_lang)
            alphas.append(alpha)
        return self._logprobs(torch.stack(outs, 1)), torch.stack(alphas, 1)  # (B, T, V+1), (B, T, K)
