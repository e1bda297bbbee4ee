"""ONNX graphs of a caption model: the image encoder and one decoder step (decoded by onnx_captioner.py).

    encoder.onnx       images (B, 3, S, S) float32 in [0, 1] [, condition (B, Lc) int64 for coatt]
                       -> state_0 .. state_{r-1}, feature_0 .. feature_{f-1}
    decoder_step.onnx  tokens (B,) int64, state_0 .., feature_0 .. -> logprobs (B, V+1), next_state_0 ..

The encoder graph runs the CNN and the decoder's `init_state`: its outputs are the state before <START>,
flattened into tensors. The parts that a step passes on unchanged (image features, their attention
projections) are the "features", fed to every step; the rest is the recurrent "state", which every step
returns anew. Every tensor's batch axis is dynamic; config.json "onnx" records where it lies.
The graphs are written by torch's TorchScript-based exporter (opset 17), which needs no package beyond
onnx and onnxruntime (the `scale` extra).
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from imcap.data.vocab import START
from imcap.errors import ImcapError
from imcap.export.onnx_captioner import ENCODER, STEP, load_sessions, require_onnx, step_feeds
from imcap.models.caption_model import CaptionModel

OPSET = 17
ONNX_DECODERS = ("show_tell", "show_attend_tell", "coatt", "updown")  # recurrent decoders whose state keeps its shape
TOLERANCE = 1e-3  # largest |difference| of log-probabilities between onnxruntime and PyTorch accepted at export


# ---------------------------------------------------------------- state <-> flat tensors


def flatten_state(state: Any, dims: Any) -> tuple[list[torch.Tensor], list[int], Any]:
    """A (nested) state and its batch dims (`Decoder.state_batch_dims`) -> (tensors, their batch axes, structure)."""
    if state is None:
        return [], [], None
    if isinstance(state, torch.Tensor):
        if not isinstance(dims, int):
            raise TypeError(f"a state tensor needs an int batch dim, got {dims!r}")
        return [state], [dims], "tensor"
    parts = dims if isinstance(dims, tuple) else (dims,) * len(state)
    tensors: list[torch.Tensor] = []
    axes: list[int] = []
    structure = []
    for part, dim in zip(state, parts):
        t, a, s = flatten_state(part, dim)
        tensors += t
        axes += a
        structure.append(s)
    return tensors, axes, tuple(structure)


def unflatten_state(tensors: Iterator[torch.Tensor], structure: Any) -> Any:
    """Inverse of `flatten_state`: rebuild the nested state from its tensors in order."""
    if structure is None:
        return None
    if structure == "tensor":
        return next(tensors)
    return tuple(unflatten_state(tensors, s) for s in structure)


class StateLayout:
    """Which flattened state tensors change at each step ("state") and which a step passes on as they are ("features")."""

    def __init__(self, model: CaptionModel, encoder_inputs: tuple[torch.Tensor, ...]) -> None:
        decoder = model.decoder
        dims = decoder.state_batch_dims
        with torch.no_grad():
            feats = model.encode(encoder_inputs[0], condition=encoder_inputs[1] if len(encoder_inputs) > 1 else None)
            tensors, self.axes, self.structure = flatten_state(decoder.init_state(feats), dims)
            tokens = torch.full((encoder_inputs[0].size(0),), START, dtype=torch.long)
            new, _, new_structure = flatten_state(decoder.step(tokens, unflatten_state(iter(tensors), self.structure))[1], dims)
        if new_structure != self.structure or any(a.shape != b.shape for a, b in zip(new, tensors)):
            raise ImcapError(f"--onnx: the {model.args.model} decoder's state changes shape from step to step; ONNX export supports {', '.join(ONNX_DECODERS)}")
        self.recurrent = [i for i, (a, b) in enumerate(zip(new, tensors)) if a is not b]
        self.features = [i for i, (a, b) in enumerate(zip(new, tensors)) if a is b]

    def split(self, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Flattened state tensors -> recurrent ones, then feature ones."""
        return tuple(tensors[i] for i in self.recurrent) + tuple(tensors[i] for i in self.features)

    def join(self, parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Inverse of `split`: recurrent then feature tensors -> the flattened state in its own order."""
        out: list[torch.Tensor | None] = [None] * (len(self.recurrent) + len(self.features))
        for pos, tensor in zip(self.recurrent + self.features, parts):
            out[pos] = tensor
        return out  # type: ignore[return-value]

    def config(self) -> dict:
        """What config.json records: the counts and batch axes of the state and feature tensors."""
        return {"state": len(self.recurrent), "features": len(self.features),
                "state_batch_axes": [self.axes[i] for i in self.recurrent], "feature_batch_axes": [self.axes[i] for i in self.features]}


class EncoderGraph(nn.Module):
    """Images (B, 3, S, S) [and condition ids (B, Lc)] -> the decoder's initial state tensors: recurrent, then features."""

    def __init__(self, model: CaptionModel, layout: StateLayout) -> None:
        super().__init__()
        self.model = model
        self.layout = layout

    def forward(self, images: torch.Tensor, condition: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        feats = self.model.encode(images, condition=condition)
        tensors = flatten_state(self.model.decoder.init_state(feats), self.model.decoder.state_batch_dims)[0]
        return self.layout.split(tensors)


class StepGraph(nn.Module):
    """One decoder step: tokens (B,), recurrent state and feature tensors -> log-probabilities (B, V+1) and the next recurrent state."""

    def __init__(self, model: CaptionModel, layout: StateLayout) -> None:
        super().__init__()
        self.decoder = model.decoder
        self.layout = layout

    def forward(self, tokens: torch.Tensor, *parts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = unflatten_state(iter(self.layout.join(parts)), self.layout.structure)
        logprobs, state, _ = self.decoder.step(tokens, state)  # (B, V+1), next state, attention or None
        tensors = flatten_state(state, self.decoder.state_batch_dims)[0]
        return (logprobs, *(tensors[i] for i in self.layout.recurrent))


# ---------------------------------------------------------------- export


def _example_inputs(model: CaptionModel, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random images (B, 3, S, S) [and condition ids (B, 2)] to trace or check the graphs with."""
    gen = torch.Generator().manual_seed(seed)
    size = model.encoder.input_size
    images = torch.rand(batch, 3, size, size, generator=gen)
    if not model.conditioned:
        return (images,)
    return images, torch.randint(1, len(model.args.condition_vocab) + 2, (batch, 2), generator=gen)


def export_onnx(model: CaptionModel, folder: Path) -> dict:
    """Write encoder.onnx and decoder_step.onnx for `model` (moved to the CPU) into `folder`; returns config.json's "onnx" entry.

    The graphs are checked against PyTorch on a batch of another size before the export is accepted.
    """
    onnx, _ = require_onnx()
    if model.args.model not in ONNX_DECODERS:
        raise ImcapError(f"--onnx: {model.args.model} decoders cannot be exported to ONNX yet (supported: {', '.join(ONNX_DECODERS)})")
    if model.encoder.backbone is None:
        raise ImcapError("--onnx: this model reads precomputed region features and has no CNN to export")
    model = model.cpu().eval()
    example = _example_inputs(model, 2, seed=0)
    layout = StateLayout(model, example)
    n_state, n_feat = len(layout.recurrent), len(layout.features)
    state_names = [f"state_{i}" for i in range(n_state)]
    feature_names = [f"feature_{i}" for i in range(n_feat)]
    next_names = [f"next_state_{i}" for i in range(n_state)]
    axes = layout.config()
    enc_inputs = ["images"] + (["condition"] if model.conditioned else [])
    enc_axes = {"images": {0: "batch"}, "condition": {0: "batch", 1: "condition_length"}}
    out_axes = {n: {a: "batch"} for n, a in zip(state_names + feature_names + next_names, axes["state_batch_axes"] + axes["feature_batch_axes"] + axes["state_batch_axes"])}
    encoder, step = EncoderGraph(model, layout).eval(), StepGraph(model, layout).eval()  # export restores these modes
    with torch.no_grad():
        encoded = encoder(*example)
    tokens = torch.full((example[0].size(0),), START, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
        torch.onnx.export(encoder, example, str(folder / ENCODER), dynamo=False, opset_version=OPSET,
                          input_names=enc_inputs, output_names=state_names + feature_names,
                          dynamic_axes={**{k: v for k, v in enc_axes.items() if k in enc_inputs}, **{n: out_axes[n] for n in state_names + feature_names}})
        torch.onnx.export(step, (tokens, *encoded), str(folder / STEP), dynamo=False, opset_version=OPSET,
                          input_names=["tokens"] + state_names + feature_names, output_names=["logprobs"] + next_names,
                          dynamic_axes={"tokens": {0: "batch"}, "logprobs": {0: "batch"}, **out_axes})
    for name in (ENCODER, STEP):
        try:
            onnx.checker.check_model(str(folder / name))
        except onnx.checker.ValidationError as exc:
            raise ImcapError(f"--onnx: the exported {name} is not a valid ONNX model ({str(exc).splitlines()[0][:120]})") from None
    _check_against_torch(model, folder, encoder, step)
    return {"onnx": {"opset": OPSET, "encoder": ENCODER, "decoder_step": STEP, "conditioned": model.conditioned, **axes}}


def _check_against_torch(model: CaptionModel, folder: Path, encoder: EncoderGraph, step: StepGraph) -> None:
    """Run both graphs on a batch of 3 (not the traced 2) for two steps; raise ImcapError when they disagree with PyTorch."""
    n_state = len(encoder.layout.recurrent)
    encoder_session, step_session = load_sessions(folder)
    inputs = _example_inputs(model, 3, seed=1)
    feeds = {"images": inputs[0].numpy()} | ({"condition": inputs[1].numpy()} if model.conditioned else {})
    got_parts = encoder_session.run(None, feeds)
    with torch.no_grad():
        want_parts = encoder(*inputs)
        worst = max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got_parts, want_parts))
        tokens = torch.full((3,), START, dtype=torch.long)
        for _ in range(2):
            got = step_session.run(None, step_feeds(tokens.numpy(), got_parts, n_state))
            want = step(tokens, *want_parts)
            worst = max(worst, *(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want)))
            got_parts = got[1:] + got_parts[n_state:]
            want_parts = tuple(want[1:]) + tuple(want_parts[n_state:])
            tokens = want[0].argmax(dim=1)
    if not worst <= TOLERANCE:
        raise ImcapError(f"--onnx: onnxruntime and PyTorch disagree on the exported graphs (largest difference {worst:.3g} > {TOLERANCE})")
