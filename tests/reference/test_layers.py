"""Layer values from the cs231n notebook, numerically stable activations, and every layer's gradient check."""
import numpy as np
import pytest

from imcap.reference import gradcheck as G
from imcap.reference import layers as L


def test_rnn_step_forward_matches_the_notebook():
    N, D, H = 3, 10, 4
    x = np.linspace(-0.4, 0.7, num=N * D).reshape(N, D)
    prev_h = np.linspace(-0.2, 0.5, num=N * H).reshape(N, H)
    Wx = np.linspace(-0.1, 0.9, num=D * H).reshape(D, H)
    Wh = np.linspace(-0.3, 0.7, num=H * H).reshape(H, H)
    b = np.linspace(-0.2, 0.4, num=H)
    next_h, _ = L.rnn_step_forward(x, prev_h, Wx, Wh, b)
    expected = np.array([
        [-0.58172089, -0.50182032, -0.41232771, -0.31410098],
        [0.66854692, 0.79562378, 0.87755553, 0.92795967],
        [0.97934501, 0.99144213, 0.99646691, 0.99854353],
    ])
    assert G.rel_error(next_h, expected) < 1e-8


def test_sigmoid_and_softmax_are_stable_at_extremes():
    x = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = L.sigmoid(x)
        p = L.softmax(np.array([[1000.0, 0.0, -1000.0]]))
        loss, dx = L.temporal_softmax_loss(np.array([[[1e4, 0.0, -1e4]]]), np.array([[1]]), np.array([[True]]))
    assert s[0] == 0.0 and s[2] == 0.5 and s[4] == 1.0
    assert abs(s[1] - 1 / (1 + np.exp(30.0))) < 1e-20 and abs(s[3] - 1 / (1 + np.exp(-30.0))) < 1e-16
    np.testing.assert_allclose(p, [[1.0, 0.0, 0.0]])
    assert loss == pytest.approx(1e4) and np.isfinite(dx).all()


def test_temporal_softmax_loss_sums_unmasked_tokens_over_n():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((4, 5, 6)), rng.integers(0, 6, size=(4, 5))
    mask = rng.random((4, 5)) > 0.4
    loss, _ = L.temporal_softmax_loss(x, y, mask)
    p = np.exp(x) / np.exp(x).sum(axis=2, keepdims=True)
    manual = -sum(np.log(p[n, t, y[n, t]]) for n in range(4) for t in range(5) if mask[n, t]) / 4
    assert loss == pytest.approx(manual, rel=1e-12)


def test_numerical_gradients_of_known_functions():
    x = np.array([[0.3, -1.2], [2.0, 0.5]])
    for order in (2, 4):
        g = G.eval_numerical_gradient(lambda v: float(np.sum(v**3)), x.copy(), h=1e-4, order=order)
        assert G.rel_error(g, 3 * x**2) < (1e-7 if order == 2 else 1e-11)
    df = np.array([[1.0, -2.0], [0.5, 3.0]])
    g = G.eval_numerical_gradient_array(np.sin, x.copy(), df, h=1e-3, order=4)
    assert G.rel_error(g, np.cos(x) * df) < 1e-10
    with pytest.raises(ValueError):
        G.eval_numerical_gradient(np.sum, x, order=3)


def test_rel_error_is_the_largest_elementwise_error():
    assert G.rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    assert G.rel_error(np.array([1.0, 1.0]), np.array([1.0, 3.0])) == pytest.approx(0.5)


def test_every_layer_passes_its_gradient_check():
    checks = G.check_layers(seed=0)
    names = {c.layer for c in checks}
    assert names == {"affine", "temporal_affine", "word_embedding", "temporal_softmax_loss",
                     "rnn_step", "rnn", "lstm_step", "lstm", "gru_step", "gru"}
    bad = [c for c in checks if c.error >= 1e-7]
    assert not bad, bad


def test_gradient_check_catches_a_wrong_backward(monkeypatch):
    right = L.gru_step_backward

    def wrong(dnext_h, cache):  # dWh off by 0.1%
        dx, dprev_h, dWx, dWh, db = right(dnext_h, cache)
        return dx, dprev_h, dWx, dWh * 1.001, db

    monkeypatch.setattr(L, "gru_step_backward", wrong)
    failed = {(c.layer, c.wrt) for c in G.check_layers(seed=0, cells=("gru",)) if not c.ok}
    assert failed == {("gru_step", "Wh"), ("gru", "Wh")}


def test_gru_matches_pytorchs_equations_written_out():
    rng = np.random.default_rng(3)
    N, D, H = 2, 3, 4
    x, h = rng.standard_normal((N, D)), rng.standard_normal((N, H))
    Wx, Wh, b = rng.standard_normal((D, 3 * H)), rng.standard_normal((H, 3 * H)), rng.standard_normal(3 * H)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    r = sig(x @ Wx[:, :H] + b[:H] + h @ Wh[:, :H])
    z = sig(x @ Wx[:, H:2 * H] + b[H:2 * H] + h @ Wh[:, H:2 * H])
    n = np.tanh(x @ Wx[:, 2 * H:] + b[2 * H:] + r * (h @ Wh[:, 2 * H:]))
    next_h, _ = L.gru_step_forward(x, h, Wx, Wh, b)
    np.testing.assert_allclose(next_h, (1 - z) * n + z * h, rtol=1e-12)
