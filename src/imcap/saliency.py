"""`imcap explain`: saliency maps of a caption (cs231n network visualisation, Simonyan et al. 2014).

For every word w_t of the model's caption, the saliency of a pixel is max over colour channels of
|d log p(w_t | image, w_<t) / d pixel|: how much a small change of that pixel would change the
model's belief in that word. Works for every model that runs a CNN on pixels (any decoder).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from imcap.attention_maps import heatmap, save_png, tile_grid
from imcap.captioner import Captioner, ImageLike
from imcap.data.vocab import END, NULL, START
from imcap.decoding import DecodeOptions, decode
from imcap.errors import ImcapError

log = logging.getLogger(__name__)


def word_saliency(captioner: Captioner, image: torch.Tensor, tokens: list[int], condition: str | None = None) -> torch.Tensor:
    """Image (3, S, S) and a caption's ids (words, then <END>) -> saliency maps (len(tokens), S, S)."""
    model = captioner.model
    if model.encoder.backbone is None:
        raise ImcapError("this model reads precomputed region features and has no CNN: saliency needs pixels")
    model.eval()
    x = image.to(captioner.device).unsqueeze(0).requires_grad_(True)  # (1, 3, S, S)
    inputs = torch.tensor([[START, *tokens[:-1]]], device=captioner.device)  # (1, T)
    targets = torch.tensor(tokens, device=captioner.device)  # (T,)
    cond = captioner.condition_ids(condition, 1)
    with torch.enable_grad():
        feats = model.encode(x, train_backbone=True, condition=cond)
        logprobs = model.decoder(feats, inputs)[0]  # (T, V+1)
        chosen = logprobs.gather(1, targets.unsqueeze(1)).squeeze(1)  # (T,)
        maps = []
        for t in range(len(tokens)):
            (grad,) = torch.autograd.grad(chosen[t], x, retain_graph=t + 1 < len(tokens))
            maps.append(grad[0].abs().amax(dim=0))  # (S, S)
    return torch.stack(maps).detach().cpu()


def explain(captioner: Captioner, image: ImageLike, opts: DecodeOptions | None = None, condition: str | None = None) -> tuple[str, list[str], torch.Tensor]:
    """Caption `image` and return (caption, its tokens as words plus "<END>", saliency maps (T, S, S))."""
    x = captioner.to_tensor(image)  # (3, S, S)
    opts = opts or DecodeOptions()
    cond = captioner.condition_ids(condition, 1)
    with torch.no_grad():
        captioner.model.eval()
        feats = captioner.model.encode(x.unsqueeze(0).to(captioner.device), condition=cond)
        seqs = decode(captioner.model.decoder, feats, opts)[0]  # (1, n, L)
    tokens = [t for t in seqs[0, 0].tolist() if t != NULL]
    words = [captioner.vocab.idx_to_word[t] if t != END else "<END>" for t in tokens]
    return captioner.vocab.decode(tokens), words, word_saliency(captioner, x, tokens, condition)


def saliency_figure(image: Image.Image, words: Sequence[str], maps: torch.Tensor, size: int = 128) -> Image.Image:
    """The image, then one saliency heat map per word (each scaled to its own maximum)."""
    tiles = [image.convert("RGB").resize((size, size), Image.NEAREST if max(image.size) <= size // 2 else Image.BILINEAR)]
    tiles += [heatmap(maps[i], size) for i in range(len(words))]
    return tile_grid(tiles, ["image", *words])


def run_explain(model: str, paths: Sequence[str], out_dir: str | Path, opts: DecodeOptions, condition: str | None = None, device: str = "auto") -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """Write OUT_DIR/<image stem>.png (saliency of every word) for image files/folders/globs.

    Returns ([(png, caption)], [(file, problem) for each unreadable image, skipped]).
    """
    from imcap.data.images import find_images, load_image

    captioner = Captioner.load(model, device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[tuple[Path, str]] = []
    skipped: list[tuple[str, str]] = []
    for file in find_images(list(paths)):
        try:
            image = load_image(file)
        except ImcapError as exc:
            skipped.append((str(file), str(exc)))
            log.warning("skipped %s", exc)
            continue
        caption, words, maps = explain(captioner, image, opts, condition)
        name, n = file.stem, 1
        while any(p == out / f"{name}.png" for p, _ in written):  # same file name in different folders
            name, n = f"{file.stem}-{n}", n + 1
        written.append((save_png(saliency_figure(image, words, maps), out / f"{name}.png"), caption))
    return written, skipped
