"""CaptioningRNN: the notebook's losses, full-model gradient checks, masking and greedy sampling."""
import numpy as np
import pytest

from imcap.errors import ImcapError
from imcap.reference.gradcheck import check_model
from imcap.reference.model import CaptioningRNN

WORDS = ["<NULL>", "<START>", "<END>", "<UNK>", "a", "cat", "dog", "sits"]
W2I = {w: i for i, w in enumerate(WORDS)}


@pytest.mark.parametrize("cell, lo, hi, expected", [
    ("rnn", -1.5, 0.3, 9.83235591003),
    ("lstm", -0.5, 1.7, 9.82445935443),
])
def test_loss_matches_the_notebook(cell, lo, hi, expected):
    N, D, W, H, T = 10, 20, 30, 40, 13
    word_to_idx = {"<NULL>": 0, "cat": 2, "dog": 3}
    model = CaptioningRNN(word_to_idx, input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell, dtype=np.float64)
    for k, v in model.params.items():
        model.params[k] = np.linspace(-1.4, 1.3, num=v.size).reshape(*v.shape)
    features = np.linspace(lo, hi, num=N * D).reshape(N, D)
    captions = (np.arange(N * T) % len(word_to_idx)).reshape(N, T)
    loss, grads = model.loss(features, captions)
    assert abs(loss - expected) < 1e-10
    assert {k: g.shape for k, g in grads.items()} == {k: p.shape for k, p in model.params.items()}


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_full_model_gradient_check(cell):
    checks = check_model(cell, seed=0)
    assert sorted(c.wrt for c in checks) == sorted(["W_proj", "b_proj", "W_embed", "Wx", "Wh", "b", "W_vocab", "b_vocab"])
    assert max(c.error for c in checks) < 1e-7, checks


def test_param_shapes_and_dtype():
    model = CaptioningRNN(W2I, input_dim=6, wordvec_dim=5, hidden_dim=4, cell_type="gru", dtype=np.float32, seed=1)
    shapes = {k: v.shape for k, v in model.params.items()}
    assert shapes == {"W_proj": (6, 4), "b_proj": (4,), "W_embed": (8, 5), "Wx": (5, 12), "Wh": (4, 12),
                      "b": (12,), "W_vocab": (4, 8), "b_vocab": (8,)}
    assert all(v.dtype == np.float32 for v in model.params.values())
    loss, grads = model.loss(np.ones((2, 6)), np.array([[1, 4, 5, 2], [1, 6, 2, 0]]))
    assert np.isfinite(loss) and all(g.dtype == np.float32 for g in grads.values())


def test_null_padding_is_masked_out():
    model = CaptioningRNN(W2I, input_dim=6, wordvec_dim=5, hidden_dim=4, cell_type="lstm", seed=2)
    features = np.random.default_rng(0).standard_normal((2, 6))
    short = np.array([[1, 4, 5, 2], [1, 6, 7, 2]])
    padded = np.concatenate([short, np.zeros((2, 3), dtype=int)], axis=1)
    loss, grads = model.loss(features, short)
    loss_p, grads_p = model.loss(features, padded)
    assert loss_p == pytest.approx(loss, rel=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads_p[k], grads[k], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_greedy_sample_works_for_any_batch_size(n):
    model = CaptioningRNN(W2I, input_dim=6, wordvec_dim=5, hidden_dim=4, cell_type="rnn", seed=3)
    features = np.random.default_rng(n).standard_normal((n, 6))
    captions = model.sample(features, max_length=7)
    assert captions.shape == (n, 7)
    for i in range(n):  # each row's samples equal those of the row sampled alone
        np.testing.assert_array_equal(model.sample(features[i : i + 1], max_length=7)[0], captions[i])
    assert not np.isin(captions[:, 0], [W2I["<NULL>"], W2I["<START>"]]).any()


def test_sample_stops_each_row_at_end():
    model = CaptioningRNN(W2I, input_dim=3, wordvec_dim=5, hidden_dim=4, cell_type="rnn", seed=4)
    for name in model.params:
        model.params[name][:] = 0.0  # h = tanh(b) at every step
    model.params["b_vocab"][W2I["cat"]] = 1.0
    model.params["W_vocab"][0, W2I["<END>"]] = 10.0  # <END> wins when h[0] > 0.1
    features = np.zeros((2, 3))
    model.params["b"][0] = -3.0
    np.testing.assert_array_equal(model.sample(features, max_length=4), [[W2I["cat"]] * 4] * 2)
    model.params["b"][0] = 3.0  # <END> at once, then <NULL> padding
    np.testing.assert_array_equal(model.sample(features, max_length=4), [[W2I["<END>"], 0, 0, 0]] * 2)
    assert model.decode(np.array([[4, 5, 2, 6], [1, 6, 0, 5]])) == ["a cat", "dog"]


def test_bad_construction_is_a_user_error():
    with pytest.raises(ImcapError):
        CaptioningRNN(W2I, cell_type="transformer")
    with pytest.raises(ImcapError):
        CaptioningRNN({"cat": 0})
    with pytest.raises(ImcapError):
        CaptioningRNN({"<NULL>": 0, "cat": 1}, input_dim=2, wordvec_dim=2, hidden_dim=2).sample(np.zeros((1, 2)))
