"""`imcap export`: a run (or checkpoint, or earlier export) -> a portable folder, optionally with ONNX graphs."""
from __future__ import annotations

from pathlib import Path

from imcap.captioner import Captioner
from imcap.checkpoint import resolve_checkpoint
from imcap.export.folder import is_export_folder, write_export
from imcap.export.onnx_captioner import require_onnx
from imcap.export.onnx_graphs import export_onnx
from imcap.export.options import ExportOptions


def export_model(opts: ExportOptions) -> Path:
    """Write the export folder `opts.out` from `opts.model`; returns its path."""
    if opts.onnx:
        require_onnx()  # fail before any work when the extra is missing
    captioner = Captioner.load(opts.model, "cpu")
    if is_export_folder(opts.model):
        source = (captioner.info.get("export") or {}).get("source") or opts.model
    else:
        source = str(resolve_checkpoint(opts.model))
    return write_export(opts.out, captioner.model, captioner.vocab, captioner.info, source, opts.overwrite, export_onnx if opts.onnx else None)
