"""`imcap features`: run the CNN once over a data set and store its features (fp16, memory-mapped)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from imcap.checkpoint import atomic_write_json, load_checkpoint, submodule_state
from imcap.config import FeatureOptions
from imcap.data.features import FORMAT
from imcap.data.loader import CaptionDataset, PreproData, ResumableSampler, make_loader
from imcap.errors import ImcapError
from imcap.models.caption_model import model_args_from_dict
from imcap.models.encoders import ImageEncoder, build_encoder

log = logging.getLogger(__name__)


def _encoder_from(opts: FeatureOptions) -> tuple[ImageEncoder, dict]:
    """The CNN to run and the metadata that lets training rebuild it."""
    if opts.model:
        ckpt = load_checkpoint(opts.model)
        args = model_args_from_dict(ckpt["model_args"])
        if args.cnn == "none":
            raise ImcapError(f"{opts.model}: this model has no CNN (it was trained on region features)")
        encoder = build_encoder(args.cnn, args.input_encoding_size, None, args.cnn_width, args.image_size)
        encoder.backbone.load_state_dict(submodule_state(ckpt["model"], "encoder.backbone."))
        return encoder, {"cnn": args.cnn, "cnn_width": args.cnn_width, "image_size": encoder.input_size, "cnn_weights": "checkpoint", "source_checkpoint": str(Path(opts.model).resolve())}
    weights = None if opts.cnn_weights in ("", "none") else opts.cnn_weights
    encoder = build_encoder(opts.cnn, 8, weights, opts.cnn_width, opts.image_size or None)
    resolved = weights if weights in (None, "imagenet") else str(Path(weights).resolve())
    if weights is None:
        log.warning("extracting features from a randomly initialised %s (--cnn-weights none)", opts.cnn)
    return encoder, {"cnn": opts.cnn, "cnn_width": opts.cnn_width, "image_size": encoder.input_size, "cnn_weights": resolved, "source_checkpoint": ""}


@torch.no_grad()
def extract_features(opts: FeatureOptions) -> Path:
    """Encode every image of `opts.data`; write OUT/meta.json and OUT/{pooled,spatial}.npy; return OUT."""
    from imcap.captioner import pick_device

    kinds = [k.strip() for k in opts.kinds.split(",") if k.strip()]
    if not kinds or set(kinds) - {"pooled", "spatial"}:
        raise ImcapError(f"--kinds {opts.kinds!r}: use pooled, spatial or pooled,spatial")
    if not opts.out:
        raise ImcapError("--out is required")
    data = PreproData.load(opts.data)
    encoder, meta = _encoder_from(opts)
    device = pick_device(opts.device)
    encoder = encoder.to(device).eval()
    if device.type == "cuda":
        encoder = encoder.to(memory_format=torch.channels_last)
    indices = list(range(len(data.images)))
    dataset = CaptionDataset(data, indices, encoder.input_size, 1)
    loader = make_loader(dataset, opts.batch_size, ResumableSampler(len(dataset), 0, shuffle=False), opts.num_workers)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    probe = encoder.grid(torch.zeros(1, 3, encoder.input_size, encoder.input_size, device=device))  # (1, C, h, w)
    shapes = {"pooled": (len(indices), encoder.feature_dim), "spatial": (len(indices), probe.size(2) * probe.size(3), probe.size(1))}
    tmp = {k: out / f".{k}.npy.tmp" for k in kinds}
    arrays = {k: np.lib.format.open_memmap(tmp[k], mode="w+", dtype=np.float16, shape=shapes[k]) for k in kinds}
    row = 0
    try:
        for images, _, _ in tqdm(loader, desc="features", unit="batch", disable=not opts.progress):
            grid = encoder.grid(images.to(device))  # (B, C, h, w)
            if "pooled" in arrays:
                arrays["pooled"][row : row + len(images)] = encoder.pool(grid).float().cpu().numpy()
            if "spatial" in arrays:
                arrays["spatial"][row : row + len(images)] = grid.flatten(2).transpose(1, 2).float().cpu().numpy()
            row += len(images)
        for k, a in arrays.items():
            a.flush()
            tmp[k].replace(out / f"{k}.npy")
    finally:
        for t in tmp.values():
            t.unlink(missing_ok=True)
    meta.update({"format": FORMAT, "version": 1, "data": str(Path(opts.data).resolve()), "kinds": kinds, "ids": [im["id"] for im in data.images],
                 "shapes": {k: list(shapes[k][1:]) for k in kinds}, "dtype": "float16"})
    atomic_write_json(out / "meta.json", meta)
    return out
