"""NumPy forward/backward passes of every captioning layer (cs231n assignment 3 conventions).

Each `*_forward` returns `(out, cache)` and each `*_backward` takes the upstream gradient and that cache.
Shapes: N batch, T time steps, D input size, H hidden size, V vocabulary size, M output size.
Gate layouts of the fused weights (columns of Wx, Wh and entries of b):
  LSTM: i, f, o, g (4H)   -- PyTorch's nn.LSTM uses i, f, g, o
  GRU:  r, z, n    (3H)   -- the same order and formulation as PyTorch's nn.GRU, with a single bias b on
                              the input side (PyTorch's bias_hh = 0):
        r = sigmoid(x Wx_r + b_r + h Wh_r),  z = sigmoid(x Wx_z + b_z + h Wh_z),
        n = tanh(x Wx_n + b_n + r * (h Wh_n)),  h' = (1 - z) * n + z * h
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Cache = Any


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (no overflow for large |x|)."""
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax along `axis`."""
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along `axis`."""
    return np.exp(log_softmax(x, axis))


# ------------------------------------------------------------------ affine layers


def affine_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Cache]:
    """out = x @ w + b;  x (N, D), w (D, M), b (M,) -> out (N, M)."""
    return x @ w + b, (x, w)


def affine_backward(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return dx (N, D), dw (D, M), db (M,) for the upstream dout (N, M)."""
    x, w = cache
    return dout @ w.T, x.T @ dout, dout.sum(axis=0)


def temporal_affine_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Cache]:
    """Affine layer applied at every time step: x (N, T, D), w (D, M), b (M,) -> out (N, T, M)."""
    return x @ w + b, (x, w)


def temporal_affine_backward(dout: np.ndarray, cache: Cache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return dx (N, T, D), dw (D, M), db (M,) for the upstream dout (N, T, M)."""
    x, w = cache
    n, t, d = x.shape
    m = w.shape[1]
    dx = dout @ w.T
    dw = x.reshape(n * t, d).T @ dout.reshape(n * t, m)
    return dx, dw, dout.sum(axis=(0, 1))


def word_embedding_forward(x: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, Cache]:
    """Look up word vectors: x (N, T) int in [0, V), W (V, D) -> out (N, T, D)."""
    return W[x], (x, W.shape)


def word_embedding_backward(dout: np.ndarray, cache: Cache) -> np.ndarray:
    """Return dW (V, D): dout (N, T, D) scattered back onto the rows that were looked up."""
    x, shape = cache
    dW = np.zeros(shape, dtype=dout.dtype)
    np.add.at(dW, x, dout)
    return dW


def temporal_softmax_loss(x: np.ndarray, y: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy summed over the unmasked time steps and divided by N.

    x (N, T, V) scores, y (N, T) int targets, mask (N, T) bool -> (loss, dx (N, T, V)).
    """
    n = x.shape[0]
    logp = log_softmax(x)  # (N, T, V)
    picked = np.take_along_axis(logp, y[..., None], axis=2)[..., 0]  # (N, T)
    loss = -(picked * mask).sum() / n
    dx = np.exp(logp)
    np.put_along_axis(dx, y[..., None], np.take_along_axis(dx, y[..., None], axis=2) - 1.0, axis=2)
    dx *= mask[..., None] / n
    return float(loss), dx


# ------------------------------------------------------------------ vanilla RNN (tanh)


def rnn_step_forward(
    x: np.ndarray, prev_h: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, Cache]:
    """next_h = tanh(x Wx + prev_h Wh + b);  x (N, D), prev_h (N, H), Wx (D, H), Wh (H, H), b (H,)."""
    next_h = np.tanh(x @ Wx + prev_h @ Wh + b)  # (N, H)
    return next_h, (x, prev_h, Wx, Wh, next_h)


def rnn_step_backward(dnext_h: np.ndarray, cache: Cache) -> tuple[np.ndarray, ...]:
    """Return dx, dprev_h, dWx, dWh, db for one tanh RNN step."""
    x, prev_h, Wx, Wh, next_h = cache
    da = dnext_h * (1.0 - next_h**2)  # (N, H) gradient of the pre-activation
    return da @ Wx.T, da @ Wh.T, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def rnn_forward(
    x: np.ndarray, h0: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, Cache]:
    """Run the tanh RNN over a sequence: x (N, T, D), h0 (N, H) -> h (N, T, H)."""
    n, t_len, _ = x.shape
    h = np.empty((n, t_len, h0.shape[1]), dtype=h0.dtype)
    caches = []
    prev_h = h0
    for t in range(t_len):
        prev_h, cache = rnn_step_forward(x[:, t], prev_h, Wx, Wh, b)
        h[:, t] = prev_h
        caches.append(cache)
    return h, caches


def rnn_backward(dh: np.ndarray, cache: Cache) -> tuple[np.ndarray, ...]:
    """Backpropagate through time; dh (N, T, H) are the gradients of every h -> dx, dh0, dWx, dWh, db."""
    return _sequence_backward(dh, cache, rnn_step_backward, with_cell=False)


# ------------------------------------------------------------------ LSTM (gates i, f, o, g)


def lstm_step_forward(
    x: np.ndarray, prev_h: np.ndarray, prev_c: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, Cache]:
    """One LSTM step: x (N, D), prev_h/prev_c (N, H), Wx (D, 4H), Wh (H, 4H), b (4H,) -> next_h, next_c."""
    H = prev_h.shape[1]
    a = x @ Wx + prev_h @ Wh + b  # (N, 4H)
    i = sigmoid(a[:, :H])
    f = sigmoid(a[:, H : 2 * H])
    o = sigmoid(a[:, 2 * H : 3 * H])
    g = np.tanh(a[:, 3 * H :])
    next_c = f * prev_c + i * g
    tanh_c = np.tanh(next_c)
    next_h = o * tanh_c
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, i, f, o, g, tanh_c)


def lstm_step_backward(dnext_h: np.ndarray, dnext_c: np.ndarray, cache: Cache) -> tuple[np.ndarray, ...]:
    """Return dx, dprev_h, dprev_c, dWx, dWh, db for one LSTM step."""
    x, prev_h, prev_c, Wx, Wh, i, f, o, g, tanh_c = cache
    dc = dnext_c + dnext_h * o * (1.0 - tanh_c**2)  # (N, H) total gradient of next_c
    da = np.concatenate(
        [
            dc * g * i * (1.0 - i),  # input gate
            dc * prev_c * f * (1.0 - f),  # forget gate
            dnext_h * tanh_c * o * (1.0 - o),  # output gate
            dc * i * (1.0 - g**2),  # candidate g
        ],
        axis=1,
    )  # (N, 4H)
    return da @ Wx.T, da @ Wh.T, dc * f, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def lstm_forward(
    x: np.ndarray, h0: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, Cache]:
    """Run the LSTM over a sequence from h0 and c0 = 0: x (N, T, D), h0 (N, H) -> h (N, T, H)."""
    n, t_len, _ = x.shape
    h = np.empty((n, t_len, h0.shape[1]), dtype=h0.dtype)
    caches = []
    prev_h, prev_c = h0, np.zeros_like(h0)
    for t in range(t_len):
        prev_h, prev_c, cache = lstm_step_forward(x[:, t], prev_h, prev_c, Wx, Wh, b)
        h[:, t] = prev_h
        caches.append(cache)
    return h, caches


def lstm_backward(dh: np.ndarray, cache: Cache) -> tuple[np.ndarray, ...]:
    """Backpropagate through time; dh (N, T, H) -> dx, dh0, dWx, dWh, db (c0 is a constant 0)."""
    return _sequence_backward(dh, cache, lstm_step_backward, with_cell=True)


# ------------------------------------------------------------------ GRU (gates r, z, n; PyTorch formulation)


def gru_step_forward(
    x: np.ndarray, prev_h: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, Cache]:
    """One GRU step: x (N, D), prev_h (N, H), Wx (D, 3H), Wh (H, 3H), b (3H,) -> next_h (N, H)."""
    H = prev_h.shape[1]
    ax = x @ Wx + b  # (N, 3H) input side
    ah = prev_h @ Wh  # (N, 3H) hidden side
    r = sigmoid(ax[:, :H] + ah[:, :H])
    z = sigmoid(ax[:, H : 2 * H] + ah[:, H : 2 * H])
    hn = ah[:, 2 * H :]  # (N, H) hidden part of the candidate, gated by r
    n = np.tanh(ax[:, 2 * H :] + r * hn)
    next_h = (1.0 - z) * n + z * prev_h
    return next_h, (x, prev_h, Wx, Wh, r, z, n, hn)


def gru_step_backward(dnext_h: np.ndarray, cache: Cache) -> tuple[np.ndarray, ...]:
    """Return dx, dprev_h, dWx, dWh, db for one GRU step."""
    x, prev_h, Wx, Wh, r, z, n, hn = cache
    dan = dnext_h * (1.0 - z) * (1.0 - n**2)  # (N, H) gradient of n's pre-activation
    dar = dan * hn * r * (1.0 - r)
    daz = dnext_h * (prev_h - n) * z * (1.0 - z)
    dax = np.concatenate([dar, daz, dan], axis=1)  # (N, 3H) input side
    dah = np.concatenate([dar, daz, dan * r], axis=1)  # (N, 3H) hidden side
    dprev_h = dnext_h * z + dah @ Wh.T
    return dax @ Wx.T, dprev_h, x.T @ dax, prev_h.T @ dah, dax.sum(axis=0)


def gru_forward(
    x: np.ndarray, h0: np.ndarray, Wx: np.ndarray, Wh: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, Cache]:
    """Run the GRU over a sequence: x (N, T, D), h0 (N, H) -> h (N, T, H)."""
    n, t_len, _ = x.shape
    h = np.empty((n, t_len, h0.shape[1]), dtype=h0.dtype)
    caches = []
    prev_h = h0
    for t in range(t_len):
        prev_h, cache = gru_step_forward(x[:, t], prev_h, Wx, Wh, b)
        h[:, t] = prev_h
        caches.append(cache)
    return h, caches


def gru_backward(dh: np.ndarray, cache: Cache) -> tuple[np.ndarray, ...]:
    """Backpropagate through time; dh (N, T, H) -> dx, dh0, dWx, dWh, db."""
    return _sequence_backward(dh, cache, gru_step_backward, with_cell=False)


def _sequence_backward(
    dh: np.ndarray, caches: list, step_backward: Callable[..., tuple], with_cell: bool
) -> tuple[np.ndarray, ...]:
    """Shared BPTT loop: walk the steps backwards, summing the gradients of the shared weights."""
    n, t_len, H = dh.shape
    first = caches[0]
    Wx, Wh = (first[3], first[4]) if with_cell else (first[2], first[3])  # the caches' weight slots
    dx = np.empty((n, t_len, Wx.shape[0]), dtype=dh.dtype)
    dWx, dWh = np.zeros_like(Wx), np.zeros_like(Wh)
    db = np.zeros(Wx.shape[1], dtype=dh.dtype)
    dprev_h = np.zeros((n, H), dtype=dh.dtype)
    dprev_c = np.zeros((n, H), dtype=dh.dtype)
    for t in reversed(range(t_len)):
        if with_cell:
            dx[:, t], dprev_h, dprev_c, dWx_t, dWh_t, db_t = step_backward(dh[:, t] + dprev_h, dprev_c, caches[t])
        else:
            dx[:, t], dprev_h, dWx_t, dWh_t, db_t = step_backward(dh[:, t] + dprev_h, caches[t])
        dWx += dWx_t
        dWh += dWh_t
        db += db_t
    return dx, dprev_h, dWx, dWh, db
