"""Pictures of where a model looks: per-word attention over the image, drawn as a PNG grid of tiles.

The first tile is the image; every other tile is the image lit where the word's attention map (the
decoder's h x w weights, smoothed by a Gaussian of one grid cell and upsampled bilinearly between the
cells' receptive-field centres) is high, with the word written under it. `saliency.py`
reuses `tile_grid` for gradient saliency maps.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from imcap.files import atomic_write, png_data_uri

TILE = 128
SMOOTHING = 1.0  # Gaussian sigma, in grid cells, of the pictures and of the peak (the paper upsamples and blurs too)
LABEL_HEIGHT = 16
COLUMNS = 6


def attention_grid(alphas: torch.Tensor, grid_size: tuple[int, ...] | None) -> torch.Tensor:
    """Weights (S, K) -> (S, h, w) when `grid_size` (h, w) covers K, else unchanged (region features)."""
    if grid_size is not None and len(grid_size) == 2 and grid_size[0] * grid_size[1] == alphas.size(-1):
        return alphas.reshape(alphas.size(0), *grid_size)
    return alphas


def smooth(maps: torch.Tensor, sigma: float = SMOOTHING) -> torch.Tensor:
    """Maps (..., h, w) filtered by a Gaussian of `sigma` grid cells (0: unchanged), as Show-Attend-Tell's pictures."""
    if sigma <= 0:
        return maps.float()
    radius = max(1, math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (k[:, None] * k[None, :] / k.sum() ** 2).view(1, 1, 2 * radius + 1, 2 * radius + 1)
    flat = maps.float().reshape(-1, 1, *maps.shape[-2:])  # (N, 1, h, w)
    return torch.nn.functional.conv2d(flat, kernel, padding=radius).view(maps.shape)


@dataclass(frozen=True)
class GridGeometry:
    """Where a CNN grid's cells sit in its input image (side `size` px, continuous coordinates).

    Cell (row, col) is centred at (x0 + col * step_x, y0 + row * step_y). Strided convolutions with
    "same" padding centre cell j at pixel step * j, not at step * (j + 0.5), so this is measured.
    """

    size: int
    x0: float
    y0: float
    step_x: float
    step_y: float

    def centre(self, row: int, col: int) -> tuple[float, float]:
        """The (x, y) pixel centre of cell (row, col)."""
        return self.x0 + col * self.step_x, self.y0 + row * self.step_y


def grid_geometry(encoder: torch.nn.Module, size: int) -> GridGeometry:
    """Measure where `encoder.grid` cells look, from d cell / d pixels on random images (the central 2 x 2 cells).

    A cell's receptive field is the box of pixels with a non-zero gradient; its centre is exact when the box
    fits inside the image (the small CNN). Otherwise (VGG, ResNet: fields larger than the image) the centre
    of mass of |gradient| (the effective receptive field) is used. Rounded to half a pixel.
    """
    was_training = encoder.training
    encoder.eval()
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(encoder.mean.device).requires_grad_(True)
    with torch.enable_grad():
        grid = encoder.grid(images)  # (2, C, h, w)
        h, w = grid.shape[2:]
        step_x, step_y = size / w, size / h
        pos = torch.arange(size, dtype=torch.float32, device=images.device) + 0.5
        exact: dict[int, list[float]] = {0: [], 1: []}
        mass_centre: dict[int, list[float]] = {0: [], 1: []}
        for i in sorted({max(h // 2 - 1, 0), h // 2}):
            for j in sorted({max(w // 2 - 1, 0), w // 2}):
                (grad,) = torch.autograd.grad(grid[:, :, i, j].sum(), images, retain_graph=True)
                mass = grad.abs().sum(dim=(0, 1))  # (S, S)
                for axis, offset in ((0, j * step_x), (1, i * step_y)):  # summing rows gives the x profile
                    profile = mass.sum(axis)  # (S,)
                    seen = profile.nonzero().flatten()
                    if len(seen) and 0 < int(seen[0]) and int(seen[-1]) < size - 1:
                        exact[axis].append((int(seen[0]) + int(seen[-1]) + 1) / 2 - offset)
                    mass_centre[axis].append(float((profile * pos).sum() / profile.sum().clamp(min=1e-12)) - offset)
    encoder.train(was_training)
    x0, y0 = (exact[a] or mass_centre[a] for a in (0, 1))
    return GridGeometry(size, round(2 * sum(x0) / len(x0)) / 2, round(2 * sum(y0) / len(y0)) / 2, step_x, step_y)


def default_geometry(size: int, h: int, w: int) -> GridGeometry:
    """Cells centred in their size/w x size/h blocks (when nothing better is known)."""
    return GridGeometry(size, size / w / 2, size / h / 2, size / w, size / h)


def upsample(maps: torch.Tensor, side: int, geometry: GridGeometry | None = None) -> torch.Tensor:
    """Maps (S, h, w) -> (S, side, side) over the whole image, bilinear between cell centres."""
    maps = maps.float()
    h, w = maps.shape[1:]
    geo = geometry or default_geometry(side, h, w)
    u = (torch.arange(side, dtype=torch.float32) + 0.5) * geo.size / side  # pixel centres in input coordinates
    gx = ((u - geo.x0) / geo.step_x).clamp(0, w - 1)  # (side,) in cell units
    gy = ((u - geo.y0) / geo.step_y).clamp(0, h - 1)
    nx = 2 * gx / max(w - 1, 1) - 1
    ny = 2 * gy / max(h - 1, 1) - 1
    grid = torch.stack(torch.meshgrid(ny, nx, indexing="ij")[::-1], dim=2)  # (side, side, 2) as (x, y)
    out = torch.nn.functional.grid_sample(maps.unsqueeze(1), grid.unsqueeze(0).expand(maps.size(0), -1, -1, -1), mode="bilinear", align_corners=True)
    return out.squeeze(1)


def attention_peak(weights: torch.Tensor, geometry: GridGeometry, image_size: int | None = None, sigma: float = SMOOTHING) -> tuple[float, float]:
    """Where one map (h, w) peaks: the centre of its highest cell after Gaussian smoothing of `sigma` cells
    (the picture's peak), in pixels of an image of side `image_size` (default: the model's input side)."""
    row, col = divmod(int(smooth(weights, sigma).flatten().argmax()), weights.size(1))
    x, y = geometry.centre(row, col)
    scale = (image_size or geometry.size) / geometry.size
    return x * scale, y * scale


def _resize(image: Image.Image, size: int) -> Image.Image:
    return image.convert("RGB").resize((size, size), Image.NEAREST if max(image.size) <= size // 2 else Image.BILINEAR)


def spotlight(image: Image.Image, weights: torch.Tensor, size: int = TILE, geometry: GridGeometry | None = None, sigma: float = SMOOTHING) -> Image.Image:
    """The image (resized to `size`) lit by one attention map (h, w), smoothed by `sigma` cells: dark where the weight is low."""
    light = upsample(smooth(weights, sigma)[None], size, geometry)[0]  # (size, size)
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


def attention_figure(image: Image.Image, caption: str, weights: torch.Tensor, geometry: GridGeometry | None = None, size: int = TILE, columns: int = COLUMNS) -> Image.Image:
    """The image, then one spotlight tile per generated token (words, then <END>) of `weights` (S, h, w)."""
    words = caption.split()
    labels = (words + ["<END>"])[: weights.size(0)]
    tiles = [_resize(image, size)] + [spotlight(image, weights[i], size, geometry) for i in range(len(labels))]
    return tile_grid(tiles, ["image", *labels], columns)


def save_png(picture: Image.Image, path: str | Path) -> Path:
    """Write a picture as PNG atomically; return the path."""
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
    return Path(path)


def write_attention_maps(results: Sequence[dict], out_dir: str | Path, geometry: GridGeometry | None = None) -> list[Path]:
    """For each `caption_paths` result with "attention" (S, h, w), write OUT_DIR/<image stem>.png; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for r in results:
        with Image.open(r["file"]) as im:
            picture = attention_figure(im.convert("RGB"), r["caption"], r["attention"], geometry)
        name, n = Path(r["file"]).stem, 1
        while out / f"{name}.png" in written:  # same file name in different folders
            name, n = f"{Path(r['file']).stem}-{n}", n + 1
        written.append(save_png(picture, out / f"{name}.png"))
    return written


def add_attention_html(captioner, items: list[dict], opts, conditions: Sequence[str] | None = None, batch_size: int = 32) -> None:
    """Give report items ({"image": path, ...}) an "extra_html" picture of the attention of each word of the model's caption."""
    from imcap.data.images import image_to_tensor, load_image

    geometry = captioner.attention_geometry
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        images = [load_image(it["image"]) for it in chunk]
        batch = torch.stack([image_to_tensor(im, captioner.image_size) for im in images])
        cond = list(conditions[start : start + batch_size]) if conditions is not None else None
        for it, im, caps in zip(chunk, images, captioner.caption_tensors(batch, opts, return_attention=True, condition=cond)):
            caption, _, weights = caps[0]
            picture = attention_figure(im, caption, weights, geometry, size=60, columns=4)
            it["extra_html"] = it.get("extra_html", "") + f"<img src='{png_data_uri(picture)}' alt='attention of each word' title='attention of each word'>"


@dataclass(frozen=True)
class Grounding:
    """How often the attention peak of a word naming an object lies inside that object's box."""

    hits: int
    words: int
    chance: float  # expected hits if every peak were a uniformly random cell

    @property
    def rate(self) -> float:
        """Share of object words whose peak is inside the object's box."""
        return self.hits / max(self.words, 1)

    @property
    def chance_rate(self) -> float:
        """The same share for uniformly random peaks."""
        return self.chance / max(self.words, 1)


def grounding(captioner, data, indices: Sequence[int], opts=None, batch_size: int = 64, sigma: float = SMOOTHING) -> Grounding:
    """On synthetic scenes: caption images `indices` of a PreproData and check every generated word that
    names one object (its colour or shape): does that word's attention peak (`attention_peak` with
    smoothing `sigma`; 0: the raw highest cell) lie inside the object's box?"""
    from imcap.data.images import image_to_tensor, load_image
    from imcap.data.synth import named_object

    geometry = captioner.attention_geometry
    hits = total = 0
    chance = 0.0
    for start in range(0, len(indices), batch_size):
        chunk = list(indices[start : start + batch_size])
        images = [load_image(data.image_path(i)) for i in chunk]
        batch = torch.stack([image_to_tensor(im, captioner.image_size) for im in images])
        cond = data.condition_texts(chunk, captioner.model.args.condition_field) if captioner.model.conditioned else None
        for i, im, caps in zip(chunk, images, captioner.caption_tensors(batch, opts, return_attention=True, condition=cond)):
            caption, _, weights = caps[0]
            h, w = weights.shape[1:]
            scale = im.size[0] / geometry.size
            centres = [(x * scale, y * scale) for x, y in (geometry.centre(r, c) for r in range(h) for c in range(w))]
            for t, word in enumerate(caption.split()[: weights.size(0)]):
                obj = named_object(word, data.images[i]["extra"]["objects"])
                if obj is None:
                    continue
                x0, y0, x1, y1 = obj["bbox"]
                inside = [x0 <= x < x1 and y0 <= y < y1 for x, y in centres]
                total += 1
                hits += inside[int(smooth(weights[t], sigma).flatten().argmax())]
                chance += sum(inside) / len(inside)
    return Grounding(hits, total, chance)
