"""StackedCell is one time step of a multi-layer nn.LSTM / nn.GRU / nn.RNN."""
import pytest
import torch
from torch import nn

from imcap.models.cells import StackedCell, state_parts

RNNS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@pytest.mark.parametrize("rnn_type", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 3])
def test_stacked_cell_matches_torch_multilayer_rnn(rnn_type, layers):
    torch.manual_seed(0)
    rnn = RNNS[rnn_type](6, 5, layers, batch_first=True)
    cell = StackedCell(rnn_type, 6, 5, layers)
    cell.load_from_rnn(rnn)
    x = torch.randn(4, 7, 6)  # (B, T, I)
    state = tuple(torch.randn(layers, 4, 5) for _ in range(state_parts(rnn_type)))
    expected, final = rnn(x, state if rnn_type == "lstm" else state[0])
    outs = []
    for t in range(x.size(1)):
        out, state = cell(x[:, t], state)
        outs.append(out)
    torch.testing.assert_close(torch.stack(outs, 1), expected)
    torch.testing.assert_close(state, final if rnn_type == "lstm" else (final,))


def test_gates_have_separate_weights():
    # The seed's bug: one Linear shared by every gate. torch's cells keep 4 (LSTM) / 3 (GRU) gate blocks.
    assert StackedCell("lstm", 6, 5).cells[0].weight_ih.shape == (20, 6)
    assert StackedCell("gru", 6, 5).cells[0].weight_hh.shape == (15, 5)


def test_dropout_only_between_layers_and_only_in_training():
    torch.manual_seed(1)
    cell = StackedCell("lstm", 6, 5, num_layers=2, dropout=0.5)
    x = torch.randn(3, 6)
    state = cell.zero_state(3, x)
    assert [s.shape for s in state] == [(2, 3, 5), (2, 3, 5)]
    cell.eval()
    a, _ = cell(x, state)
    b, _ = cell(x, state)
    torch.testing.assert_close(a, b)
    cell.train()
    c, _ = cell(x, state)
    assert not torch.allclose(a, c)
    single = StackedCell("lstm", 6, 5, num_layers=1, dropout=0.5).train()
    d1, _ = single(x, single.zero_state(3, x))
    d2, _ = single(x, single.zero_state(3, x))
    torch.testing.assert_close(d1, d2)  # one layer: nothing to drop between layers


def test_bad_arguments():
    with pytest.raises(ValueError):
        StackedCell("transformer", 2, 2)
    with pytest.raises(ValueError):
        StackedCell("gru", 2, 2, num_layers=0)


@pytest.mark.parametrize("rnn_type", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
def test_step_projected_equals_the_cell_on_the_concatenated_input(rnn_type, layers):
    """Teacher forcing projects recurrence-free input parts once (split_input + step_projected): same outputs and gradients."""
    torch.manual_seed(0)
    cell = StackedCell(rnn_type, 3 + 4, 5, layers, dropout=0.0).double()
    a, b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True), torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    state = tuple(torch.randn(layers, 4, 5, dtype=torch.float64) for _ in range(state_parts(rnn_type)))
    expected, expected_state = cell(torch.cat([a, b], dim=1), state)
    w_a, w_b = cell.split_input((3, 4))
    out, new_state = cell.step_projected(nn.functional.linear(a, w_a, cell.cells[0].bias_ih) + nn.functional.linear(b, w_b), state)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(new_state, expected_state)
    grads = torch.autograd.grad(out.sum() + new_state[-1].sum(), [a, b, *cell.parameters()])
    expected_grads = torch.autograd.grad(expected.sum() + expected_state[-1].sum(), [a, b, *cell.parameters()])
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)
