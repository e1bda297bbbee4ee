"""CaptioningRNN: image features -> h0, word embeddings -> RNN/LSTM/GRU -> vocabulary scores (NumPy)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from imcap.errors import ImcapError
from imcap.reference import layers as L
from imcap.reference.options import CELLS as CELL_TYPES

GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # fused gate blocks in Wx, Wh, b

_SEQUENCE = {
    "rnn": (L.rnn_forward, L.rnn_backward),
    "lstm": (L.lstm_forward, L.lstm_backward),
    "gru": (L.gru_forward, L.gru_backward),
}


class CaptioningRNN:
    """The cs231n captioning model; `params` holds W_proj, b_proj, W_embed, Wx, Wh, b, W_vocab, b_vocab."""

    def __init__(
        self,
        word_to_idx: Mapping[str, int],
        input_dim: int = 512,
        wordvec_dim: int = 128,
        hidden_dim: int = 128,
        cell_type: str = "rnn",
        dtype: type = np.float64,
        seed: int | None = None,
    ) -> None:
        if cell_type not in CELL_TYPES:
            raise ImcapError(f"cell_type: must be one of {', '.join(CELL_TYPES)}, not {cell_type!r}")
        if "<NULL>" not in word_to_idx:
            raise ImcapError("word_to_idx: has no <NULL> token")
        self.cell_type = cell_type
        self.dtype = dtype
        self.word_to_idx = dict(word_to_idx)
        self.idx_to_word = {i: w for w, i in self.word_to_idx.items()}
        self._null = self.word_to_idx["<NULL>"]
        self._start = self.word_to_idx.get("<START>")
        self._end = self.word_to_idx.get("<END>")

        V, D, W, H = len(self.word_to_idx), input_dim, wordvec_dim, hidden_dim
        G = GATES[cell_type] * H
        rng = np.random.default_rng(seed)
        self.params: dict[str, np.ndarray] = {
            "W_proj": rng.standard_normal((D, H)) / np.sqrt(D),
            "b_proj": np.zeros(H),
            "W_embed": rng.standard_normal((V, W)) / 100,
            "Wx": rng.standard_normal((W, G)) / np.sqrt(W),
            "Wh": rng.standard_normal((H, G)) / np.sqrt(H),
            "b": np.zeros(G),
            "W_vocab": rng.standard_normal((H, V)) / np.sqrt(H),
            "b_vocab": np.zeros(V),
        }
        for k, v in self.params.items():
            self.params[k] = v.astype(dtype)

    def loss(
        self, features: np.ndarray, captions: np.ndarray, backward: bool = True
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Teacher-forced loss and gradients: features (N, D), captions (N, T) int starting with <START>.

        captions[:, :-1] are the inputs and captions[:, 1:] the targets; <NULL> targets are masked out and
        the loss is summed over tokens and divided by N. backward=False skips the gradients (grads is {}).
        """
        p = self.params
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]  # (N, T-1) each
        mask = captions_out != self._null
        forward, backward = _SEQUENCE[self.cell_type]

        h0, proj_cache = L.affine_forward(features.astype(self.dtype), p["W_proj"], p["b_proj"])  # (N, H)
        x, embed_cache = L.word_embedding_forward(captions_in, p["W_embed"])  # (N, T-1, W)
        h, rnn_cache = forward(x, h0, p["Wx"], p["Wh"], p["b"])  # (N, T-1, H)
        scores, vocab_cache = L.temporal_affine_forward(h, p["W_vocab"], p["b_vocab"])  # (N, T-1, V)
        loss, dscores = L.temporal_softmax_loss(scores, captions_out, mask)

        grads: dict[str, np.ndarray] = {}
        if not backward:
            return loss, grads
        dh, grads["W_vocab"], grads["b_vocab"] = L.temporal_affine_backward(dscores, vocab_cache)
        dx, dh0, grads["Wx"], grads["Wh"], grads["b"] = backward(dh, rnn_cache)
        grads["W_embed"] = L.word_embedding_backward(dx, embed_cache)
        _, grads["W_proj"], grads["b_proj"] = L.affine_backward(dh0, proj_cache)
        return loss, grads

    def sample(self, features: np.ndarray, max_length: int = 30) -> np.ndarray:
        """Greedy captions for features (N, D): (N, max_length) word ids, <START> not included.

        Column t holds the word chosen at step t; <NULL> and <START> are never chosen (as in
        imcap.decoding), and after a row emits <END> the rest of it is <NULL>.
        """
        if self._start is None:
            raise ImcapError("word_to_idx: has no <START> token, cannot sample")
        p = self.params
        n = features.shape[0]
        captions = np.full((n, max_length), self._null, dtype=np.int64)
        done = np.zeros(n, dtype=bool)
        h, _ = L.affine_forward(features.astype(self.dtype), p["W_proj"], p["b_proj"])  # (N, H)
        c = np.zeros_like(h)
        words = np.full(n, self._start, dtype=np.int64)  # (N,)
        for t in range(max_length):
            x = p["W_embed"][words]  # (N, W)
            if self.cell_type == "lstm":
                h, c, _ = L.lstm_step_forward(x, h, c, p["Wx"], p["Wh"], p["b"])
            elif self.cell_type == "gru":
                h, _ = L.gru_step_forward(x, h, p["Wx"], p["Wh"], p["b"])
            else:
                h, _ = L.rnn_step_forward(x, h, p["Wx"], p["Wh"], p["b"])
            scores = h @ p["W_vocab"] + p["b_vocab"]  # (N, V)
            scores[:, [self._null, self._start]] = -np.inf
            words = np.argmax(scores, axis=1)  # (N,)
            captions[~done, t] = words[~done]
            if self._end is not None:
                done |= words == self._end
            if done.all():
                break
        return captions

    def decode(self, captions: np.ndarray) -> list[str]:
        """Return the words of each row of captions (N, T), stopping at <END> or <NULL>."""
        out = []
        for row in captions:
            words = []
            for i in row:
                if i == self._null or i == self._end:
                    break
                if i != self._start:
                    words.append(self.idx_to_word.get(int(i), "<UNK>"))
            out.append(" ".join(words))
        return out
