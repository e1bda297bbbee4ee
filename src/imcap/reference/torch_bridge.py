"""Copy CaptioningRNN weights into imcap's PyTorch ShowTell decoder and back (the one module using torch).

Mapping (reference param -> ShowTell parameter), for a 1-layer decoder with image_input="first":
  W_embed (V, W)  -> embed.weight
  Wx (W, G)       -> rnn.weight_ih_l0 = Wx[:, perm].T
  Wh (H, G)       -> rnn.weight_hh_l0 = Wh[:, perm].T
  b (G,)          -> rnn.bias_ih_l0 = b[perm], rnn.bias_hh_l0 = 0
  W_vocab (H, V)  -> logit.weight = W_vocab.T
  b_vocab (V,)    -> logit.bias
perm (`gate_index`) reorders the LSTM gate blocks from this engine's i, f, o, g to PyTorch's i, f, g, o;
GRU (r, z, n) and RNN keep their order. PyTorch adds bias_ih and bias_hh, so they fold into one b, except
GRU's bias_hh_n, which sits inside r * (W_hn h + b_hn) and has no counterpart here (it must be 0).
W_proj and b_proj are not part of ShowTell: `ProjectedStart` wraps the decoder so that it starts from
h0 = features @ W_proj + b_proj (c0 = 0), the cs231n model, instead of reading an image embedding at t=0.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from imcap.errors import ImcapError
from imcap.models.decoder import Decoder
from imcap.models.show_tell import ShowTell

COVERED = ("embed.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "logit.weight", "logit.bias")
_TORCH_BLOCK_ORDER = {"lstm": (0, 1, 3, 2), "gru": (0, 1, 2), "rnn": (0,)}  # reference block of each torch block


def gate_index(cell: str, hidden: int) -> np.ndarray:
    """Columns of the reference Wx/Wh/b in PyTorch's gate order: torch_rows = reference_cols[index]."""
    return np.concatenate([np.arange(k * hidden, (k + 1) * hidden) for k in _TORCH_BLOCK_ORDER[cell]])


def _check_decoder(decoder: nn.Module) -> str:
    """Return the decoder's cell type after checking it has the reference model's layout."""
    if getattr(decoder, "num_layers", 1) != 1 or getattr(decoder, "image_input", "first") != "first":
        raise ImcapError("decoder: only 1-layer ShowTell decoders with image_input='first' map to CaptioningRNN")
    return decoder.rnn_type


def show_tell_state(params: Mapping[str, np.ndarray], cell: str) -> dict[str, np.ndarray]:
    """ShowTell state-dict entries (NumPy) holding the reference `params` (bias_hh set to 0)."""
    index = gate_index(cell, params["Wh"].shape[0])
    return {
        "embed.weight": params["W_embed"],
        "rnn.weight_ih_l0": params["Wx"][:, index].T,
        "rnn.weight_hh_l0": params["Wh"][:, index].T,
        "rnn.bias_ih_l0": params["b"][index],
        "rnn.bias_hh_l0": np.zeros_like(params["b"]),
        "logit.weight": params["W_vocab"].T,
        "logit.bias": params["b_vocab"],
    }


def load_into_show_tell(decoder: nn.Module, params: Mapping[str, np.ndarray]) -> None:
    """Overwrite the decoder's weights with the reference `params` (in the decoder's dtype)."""
    state = show_tell_state(params, _check_decoder(decoder))
    own = decoder.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            if own[name].shape != value.shape:
                raise ImcapError(f"decoder: {name} has shape {tuple(own[name].shape)}, the reference {value.shape}")
            own[name].copy_(torch.from_numpy(np.ascontiguousarray(value)))


def reference_params(decoder: nn.Module) -> dict[str, np.ndarray]:
    """The decoder's weights as reference params (W_embed, Wx, Wh, b, W_vocab, b_vocab), float64."""
    cell = _check_decoder(decoder)
    s = {k: v.detach().cpu().double().numpy() for k, v in decoder.state_dict().items()}
    hidden = s["rnn.weight_hh_l0"].shape[1]
    inverse = np.argsort(gate_index(cell, hidden))
    bias_hh = s["rnn.bias_hh_l0"]
    if cell == "gru" and np.any(bias_hh[2 * hidden :] != 0):
        raise ImcapError("decoder: a GRU with a nonzero bias_hh_n has no CaptioningRNN equivalent")
    return {
        "W_embed": s["embed.weight"],
        "Wx": s["rnn.weight_ih_l0"].T[:, inverse],
        "Wh": s["rnn.weight_hh_l0"].T[:, inverse],
        "b": (s["rnn.bias_ih_l0"] + bias_hh)[inverse],
        "W_vocab": s["logit.weight"].T,
        "b_vocab": s["logit.bias"],
    }


def reference_grads(decoder: nn.Module) -> dict[str, np.ndarray]:
    """The decoder's `.grad`s renamed and reshaped like the reference grads (db from bias_ih's gradient)."""
    cell = _check_decoder(decoder)
    named = dict(decoder.named_parameters())
    g = {k: named[k].grad.detach().cpu().double().numpy() for k in COVERED}
    inverse = np.argsort(gate_index(cell, g["rnn.weight_hh_l0"].shape[1]))
    return {
        "W_embed": g["embed.weight"],
        "Wx": g["rnn.weight_ih_l0"].T[:, inverse],
        "Wh": g["rnn.weight_hh_l0"].T[:, inverse],
        "b": g["rnn.bias_ih_l0"][inverse],
        "W_vocab": g["logit.weight"].T,
        "b_vocab": g["logit.bias"],
    }


class ProjectedStart(Decoder):
    """A ShowTell decoder started cs231n-style from h0 = features @ W_proj + b_proj and c0 = 0.

    It implements the decoder contract (models/decoder.py: init_state, step, select_state), so imcap's own
    greedy/beam decoders run on it, and `loss` is CaptioningRNN.loss in PyTorch.
    """

    state_batch_dims = ShowTell.state_batch_dims  # the wrapped ShowTell's state

    def __init__(self, decoder: ShowTell, W_proj: np.ndarray, b_proj: np.ndarray) -> None:
        super().__init__(decoder.vocab_size)
        self.cell = _check_decoder(decoder)
        self.decoder = decoder
        dtype = decoder.logit.weight.dtype
        self.W_proj = nn.Parameter(torch.as_tensor(W_proj, dtype=dtype))  # (D, H)
        self.b_proj = nn.Parameter(torch.as_tensor(b_proj, dtype=dtype))  # (H,)

    def init_state(self, features: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Features (N, D) -> the ShowTell state before <START>: ((h0,) or (h0, c0), each (1, N, H); no image input)."""
        h0 = (features @ self.W_proj + self.b_proj).unsqueeze(0)  # (1, N, H)
        return ((h0, torch.zeros_like(h0)) if self.cell == "lstm" else (h0,)), None

    def step(self, tokens: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple, None]:
        """One decoding step of the wrapped decoder: tokens (N,) -> log-probabilities (N, V), next state, no attention."""
        return self.decoder.step(tokens, state)

    def loss(self, features: torch.Tensor, captions: torch.Tensor, null: int = 0) -> torch.Tensor:
        """Teacher-forced cross-entropy summed over non-<NULL> targets and divided by N (CaptioningRNN.loss)."""
        logprobs, _ = self.decoder.forward_tokens(captions[:, :-1], self.init_state(features))  # (N, T-1, V)
        flat = logprobs.reshape(-1, logprobs.size(-1))  # (N*(T-1), V)
        total = nn.functional.nll_loss(flat, captions[:, 1:].reshape(-1), ignore_index=null, reduction="sum")
        return total / captions.size(0)

