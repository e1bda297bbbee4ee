"""Robust image reading: EXIF orientation, every PIL mode to RGB, one-line errors for bad files."""
from __future__ import annotations

import glob
import logging
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from imcap.errors import ImcapError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

MAX_PIXELS = 89_478_485  # PIL's own default limit (about 9459 x 9459)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "PA")
# What PIL raises while decoding a damaged file.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError)


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Return the fully decoded image at `path` as RGB, turned upright by its EXIF orientation."""
    path = Path(path)
    with _open(path, max_pixels) as img:
        try:
            img.load()
        except DECODE_ERRORS as exc:
            raise ImcapError(f"{path}: corrupt or truncated image ({_reason(exc)})") from None
        return to_rgb(upright(img, path))


def check_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Return (width, height) read from the header only; raise ImcapError for files `load_image` would reject early."""
    with _open(Path(path), max_pixels) as img:
        return img.size


def to_rgb(img: Image.Image) -> Image.Image:
    """Return `img` as RGB: alpha composited on white, 16-bit and float images scaled to 8 bits."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        return _gray_to_rgb(np.asarray(img).astype(np.float32) / 257.0)
    if mode in ("I", "F"):
        return _gray_to_rgb(_scale_to_8bit(np.asarray(img), is_float=mode == "F"))
    if mode == "La":  # premultiplied luminance: over white is L + (255 - a)
        lum, alpha = (np.asarray(b, dtype=np.int32) for b in img.split())
        return _gray_to_rgb(np.clip(lum + 255 - alpha, 0, 255).astype(np.float32))
    if mode in _ALPHA_MODES or (mode in ("L", "P", "1") and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        name = getattr(img, "filename", "") or "image"
        raise ImcapError(f"{name}: cannot convert mode {mode} to RGB ({exc})") from None


def image_to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """Return `img` resized (bilinear) to size x size as a float32 tensor (3, size, size) in [0, 1]."""
    import torch

    rgb = to_rgb(img).resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(rgb, dtype=np.uint8)  # (size, size, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # (3, size, size)


def find_images(paths: list[str]) -> list[Path]:
    """Return the sorted image files named by `paths`: files, folders (searched recursively) and glob patterns."""
    return collect_images(paths)[0]


def collect_images(paths: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The sorted image files named by `paths` (files, folders searched recursively, glob patterns), and
    (file, problem) for every file found there that cannot be read as one: broken symbolic links,
    unreadable files and, inside folders, files without an image extension.
    """
    found: set[Path] = set()
    passed_over: dict[Path, str] = {}

    def consider(path: Path, by_extension: bool) -> None:
        problem = _not_an_image(path, by_extension)
        if problem is None:
            found.add(path)
        elif problem:
            passed_over[path] = problem

    for raw in paths:
        if glob.has_magic(raw):
            matches = [Path(m) for m in glob.glob(raw, recursive=True)]
            if not matches:
                raise ImcapError(f"{raw}: pattern matches no files")
            for m in matches:
                for f in m.rglob("*") if m.is_dir() else [m]:
                    consider(f, by_extension=m.is_dir())
            continue
        p = Path(raw)
        if p.is_dir():
            before = len(found)
            for f in p.rglob("*"):
                consider(f, by_extension=True)
            if len(found) == before:
                raise ImcapError(f"{p}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        elif p.exists() or p.is_symlink():
            consider(p, by_extension=False)
        else:
            raise ImcapError(f"{p}: file not found")
    return sorted(found), sorted((str(f), problem) for f, problem in passed_over.items())


def _not_an_image(path: Path, by_extension: bool) -> str | None:
    """Why `path` cannot be read as an image ("" for a folder, which is searched instead), or None."""
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link (to {os.readlink(path)})"
    if path.is_dir():
        return ""
    if not path.is_file():
        return "not a regular file"
    if by_extension and path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file ({path.suffix or 'no extension'})"
    if not os.access(path, os.R_OK):
        return "not readable (permission denied)"
    return None


def _open(path: Path, max_pixels: int) -> Image.Image:
    """Open the header of an image file (nothing decoded) and refuse it if it has more than `max_pixels`."""
    try:
        if path.stat().st_size == 0:
            raise ImcapError(f"{path}: empty file (0 bytes)")
        img = Image.open(path)
    except FileNotFoundError:
        raise ImcapError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImcapError(f"{path}: is a folder, not an image") from None
    except UnidentifiedImageError:
        raise ImcapError(f"{path}: not an image (unknown or unsupported format)") from None
    except Image.DecompressionBombError as exc:
        raise ImcapError(f"{path}: too many pixels, refused as a possible decompression bomb ({exc})") from None
    except DECODE_ERRORS as exc:
        raise ImcapError(f"{path}: corrupt or truncated image ({_reason(exc)})") from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise ImcapError(f"{path}: {width}x{height} is more than {max_pixels} pixels "
                         "(refused as a possible decompression bomb)")
    if width == 0 or height == 0:
        img.close()
        raise ImcapError(f"{path}: image has zero size ({width}x{height})")
    return img


def upright(img: Image.Image, path: Path) -> Image.Image:
    """Apply the EXIF orientation tag; a broken EXIF block leaves the image as stored."""
    try:
        return ImageOps.exif_transpose(img)
    except DECODE_ERRORS as exc:
        log.debug("%s: ignoring unreadable EXIF orientation (%s)", path, exc)
        return img


def _scale_to_8bit(pixels: np.ndarray, is_float: bool) -> np.ndarray:
    """Map 32-bit integer or float pixels to 0..255: [0, 1] floats, 8-bit or 16-bit ranges, else min..max."""
    values = np.nan_to_num(pixels.astype(np.float64))  # (H, W)
    lo, hi = float(values.min()), float(values.max())
    if is_float and lo >= 0 and hi <= 1:
        return values * 255.0
    if lo >= 0 and hi <= 255:
        return values
    if lo >= 0 and hi <= 65535:
        return values / 257.0
    return (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)


def _gray_to_rgb(gray: np.ndarray) -> Image.Image:
    """Return an RGB image from a (H, W) array of 0..255 values."""
    gray8 = np.clip(np.rint(gray), 0, 255).astype(np.uint8)  # (H, W)
    return Image.fromarray(np.repeat(gray8[:, :, None], 3, axis=2), "RGB")  # (H, W, 3)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else exc.__class__.__name__
