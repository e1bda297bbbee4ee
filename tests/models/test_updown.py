"""Up-Down: the two LSTMs' inputs, attention over the K features, region and grid features, a float64 gradcheck."""
import pytest
import torch

from imcap.data.vocab import START
from imcap.models import ModelArgs, UpDown, build_model

V, C, K = 20, 7, 9


def make(seed=0, rnn_type="lstm", layers=1, dtype=torch.float32) -> UpDown:
    torch.manual_seed(seed)
    m = UpDown(V, C, input_encoding_size=8, rnn_size=10, num_layers=layers, dropout=0.0, rnn_type=rnn_type)
    with torch.no_grad():
        m.att_w.weight.mul_(10.0)  # peaky attention, so that it depends on the state
    return m.to(dtype).eval()


def test_lstm_inputs_are_the_papers():
    m = make()
    assert m.att_cell.cells[0].input_size == 10 + 8 + 8  # [h_lang, mean feature, word]
    assert m.lang_cell.cells[0].input_size == 8 + 10  # [attended feature, h_att]


@pytest.mark.parametrize("rnn_type,layers", [("lstm", 1), ("gru", 2)])
@torch.no_grad()
def test_attention_is_over_the_regions_and_the_prediction_ignores_their_order(rnn_type, layers):
    m = make(rnn_type=rnn_type, layers=layers)
    feats = torch.randn(3, K, C)
    state = m.init_state(feats)
    assert all(float(s.abs().sum()) == 0 for s in (*state[0], *state[1]))  # both LSTMs start from zeros
    lp, state, alpha = m.step(torch.full((3,), START), state)
    lp2, _, alpha2 = m.step(torch.full((3,), 6), state)
    assert alpha.shape == (3, K) and not torch.allclose(alpha, alpha2)  # the attention moves as the words go
    perm = torch.randperm(K)
    state_p = m.init_state(feats[:, perm])
    lp_p, state_p, alpha_p = m.step(torch.full((3,), START), state_p)
    lp2_p, _, alpha2_p = m.step(torch.full((3,), 6), state_p)
    torch.testing.assert_close(alpha_p, alpha[:, perm])
    torch.testing.assert_close(alpha2_p, alpha2[:, perm])
    torch.testing.assert_close(lp2_p, lp2, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cnn,feature_dim,k", [("small", 0, 64), ("none", 2048, 36)])
def test_grid_and_region_features(cnn, feature_dim, k):
    model = build_model(ModelArgs(model="updown", vocab_size=V, cnn=cnn, cnn_width=4, feature_dim=feature_dim, input_encoding_size=8, rnn_size=8))
    if cnn == "none":
        feats = model.encode_features(torch.randn(2, k, feature_dim))  # e.g. 36 bottom-up regions of 2048
    else:
        feats = model.encode(torch.rand(2, 3, 64, 64))  # the small CNN's 8 x 8 grid
    assert feats.shape[1] == k
    logprobs, alphas = model.decoder.forward_with_attention(feats, torch.randint(1, V + 1, (2, 5)))
    assert logprobs.shape == (2, 5, V + 1) and alphas.shape == (2, 5, k)


def test_float64_gradcheck_of_a_step():
    m = make(dtype=torch.float64)
    feats = torch.randn(2, 4, C, dtype=torch.float64, requires_grad=True)

    def second_step(f):
        _, state, _ = m.step(torch.tensor([START, START]), m.init_state(f))
        logprobs, state, alpha = m.step(torch.tensor([5, 9]), state)
        return logprobs, alpha, state[1][1]  # log-probabilities, attention, the language LSTM's cell

    assert torch.autograd.gradcheck(second_step, (feats,), eps=1e-6, atol=1e-5)
