"""`imcap features`: run the CNN once over a data set and store its features (fp16 .npy).

The arrays are filled batch by batch with ordinary file writes into preallocated `.KIND.npy.partial`
files (never through a memory map, so a full disk is an error message, not a SIGBUS); every
--commit-every images they are fsynced and a small progress file is replaced atomically: a killed
run, rerun with the same options, continues from there. Only a complete run renames the arrays into
place and writes meta.json.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from imcap.checkpoint import load_checkpoint, resolve_checkpoint, submodule_state
from imcap.config import FeatureOptions
from imcap.data.features import FORMAT
from imcap.data.loader import CaptionDataset, PreproData, ResumableSampler, make_loader
from imcap.errors import ImcapError
from imcap.files import (
    atomic_write_json,
    check_free_space,
    free_bytes,
    megabytes,
    preallocate,
    reporting_disk_errors,
)
from imcap.models.caption_model import model_args_from_dict
from imcap.models.encoders import ImageEncoder, build_encoder
from imcap.progress import progress_bar

log = logging.getLogger(__name__)

STORES = {"pooled": ("pooled",), "spatial": ("spatial",), "both": ("pooled", "spatial")}
PROGRESS = ".progress.json"
DTYPE = np.dtype(np.float16)


def decoder_store(decoder: str) -> str:
    """What a decoder reads from stored features: "pooled" for show_tell, "spatial" (the grid) for the attention decoders."""
    return "pooled" if decoder == "show_tell" else "spatial"


def _kinds(opts: FeatureOptions, decoder: str) -> tuple[str, ...]:
    """The arrays to write: --store, else (old flag) --kinds, else what --model's decoder needs, else pooled."""
    if opts.kinds:
        if opts.store != "auto":
            raise ImcapError("give --store or its old name --kinds, not both")
        kinds = tuple(dict.fromkeys(k.strip() for k in opts.kinds.split(",") if k.strip()))
        if not kinds or set(kinds) - {"pooled", "spatial"}:
            raise ImcapError(f"--kinds {opts.kinds!r}: use pooled, spatial or pooled,spatial (or --store pooled|spatial|both)")
        return tuple(k for k in STORES["both"] if k in kinds)
    if opts.store != "auto":
        return STORES[opts.store]
    return STORES[decoder_store(decoder) if decoder else "pooled"]


def _encoder_from(opts: FeatureOptions) -> tuple[ImageEncoder, dict, str]:
    """The CNN to run, the metadata that lets training rebuild it, and the decoder of --model ("" without one)."""
    if opts.model:
        file = resolve_checkpoint(opts.model)
        ckpt = load_checkpoint(file)
        args = model_args_from_dict(ckpt["model_args"])
        if args.cnn == "none":
            raise ImcapError(f"{opts.model}: this model has no CNN (it was trained on region features)")
        encoder = build_encoder(args.cnn, args.input_encoding_size, None, args.cnn_width, args.image_size)
        encoder.backbone.load_state_dict(submodule_state(ckpt["model"], "encoder.backbone."))
        stat = file.stat()
        return encoder, {"cnn": args.cnn, "cnn_width": args.cnn_width, "image_size": encoder.input_size, "cnn_weights": "checkpoint",
                         "source_checkpoint": str(file.resolve()), "source_version": f"{stat.st_size}:{stat.st_mtime_ns}"}, args.model
    weights = None if opts.cnn_weights in ("", "none") else opts.cnn_weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random weights (--cnn-weights none) are the same in every run, so a rerun can continue one
        encoder = build_encoder(opts.cnn, 8, weights, opts.cnn_width, opts.image_size or None)
    resolved = weights if weights in (None, "imagenet") else str(Path(weights).resolve())
    if weights is None:
        log.warning("extracting features from a randomly initialised %s (--cnn-weights none)", opts.cnn)
    return encoder, {"cnn": opts.cnn, "cnn_width": opts.cnn_width, "image_size": encoder.input_size, "cnn_weights": resolved, "source_checkpoint": ""}, ""


class ArrayFile:
    """An .npy file of `shape` filled with plain writes of row ranges, into OUT/.NAME.npy.partial until `finish`."""

    def __init__(self, out: Path, name: str, shape: tuple[int, ...]) -> None:
        self.path = out / f"{name}.npy"
        self.partial = out / f".{name}.npy.partial"
        self.shape = shape
        self.row_bytes = math.prod(shape[1:]) * DTYPE.itemsize
        header = {"descr": np.lib.format.dtype_to_descr(DTYPE), "fortran_order": False, "shape": shape}
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, header)
        self.header = buf.getvalue()
        self.size = len(self.header) + shape[0] * self.row_bytes
        self.file: BinaryIO | None = None

    def missing_bytes(self) -> int:
        """Bytes still to allocate for the partial file."""
        return self.size - (self.partial.stat().st_size if self.partial.exists() else 0)

    def open(self) -> None:
        """Open (or reopen, on resume) the partial file, write the header and reserve the whole size."""
        with reporting_disk_errors(self.path, self.missing_bytes()):
            self.file = open(self.partial, "r+b" if self.partial.exists() else "w+b")  # noqa: SIM115 (closed in close())
            self.file.write(self.header)
            preallocate(self.file.fileno(), self.size, self.path)

    def write_rows(self, start: int, rows: np.ndarray) -> None:
        """Write `rows` (n, *shape[1:]) at row `start`."""
        assert self.file is not None and rows.shape[1:] == self.shape[1:]
        with reporting_disk_errors(self.path):
            self.file.seek(len(self.header) + start * self.row_bytes)
            self.file.write(np.ascontiguousarray(rows, dtype=DTYPE).tobytes())

    def sync(self) -> None:
        """Flush and fsync what was written so far."""
        assert self.file is not None
        with reporting_disk_errors(self.path):
            self.file.flush()
            os.fsync(self.file.fileno())

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def finish(self) -> None:
        """Move the complete array into place."""
        self.close()
        if self.partial.exists():
            os.replace(self.partial, self.path)


def _progress_key(data_dir: str, data: PreproData, meta: dict, kinds: tuple[str, ...], shapes: dict) -> dict:
    """What must match for a rerun to continue an earlier, unfinished one."""
    ids = hashlib.sha1("\n".join(str(im["id"]) for im in data.images).encode()).hexdigest()
    return {"data": str(Path(data_dir).resolve()), "ids_sha1": ids, "encoder": meta, "kinds": list(kinds),
            "shapes": {k: list(shapes[k]) for k in kinds}, "dtype": DTYPE.name}


def _resume_point(out: Path, key: dict, files: list[ArrayFile]) -> int:
    """Images already encoded by an unfinished earlier run with the same options (0 when there is none)."""
    try:
        progress = json.loads((out / PROGRESS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    if not isinstance(progress, dict) or progress.get("key") != key or not isinstance(progress.get("rows"), int):
        log.info("%s: an unfinished earlier run used other data or options; starting over", out)
        return 0
    rows = progress["rows"]
    for f in files:
        have = f.partial if f.partial.exists() else (f.path if rows == f.shape[0] else None)
        if have is None or have.stat().st_size < len(f.header) + rows * f.row_bytes:
            return 0
    return rows


def _describe(n: int, kinds: tuple[str, ...], shapes: dict, files: list[ArrayFile]) -> str:
    parts = [f"{k} ({' x '.join(map(str, shapes[k][1:]))}) {megabytes(f.size)}" for k, f in zip(kinds, files)]
    return f"{n} images -> {' + '.join(parts)}, float16"


@torch.no_grad()
def extract_features(opts: FeatureOptions) -> Path:
    """Encode every image of `opts.data`; write OUT/meta.json and OUT/{pooled,spatial}.npy; return OUT.

    Prints the size it will write, checks the free space first, and continues an unfinished earlier run.
    """
    from imcap.devices import pick_device

    if not opts.out:
        raise ImcapError("--out is required")
    data = PreproData.load(opts.data)
    encoder, meta, decoder = _encoder_from(opts)
    kinds = _kinds(opts, decoder)
    device = pick_device(opts.device)
    encoder = encoder.to(device).eval()
    if device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last)
    n = len(data.images)
    probe = encoder.grid(torch.zeros(1, 3, encoder.input_size, encoder.input_size, device=device))  # (1, C, h, w)
    shapes = {"pooled": (n, encoder.feature_dim), "spatial": (n, probe.size(2) * probe.size(3), probe.size(1))}
    out = Path(opts.out)
    with reporting_disk_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    files = [ArrayFile(out, k, shapes[k]) for k in kinds]
    key = _progress_key(opts.data, data, meta, kinds, shapes)
    start = _resume_point(out, key, files)
    if start == 0:
        _remove_partials(out)
    log.info("features: %s; %s free in %s", _describe(n, kinds, shapes, files), megabytes(free_bytes(out)), out)
    if start:
        log.info("features: continuing an unfinished run at image %d of %d", start, n)
    if start < n:
        missing = 0
        for f in files:
            missing += f.missing_bytes()
            check_free_space(out, missing, f.path)
    try:
        if start < n:
            _encode(opts, data, encoder, device, files, start, out, key)
        (out / "meta.json").unlink(missing_ok=True)  # a kill while the arrays move leaves no mismatched meta.json
        for f in files:
            f.finish()
    except ImcapError as exc:
        for f in files:
            f.close()
        saved = _resume_point(out, key, files)
        if saved == 0:
            _remove_partials(out)
            raise
        raise ImcapError(f"{exc} ({saved} of {n} images are saved; a rerun continues from there)") from None
    finally:
        for f in files:
            f.close()
    for other in set(STORES["both"]) - set(kinds):
        if (out / f"{other}.npy").exists():
            (out / f"{other}.npy").unlink()
            log.info("removed %s from an earlier run (not in --store)", out / f"{other}.npy")
    meta.pop("source_version", None)
    meta.update({"format": FORMAT, "version": 1, "data": str(Path(opts.data).resolve()), "kinds": list(kinds), "ids": [im["id"] for im in data.images],
                 "shapes": {k: list(shapes[k][1:]) for k in kinds}, "dtype": "float16"})
    atomic_write_json(out / "meta.json", meta)
    (out / PROGRESS).unlink(missing_ok=True)
    return out


def _encode(opts: FeatureOptions, data: PreproData, encoder: ImageEncoder, device: torch.device, files: list[ArrayFile], start: int, out: Path, key: dict) -> None:
    """Encode images start..N-1 into `files`; every --commit-every images, fsync them and record the rows done in OUT/.progress.json."""
    dataset = CaptionDataset(data, list(range(len(data.images))), encoder.input_size, 1)
    loader = make_loader(dataset, opts.batch_size, ResumableSampler(len(dataset), 0, start=start, shuffle=False), opts.num_workers)
    for f in files:
        f.open()
    row = committed = start
    for images, _, _ in progress_bar(loader, desc="features", unit="batch", disable=not opts.progress):
        grid = encoder.grid(images.to(device))  # (B, C, h, w)
        for f in files:
            if f.path.stem == "pooled":
                f.write_rows(row, encoder.pool(grid).half().cpu().numpy())  # (B, D)
            else:
                f.write_rows(row, grid.flatten(2).transpose(1, 2).half().cpu().numpy())  # (B, h*w, C)
        row += len(images)
        if row - committed >= opts.commit_every or row == len(dataset):
            for f in files:
                f.sync()  # the rows first, then the record that they are there
            atomic_write_json(out / PROGRESS, {"key": key, "rows": row})
            committed = row


def _remove_partials(out: Path) -> None:
    for kind in STORES["both"]:
        (out / f".{kind}.npy.partial").unlink(missing_ok=True)
    (out / PROGRESS).unlink(missing_ok=True)
