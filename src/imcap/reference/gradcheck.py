"""Numerical gradients and a gradient check of every layer and of the full CaptioningRNN."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from imcap.reference import layers as L
from imcap.reference.model import CELL_TYPES, GATES, CaptioningRNN

TOLERANCE = 1e-7  # largest relative error a float64 check may show
STEP, ORDER = 1e-3, 4  # finite differences of the checks: O(STEP**4) truncation, tiny rounding error


def rel_error(x: np.ndarray, y: np.ndarray) -> float:
    """Largest element-wise relative error |x - y| / max(1e-8, |x| + |y|)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y))))


def _stencil(h: float, order: int) -> tuple[tuple[float, float], ...]:
    """(weight, offset) pairs of a centred-difference derivative of accuracy O(h**order)."""
    if order == 2:
        return ((1 / (2 * h), h),)
    if order == 4:
        return ((8 / (12 * h), h), (-1 / (12 * h), 2 * h))
    raise ValueError(f"order must be 2 or 4, not {order}")


def eval_numerical_gradient(
    f: Callable[[np.ndarray], float], x: np.ndarray, h: float = 1e-5, order: int = 2
) -> np.ndarray:
    """Centred-difference gradient of the scalar f at x (x is perturbed in place and restored).

    order=2 is (f(x+h) - f(x-h)) / 2h; order=4 adds the 2h points for an O(h**4) error.
    """
    return eval_numerical_gradient_array(lambda v: np.asarray(f(v)), x, np.asarray(1.0), h, order)


def eval_numerical_gradient_array(
    f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, df: np.ndarray, h: float = 1e-5, order: int = 2
) -> np.ndarray:
    """Centred-difference gradient of sum(f(x) * df) at x, for an array-valued f and upstream df."""
    grad = np.zeros_like(x)
    for ix in np.ndindex(x.shape):
        old = x[ix]
        total = 0.0
        for weight, step in _stencil(h, order):
            x[ix] = old + step
            pos = np.array(f(x), copy=True)
            x[ix] = old - step
            neg = np.array(f(x), copy=True)
            total += weight * np.sum((pos - neg) * df)  # differences first: exactly 0 where f ignores x[ix]
        x[ix] = old
        grad[ix] = total
    return grad


@dataclass(frozen=True)
class Check:
    """One compared gradient: `error` is rel_error(analytic, numeric), `abs_error` the largest |difference|."""

    layer: str
    wrt: str
    error: float
    abs_error: float

    @property
    def ok(self) -> bool:
        """True when the relative error is below TOLERANCE."""
        return self.error < TOLERANCE


def _compare(layer: str, wrt: str, analytic: np.ndarray, numeric: np.ndarray) -> Check:
    """Return the Check of one analytic gradient against its numerical estimate."""
    return Check(layer, wrt, rel_error(analytic, numeric), float(np.max(np.abs(analytic - numeric))))


def _check_layer(
    layer: str, forward: Callable[..., np.ndarray], inputs: dict[str, np.ndarray], analytic: dict[str, np.ndarray],
    dout: np.ndarray,
) -> list[Check]:
    """Compare `analytic` gradients with numerical ones of sum(forward(**inputs) * dout)."""
    checks = []
    for name, grad in analytic.items():
        numeric = eval_numerical_gradient_array(lambda _: forward(**inputs), inputs[name], dout, STEP, ORDER)
        checks.append(_compare(layer, name, grad, numeric))
    return checks


def check_layers(seed: int = 0, cells: tuple[str, ...] = CELL_TYPES) -> list[Check]:
    """Gradient-check every layer (the recurrent ones of `cells`) on small random float64 inputs."""
    rng = np.random.default_rng(seed)
    N, T, D, H, V = 3, 4, 5, 6, 7
    checks: list[Check] = []

    x, w, b = rng.standard_normal((N, D)), rng.standard_normal((D, H)), rng.standard_normal(H)
    out, cache = L.affine_forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = L.affine_backward(dout, cache)
    fwd = lambda x, w, b: L.affine_forward(x, w, b)[0]  # noqa: E731
    checks += _check_layer("affine", fwd, {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db}, dout)

    x = rng.standard_normal((N, T, D))
    out, cache = L.temporal_affine_forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = L.temporal_affine_backward(dout, cache)
    fwd = lambda x, w, b: L.temporal_affine_forward(x, w, b)[0]  # noqa: E731
    checks += _check_layer("temporal_affine", fwd, {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db}, dout)

    words, W = rng.integers(0, V, size=(N, T)), rng.standard_normal((V, D))
    out, cache = L.word_embedding_forward(words, W)
    dout = rng.standard_normal(out.shape)
    fwd = lambda W: L.word_embedding_forward(words, W)[0]  # noqa: E731
    checks += _check_layer("word_embedding", fwd, {"W": W}, {"W": L.word_embedding_backward(dout, cache)}, dout)

    scores, y = rng.standard_normal((N, T, V)), rng.integers(0, V, size=(N, T))
    mask = rng.random((N, T)) > 0.3
    _, dscores = L.temporal_softmax_loss(scores, y, mask)
    numeric = eval_numerical_gradient(lambda s: L.temporal_softmax_loss(s, y, mask)[0], scores, STEP, ORDER)
    checks.append(_compare("temporal_softmax_loss", "x", dscores, numeric))

    for cell in cells:  # one generator per cell: its inputs do not depend on which other cells are checked
        checks += _check_cell(cell, np.random.default_rng((seed, CELL_TYPES.index(cell))), N, T, D, H)
    return checks


def _check_cell(cell: str, rng: np.random.Generator, N: int, T: int, D: int, H: int) -> list[Check]:
    """Gradient-check one cell type's step and sequence layers."""
    G = GATES[cell] * H
    x, h = rng.standard_normal((N, D)), rng.standard_normal((N, H))
    Wx, Wh, b = rng.standard_normal((D, G)) * 0.5, rng.standard_normal((H, G)) * 0.5, rng.standard_normal(G) * 0.5
    dout = rng.standard_normal((N, H))
    checks: list[Check] = []

    if cell == "lstm":
        c, dc = rng.standard_normal((N, H)), rng.standard_normal((N, H))
        _, _, cache = L.lstm_step_forward(x, h, c, Wx, Wh, b)
        dx, dh, dcp, dWx, dWh, db = L.lstm_step_backward(dout, dc, cache)
        inputs = {"x": x, "prev_h": h, "prev_c": c, "Wx": Wx, "Wh": Wh, "b": b}
        analytic = {"x": dx, "prev_h": dh, "prev_c": dcp, "Wx": dWx, "Wh": dWh, "b": db}
        h_of = lambda _: L.lstm_step_forward(**inputs)[0]  # noqa: E731
        c_of = lambda _: L.lstm_step_forward(**inputs)[1]  # noqa: E731
        for name, grad in analytic.items():  # both outputs depend on every input
            numeric = eval_numerical_gradient_array(h_of, inputs[name], dout, STEP, ORDER)
            numeric += eval_numerical_gradient_array(c_of, inputs[name], dc, STEP, ORDER)
            checks.append(_compare("lstm_step", name, grad, numeric))
    else:
        step_forward, step_backward = {
            "rnn": (L.rnn_step_forward, L.rnn_step_backward),
            "gru": (L.gru_step_forward, L.gru_step_backward),
        }[cell]
        _, cache = step_forward(x, h, Wx, Wh, b)
        dx, dh, dWx, dWh, db = step_backward(dout, cache)
        checks += _check_layer(
            f"{cell}_step",
            lambda **kw: step_forward(**kw)[0],
            {"x": x, "prev_h": h, "Wx": Wx, "Wh": Wh, "b": b},
            {"x": dx, "prev_h": dh, "Wx": dWx, "Wh": dWh, "b": db},
            dout,
        )

    forward, backward = {
        "rnn": (L.rnn_forward, L.rnn_backward),
        "lstm": (L.lstm_forward, L.lstm_backward),
        "gru": (L.gru_forward, L.gru_backward),
    }[cell]
    xs = rng.standard_normal((N, T, D))
    out, cache = forward(xs, h, Wx, Wh, b)
    dout = rng.standard_normal(out.shape)
    dx, dh0, dWx, dWh, db = backward(dout, cache)
    checks += _check_layer(
        cell,
        lambda **kw: forward(**kw)[0],
        {"x": xs, "h0": h, "Wx": Wx, "Wh": Wh, "b": b},
        {"x": dx, "h0": dh0, "Wx": dWx, "Wh": dWh, "b": db},
        dout,
    )
    return checks


def check_model(cell: str, seed: int = 0) -> list[Check]:
    """Gradient-check every parameter of a small CaptioningRNN with this cell type."""
    rng = np.random.default_rng(seed)
    N, D, W, H, T = 2, 4, 5, 6, 5
    words = ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(6)]
    model = CaptioningRNN({w: i for i, w in enumerate(words)}, D, W, H, cell_type=cell)
    for name, value in model.params.items():  # O(1) weights: no vanishing gradient drowns in rounding noise
        model.params[name] = 0.5 * rng.standard_normal(value.shape)
    features = rng.standard_normal((N, D))
    captions = rng.integers(0, len(words), size=(N, T))
    captions[:, 0] = 1
    captions[0, -2:] = 0  # padding, masked out of the loss
    _, grads = model.loss(features, captions)
    loss_of = lambda _: model.loss(features, captions, backward=False)[0]  # noqa: E731
    checks = []
    for name in sorted(model.params):
        numeric = eval_numerical_gradient(loss_of, model.params[name], STEP, ORDER)
        checks.append(_compare(f"CaptioningRNN[{cell}]", name, grads[name], numeric))
    return checks


def gradcheck(seed: int = 0, cells: tuple[str, ...] = CELL_TYPES) -> list[Check]:
    """Check every layer and the full model for each cell type; returns one Check per gradient."""
    checks = check_layers(seed, cells)
    for cell in cells:
        checks += check_model(cell, seed)
    return checks
