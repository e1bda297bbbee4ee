"""The cs231n assignment 3 notebook's own value checks, reproduced by this engine."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imcap.reference.gradcheck import rel_error
from imcap.reference.layers import rnn_step_forward
from imcap.reference.model import CaptioningRNN

RNN_STEP_NEXT_H = np.array(
    [
        [-0.58172089, -0.50182032, -0.41232771, -0.31410098],
        [0.66854692, 0.79562378, 0.87755553, 0.92795967],
        [0.97934501, 0.99144213, 0.99646691, 0.99854353],
    ]
)
MODEL_LOSS = {"rnn": (9.83235591003, (-1.5, 0.3)), "lstm": (9.82445935443, (-0.5, 1.7))}  # loss, features range


@dataclass(frozen=True)
class ValueCheck:
    """A value the notebook prints next to the one this engine computes."""

    name: str
    got: float
    expected: float
    error: float  # relative error for arrays, absolute difference for losses
    tolerance: float

    @property
    def ok(self) -> bool:
        """True when the error is within tolerance."""
        return self.error < self.tolerance


def rnn_step_check() -> ValueCheck:
    """rnn_step_forward on the notebook's linspace inputs (N, D, H = 3, 10, 4)."""
    N, D, H = 3, 10, 4
    x = np.linspace(-0.4, 0.7, num=N * D).reshape(N, D)
    prev_h = np.linspace(-0.2, 0.5, num=N * H).reshape(N, H)
    Wx = np.linspace(-0.1, 0.9, num=D * H).reshape(D, H)
    Wh = np.linspace(-0.3, 0.7, num=H * H).reshape(H, H)
    b = np.linspace(-0.2, 0.4, num=H)
    next_h, _ = rnn_step_forward(x, prev_h, Wx, Wh, b)
    err = rel_error(next_h, RNN_STEP_NEXT_H)
    return ValueCheck("rnn_step_forward next_h[0, 0]", float(next_h[0, 0]), RNN_STEP_NEXT_H[0, 0], err, 1e-8)


def model_loss_check(cell: str) -> ValueCheck:
    """CaptioningRNN.loss with every param set to linspace(-1.4, 1.3) (N, D, W, H, T = 10, 20, 30, 40, 13)."""
    N, D, W, H, T = 10, 20, 30, 40, 13
    expected, (lo, hi) = MODEL_LOSS[cell]
    word_to_idx = {"<NULL>": 0, "cat": 2, "dog": 3}
    model = CaptioningRNN(word_to_idx, input_dim=D, wordvec_dim=W, hidden_dim=H, cell_type=cell)
    for name, value in model.params.items():
        model.params[name] = np.linspace(-1.4, 1.3, num=value.size).reshape(value.shape)
    features = np.linspace(lo, hi, num=N * D).reshape(N, D)
    captions = (np.arange(N * T) % len(word_to_idx)).reshape(N, T)
    loss, _ = model.loss(features, captions)
    return ValueCheck(f"CaptioningRNN[{cell}] loss", loss, expected, abs(loss - expected), 1e-10)


def notebook_checks() -> list[ValueCheck]:
    """Every value check of the notebook that the issue lists."""
    return [rnn_step_check()] + [model_loss_check(cell) for cell in MODEL_LOSS]
