"""Pictures of where a model looks: per-word attention over the image, drawn as a PNG grid of tiles.

The first tile is the image; every other tile is the image lit where the word's attention map (the
decoder's h x w weights, upsampled bilinearly) is high, with the word written under it. `saliency.py`
reuses `tile_grid` for gradient saliency maps.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from imcap.checkpoint import atomic_write

TILE = 128
LABEL_HEIGHT = 16
COLUMNS = 6


def attention_grid(alphas: torch.Tensor, grid_size: tuple[int, ...] | None) -> torch.Tensor:
    """Weights (S, K) -> (S, h, w) when `grid_size` (h, w) covers K, else unchanged (region features)."""
    if grid_size is not None and len(grid_size) == 2 and grid_size[0] * grid_size[1] == alphas.size(-1):
        return alphas.reshape(alphas.size(0), *grid_size)
    return alphas


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Maps (S, h, w) -> (S, size, size), bilinear (grid cell centres land on their pixels' centres)."""
    return torch.nn.functional.interpolate(maps.float().unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)


def attention_peak(weights: torch.Tensor, image_size: int) -> tuple[float, float]:
    """The (x, y) pixel centre of the most attended cell of one map (h, w) over an image of side `image_size`."""
    h, w = weights.shape
    row, col = divmod(int(weights.flatten().argmax()), w)
    return (col + 0.5) * image_size / w, (row + 0.5) * image_size / h


def _resize(image: Image.Image, size: int) -> Image.Image:
    return image.convert("RGB").resize((size, size), Image.NEAREST if max(image.size) <= size // 2 else Image.BILINEAR)


def spotlight(image: Image.Image, weights: torch.Tensor, size: int = TILE) -> Image.Image:
    """The image (resized to `size`) lit by one attention map (h, w): dark where the weight is low."""
    light = upsample(weights[None], size)[0]  # (size, size)
    light = (light / light.max().clamp(min=1e-12)).numpy()
    pixels = np.asarray(_resize(image, size), dtype=np.float32)  # (size, size, 3)
    return Image.fromarray(np.clip(pixels * (0.15 + 0.85 * light[:, :, None]), 0, 255).astype(np.uint8))


def heatmap(values: torch.Tensor, size: int = TILE) -> Image.Image:
    """A (H, W) map of non-negative values as a black-red-yellow-white picture of side `size`."""
    v = values.float()
    v = (v / v.max().clamp(min=1e-12)).clamp(0, 1)
    rgb = torch.stack([(3 * v).clamp(0, 1), (3 * v - 1).clamp(0, 1), (3 * v - 2).clamp(0, 1)], dim=2)  # (H, W, 3)
    return Image.fromarray((rgb.numpy() * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)


def tile_grid(tiles: Sequence[Image.Image], labels: Sequence[str], columns: int = COLUMNS) -> Image.Image:
    """Tiles of equal size in rows of `columns`, each with its label underneath."""
    side = tiles[0].size[0]
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)
    canvas = Image.new("RGB", (cols * (side + 4) + 4, rows * (side + LABEL_HEIGHT + 4) + 4), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        x = 4 + (i % cols) * (side + 4)
        y = 4 + (i // cols) * (side + LABEL_HEIGHT + 4)
        canvas.paste(tile, (x, y))
        width = draw.textlength(label, font=font)
        draw.text((x + max(0, (side - width) / 2), y + side + 2), label, fill="black", font=font)
    return canvas


def attention_figure(image: Image.Image, caption: str, weights: torch.Tensor, size: int = TILE) -> Image.Image:
    """The image, then one spotlight tile per generated token (words, then <END>) of `weights` (S, h, w)."""
    words = caption.split()
    labels = (words + ["<END>"])[: weights.size(0)]
    tiles = [_resize(image, size)] + [spotlight(image, weights[i], size) for i in range(len(labels))]
    return tile_grid(tiles, ["image", *labels])


def save_png(picture: Image.Image, path: str | Path) -> Path:
    """Write a picture as PNG atomically; return the path."""
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
    return Path(path)


def png_data_uri(picture: Image.Image) -> str:
    """A picture as a PNG data URI for self-contained HTML."""
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_attention_maps(results: Sequence[dict], out_dir: str | Path) -> list[Path]:
    """For each `caption_paths` result with "attention" (S, h, w), write OUT_DIR/<image stem>.png; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for r in results:
        with Image.open(r["file"]) as im:
            picture = attention_figure(im.convert("RGB"), r["caption"], r["attention"])
        name, n = Path(r["file"]).stem, 1
        while out / f"{name}.png" in written:  # same file name in different folders
            name, n = f"{Path(r['file']).stem}-{n}", n + 1
        written.append(save_png(picture, out / f"{name}.png"))
    return written
