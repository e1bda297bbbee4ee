"""The PyTorch ShowTell decoder in float64 gives this engine's loss, gradients and greedy samples."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from imcap import decoding  # noqa: E402
from imcap.errors import ImcapError  # noqa: E402
from imcap.models.show_tell import ShowTell  # noqa: E402
from imcap.reference.data import overfit_set  # noqa: E402
from imcap.reference.model import CaptioningRNN  # noqa: E402
from imcap.reference.solver import CaptioningSolver  # noqa: E402
from imcap.reference.torch_bridge import (  # noqa: E402
    ProjectedStart,
    gate_index,
    load_into_show_tell,
    reference_grads,
    reference_params,
)

WORDS = ["<NULL>", "<START>", "<END>", "<UNK>"] + [f"w{i}" for i in range(8)]
W2I = {w: i for i, w in enumerate(WORDS)}
N, D, W, H, T = 4, 6, 5, 7, 8


def random_case(cell: str, seed: int):
    """A reference model with O(1) random weights, features, and captions with <END> and <NULL> padding."""
    rng = np.random.default_rng(seed)
    model = CaptioningRNN(W2I, D, W, H, cell_type=cell)
    for k, v in model.params.items():
        model.params[k] = 0.5 * rng.standard_normal(v.shape)
    features = rng.standard_normal((N, D))
    captions = rng.integers(3, len(WORDS), size=(N, T))
    captions[:, 0] = W2I["<START>"]
    captions[1, 5], captions[1, 6:] = W2I["<END>"], W2I["<NULL>"]
    return model, features, captions


def torch_twin(model: CaptioningRNN, cell: str) -> ProjectedStart:
    vocab_size = len(model.word_to_idx) - 1
    decoder = ShowTell(vocab_size, W, H, num_layers=1, dropout=0.5, rnn_type=cell).double().eval()
    load_into_show_tell(decoder, model.params)
    return ProjectedStart(decoder, model.params["W_proj"], model.params["b_proj"])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_same_loss_and_gradients(cell):
    model, features, captions = random_case(cell, seed=1)
    loss, grads = model.loss(features, captions)
    twin = torch_twin(model, cell)
    torch_loss = twin.loss(torch.from_numpy(features), torch.from_numpy(captions))
    torch_loss.backward()
    torch_grads = reference_grads(twin.decoder)
    torch_grads["W_proj"] = twin.W_proj.grad.numpy()
    torch_grads["b_proj"] = twin.b_proj.grad.numpy()
    assert abs(torch_loss.item() - loss) < 1e-8 * abs(loss)
    assert set(torch_grads) == set(grads)
    for k in grads:
        np.testing.assert_allclose(torch_grads[k], grads[k], rtol=1e-8, atol=1e-12, err_msg=k)
    # PyTorch's second bias gets the same gradient as the first for LSTM and RNN, and for GRU's r and z gates
    bias_hh = twin.decoder.rnn.bias_hh_l0.grad.numpy()[np.argsort(gate_index(cell, H))]
    same = slice(None) if cell != "gru" else slice(0, 2 * H)
    np.testing.assert_allclose(bias_hh[same], grads["b"][same], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_same_greedy_samples_through_imcap_decoding(cell):
    data, vocab, _ = overfit_set(8, feature_dim=D, seed=6, flickr8k_dir=None)  # captions of 4 to 12 words
    model = CaptioningRNN(vocab.word_to_idx, D, W, H, cell_type=cell, seed=6)
    CaptioningSolver(model, data, optim_config={"learning_rate": 3e-2}, batch_size=8, num_epochs=40).train()
    ours = model.sample(data.features, max_length=14)
    twin = torch_twin(model, cell)
    with torch.no_grad():
        ids, _ = decoding.greedy(twin, torch.from_numpy(data.features), max_length=13)  # <= 13 words, <END>
    theirs = np.zeros_like(ours)
    theirs[:, : ids.shape[1]] = ids.numpy()
    np.testing.assert_array_equal(theirs[:, :13], ours[:, :13])
    assert set(theirs[:, 13]) <= {vocab.word_to_idx["<END>"], 0}  # imcap.decoding forces <END> after 13 words
    lengths = {len(caption.split()) for caption in model.decode(ours)}
    assert len(lengths) >= 3  # rows stop at different steps


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_pytorch_initialised_decoder_maps_to_the_reference(cell):
    torch.manual_seed(3)
    decoder = ShowTell(len(WORDS) - 1, W, H, rnn_type=cell).double().eval()
    if cell == "gru":
        with torch.no_grad():
            decoder.rnn.bias_hh_l0[2 * H :] = 0.0  # b_hn has no counterpart in the reference GRU
    params = reference_params(decoder)
    rng = np.random.default_rng(4)
    params["W_proj"], params["b_proj"] = rng.standard_normal((D, H)), rng.standard_normal(H)
    model = CaptioningRNN(W2I, D, W, H, cell_type=cell)
    model.params = params
    _, features, captions = random_case(cell, seed=5)
    twin = ProjectedStart(decoder, params["W_proj"], params["b_proj"])
    torch_loss = twin.loss(torch.from_numpy(features), torch.from_numpy(captions)).item()
    assert model.loss(features, captions)[0] == pytest.approx(torch_loss, rel=1e-10)


def test_lstm_gate_blocks_are_reordered():
    np.testing.assert_array_equal(gate_index("lstm", 2), [0, 1, 2, 3, 6, 7, 4, 5])  # i f o g -> i f g o
    np.testing.assert_array_equal(gate_index("gru", 2), np.arange(6))


def test_unmappable_decoders_are_refused():
    gru = ShowTell(5, 4, 3, rnn_type="gru").double()
    with pytest.raises(ImcapError, match="bias_hh_n"):
        reference_params(gru)
    with pytest.raises(ImcapError, match="1-layer"):
        reference_params(ShowTell(5, 4, 3, num_layers=2))
