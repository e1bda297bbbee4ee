"""Options of `imcap export` (no torch here, so that `imcap --help` stays fast)."""
from __future__ import annotations

from dataclasses import dataclass

from imcap.options import opt


@dataclass
class ExportOptions:
    """Options of `imcap export`."""

    model: str = opt("", "run directory, checkpoint file or export folder to export", required=True)
    out: str = opt("", "folder to write (created; an earlier export there needs --overwrite)", required=True)
    onnx: bool = opt(False, "also write encoder.onnx and decoder_step.onnx (needs the scale extra: onnx, onnxruntime)")
    overwrite: bool = opt(False, "replace an earlier export in --out")
