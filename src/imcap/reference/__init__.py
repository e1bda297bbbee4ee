"""A gradient-checked NumPy captioning engine (cs231n assignment 3) that verifies imcap's PyTorch models.

Modules: layers (forward/backward of every layer), model (CaptioningRNN), optim and solver (training),
gradcheck (numerical gradients), notebook (the notebook's value checks), data (training sets),
torch_bridge (weights to and from imcap's ShowTell; the only module that imports torch).
Names are imported lazily so that `import imcap.reference.options` (the CLI parser) needs no NumPy;
the full check is `imcap.reference.gradcheck.gradcheck()`.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "CaptioningRNN": "model",
    "CaptioningSolver": "solver",
    "CaptionData": "solver",
    "eval_numerical_gradient": "gradcheck",
    "eval_numerical_gradient_array": "gradcheck",
    "rel_error": "gradcheck",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"imcap.reference.{_EXPORTS[name]}"), name)
    raise AttributeError(name)


__all__ = sorted(_EXPORTS)
