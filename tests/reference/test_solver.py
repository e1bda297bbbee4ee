"""CaptioningSolver and the update rules: overfitting 50 captions, lr decay, best params by val loss."""
import numpy as np
import pytest

from imcap.errors import ImcapError
from imcap.reference import optim
from imcap.reference.data import overfit_set
from imcap.reference.model import CaptioningRNN
from imcap.reference.options import RULES
from imcap.reference.solver import CaptionData, CaptioningSolver


@pytest.fixture(scope="module")
def small_set():
    data, vocab, source = overfit_set(50, feature_dim=64, seed=0, flickr8k_dir=None)
    assert source == "synthetic words" and len(data) == 50
    return data, vocab


@pytest.mark.parametrize("cell, hidden, limit", [("rnn", 64, 0.1), ("lstm", 32, 0.5)])
def test_overfits_50_captions(small_set, cell, hidden, limit):
    data, vocab = small_set
    model = CaptioningRNN(vocab.word_to_idx, 64, wordvec_dim=32, hidden_dim=hidden, cell_type=cell, seed=0)
    solver = CaptioningSolver(model, data, update_rule="adam", optim_config={"learning_rate": 2e-2},
                              batch_size=25, num_epochs=100)
    solver.train()
    assert len(solver.loss_history) == 200 and len(solver.epoch_loss_history) == 100
    assert solver.loss_history[0] > 20 * limit
    assert solver.loss_history[-1] < limit and solver.best_loss < limit
    assert solver.check_loss(data) == pytest.approx(solver.best_loss)  # model holds the best params
    sampled = model.sample(data.features[:10], max_length=data.captions.shape[1])
    assert model.decode(sampled) == [vocab.decode(c) for c in data.captions[:10]]


def test_update_rules_minimise_a_quadratic():
    assert RULES == tuple(optim.UPDATE_RULES)
    target = np.array([1.0, -2.0, 0.5])
    for name, rule in optim.UPDATE_RULES.items():
        w, config = np.zeros(3), {"learning_rate": 0.05}
        for _ in range(500):
            w, config = rule(w, 2 * (w - target), config)
        assert np.abs(w - target).max() < 1e-2, name


def test_adam_and_momentum_match_their_formulas_for_two_steps():
    w, dw = np.array([1.0, -1.0]), np.array([0.5, 2.0])
    w1, c = optim.adam(w, dw, {"learning_rate": 0.1})
    np.testing.assert_allclose(w1, w - 0.1 * dw / (np.abs(dw) + 1e-8))  # bias correction: m_hat = dw, v_hat = dw^2
    w2, _ = optim.adam(w1, dw, c)
    np.testing.assert_allclose(w2, w1 - 0.1 * dw / (np.abs(dw) + 1e-8), rtol=1e-7)
    v1, c = optim.sgd_momentum(w, dw, {"learning_rate": 0.1, "momentum": 0.9})
    v2, _ = optim.sgd_momentum(v1, dw, c)
    np.testing.assert_allclose(v2, w - 0.1 * dw - (0.9 * 0.1 * dw + 0.1 * dw))


def test_lr_decay_and_best_params_by_val_loss(small_set):
    data, vocab = small_set
    train = CaptionData(data.features[:40], data.captions[:40])
    val = CaptionData(data.features[40:], data.captions[40:])
    model = CaptioningRNN(vocab.word_to_idx, 64, 16, 16, cell_type="rnn", seed=1)
    solver = CaptioningSolver(model, train, val, update_rule="sgd_momentum",
                              optim_config={"learning_rate": 0.05}, lr_decay=0.5, batch_size=20, num_epochs=6)
    solver.train()
    assert all(c["learning_rate"] == pytest.approx(0.05 * 0.5**6) for c in solver.optim_configs.values())
    best = int(np.argmin(solver.epoch_loss_history))
    assert solver.best_loss == min(solver.epoch_loss_history)
    assert solver.check_loss(val) == pytest.approx(solver.epoch_loss_history[best])


def test_caption_data_maps_captions_to_feature_rows():
    features = np.arange(6.0).reshape(3, 2)
    captions = np.array([[1, 4, 2], [1, 5, 2], [1, 6, 2], [1, 7, 2]])
    data = CaptionData(features, captions, np.array([2, 0, 0, 1]))
    f, c = data.batch(np.array([0, 3]))
    np.testing.assert_array_equal(f, features[[2, 1]])
    np.testing.assert_array_equal(c, captions[[0, 3]])
    with pytest.raises(ImcapError, match="4 captions but 3 feature rows"):
        CaptionData(features, captions)
    with pytest.raises(ImcapError, match="image_idxs"):
        CaptionData(features, captions, np.array([0, 1, 2, 3]))
    with pytest.raises(ImcapError, match="int array"):
        CaptionData(features, captions.astype(float), np.array([0, 1, 2, 0]))
    with pytest.raises(ImcapError, match="update_rule"):
        CaptioningSolver(CaptioningRNN({"<NULL>": 0}, 2, 2, 2), CaptionData(features, captions[:3]), update_rule="lbfgs")
