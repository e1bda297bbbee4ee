"""Robust image reading: EXIF orientation, every PIL mode to RGB, bad files, tensors, finding images."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from imcap.data.images import check_image, find_images, image_to_tensor, load_image, to_rgb
from imcap.errors import ImcapError


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb_png(path: Path, side: int = 100_000) -> Path:
    """A tiny PNG whose header claims side x side pixels (its pixel data is not even valid)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 8))
                     + _png_chunk(b"IEND", b""))
    return path


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((32, 64, 3), dtype=np.uint8)  # stored landscape: left half red, right half blue
    stored[:, :32] = (255, 0, 0)
    stored[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (32, 64)  # portrait once upright
    top, bottom = np.asarray(img)[8, 16], np.asarray(img)[56, 16]
    assert top[0] > 200 and top[2] < 60  # the stored left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def _pixel(img: Image.Image) -> tuple[int, int, int]:
    assert img.mode == "RGB"
    return tuple(int(v) for v in np.asarray(img)[0, 0])


@pytest.mark.parametrize("mode, make, expected", [
    ("1", lambda: Image.new("1", (4, 4), 1), (255, 255, 255)),
    ("L", lambda: Image.new("L", (4, 4), 77), (77, 77, 77)),
    ("LA", lambda: Image.new("LA", (4, 4), (0, 0)), (255, 255, 255)),  # fully transparent -> white
    ("RGBA", lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 128)), (255, 127, 127)),  # half red over white
    ("RGBA", lambda: Image.new("RGBA", (4, 4), (10, 20, 30, 255)), (10, 20, 30)),
    ("CMYK", lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0)),
    ("I;16", lambda: Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)), (255, 255, 255)),
    ("I;16", lambda: Image.fromarray(np.full((4, 4), 257 * 100, dtype=np.uint16)), (100, 100, 100)),
    ("I", lambda: Image.fromarray(np.full((4, 4), 257 * 200, dtype=np.int32)), (200, 200, 200)),
    ("F", lambda: Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)), (128, 128, 128)),
    ("YCbCr", lambda: Image.new("YCbCr", (4, 4), (128, 128, 128)), (128, 128, 128)),
])
def test_every_mode_becomes_rgb(mode: str, make, expected: tuple[int, int, int]) -> None:
    img = make()
    assert img.mode.startswith(mode[:1])
    got = _pixel(to_rgb(img))
    assert all(abs(g - e) <= 2 for g, e in zip(got, expected)), got


def test_palette_with_transparency_and_la_from_files(tmp_path: Path) -> None:
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    pal.info["transparency"] = 1
    pal.save(tmp_path / "p.png", transparency=1)
    Image.new("LA", (4, 4), (30, 255)).save(tmp_path / "la.png")
    Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)).save(tmp_path / "i16.png")
    Image.new("CMYK", (4, 4), (0, 0, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert _pixel(load_image(tmp_path / "p.png")) == (255, 255, 255)  # transparent palette entry -> white
    assert _pixel(load_image(tmp_path / "la.png")) == (30, 30, 30)
    assert _pixel(load_image(tmp_path / "i16.png")) == (round(40000 / 257),) * 3
    r, g, b = _pixel(load_image(tmp_path / "cmyk.jpg"))
    assert r > 230 and g > 230 and b < 30  # yellow


def test_all_pil_modes_convert_without_error() -> None:
    for mode in ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "I", "F",
                 "I;16", "I;16B", "I;16L"):
        assert to_rgb(Image.new(mode, (3, 2))).size == (3, 2), mode


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    zero = tmp_path / "zero.jpg"
    zero.write_bytes(b"")
    text = tmp_path / "text.jpg"
    text.write_text("this is not a JPEG")
    full = tmp_path / "full.jpg"
    _noise(64, 64).save(full)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    _noise(64, 64).save(tmp_path / "full.png")
    truncated_png = tmp_path / "truncated.png"
    truncated_png.write_bytes((tmp_path / "full.png").read_bytes()[:3000])
    return {
        "missing": (tmp_path / "missing.png", "file not found"),
        "zero": (zero, r"empty file \(0 bytes\)"),
        "text": (text, "not an image"),
        "folder": (tmp_path, "is a folder"),
        "truncated": (truncated, "corrupt or truncated image"),
        "truncated_png": (truncated_png, "corrupt or truncated image"),
        "bomb": (_bomb_png(tmp_path / "bomb.png"), "decompression bomb"),
    }


def test_bad_files_raise_one_line_errors(tmp_path: Path) -> None:
    for key, (path, problem) in _bad_files(tmp_path).items():
        with pytest.raises(ImcapError, match=problem) as err:
            load_image(path)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and "\n" not in message, key


def test_max_pixels_is_checked_before_decoding(tmp_path: Path) -> None:
    # A header claiming 3000 x 3000 (under PIL's own limit) with no valid pixel data: if it were decoded the error
    # would be about corrupt data, not about its size.
    bomb = _bomb_png(tmp_path / "big.png", side=3000)
    with pytest.raises(ImcapError, match=r"3000x3000 is more than 1000000 pixels"):
        load_image(bomb, max_pixels=1_000_000)
    with pytest.raises(ImcapError, match="corrupt or truncated"):
        load_image(bomb, max_pixels=10_000_000)
    with pytest.raises(ImcapError, match="decompression bomb"):
        check_image(bomb, max_pixels=1_000_000)


def test_check_image_reads_only_the_header(tmp_path: Path) -> None:
    files = _bad_files(tmp_path)
    assert check_image(tmp_path / "full.jpg") == (64, 64)
    assert check_image(files["truncated"][0]) == (64, 64)  # header intact; only a full decode finds the damage
    for key in ("missing", "zero", "text", "bomb"):
        with pytest.raises(ImcapError):
            check_image(files[key][0])


def test_image_to_tensor() -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 51))
    t = image_to_tensor(img, 16)
    assert t.shape == (3, 16, 16) and t.dtype == torch.float32
    assert torch.allclose(t[:, 5, 5], torch.tensor([1.0, 0.0, 0.2]))
    noisy = image_to_tensor(_noise(50, 30), 24)
    assert noisy.shape == (3, 24, 24) and 0.0 <= float(noisy.min()) and float(noisy.max()) <= 1.0
    gray = image_to_tensor(Image.new("LA", (8, 8), (0, 0)), 4)  # non-RGB input goes through to_rgb
    assert torch.equal(gray, torch.ones(3, 4, 4))


def test_find_images_files_folders_globs(tmp_path: Path) -> None:
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for rel in ("a/1.jpg", "a/deep/2.PNG", "a/notes.txt", "b.jpeg", "c.gif"):
        (tmp_path / rel).write_bytes(b"x")
    found = find_images([str(tmp_path / "a"), str(tmp_path / "*.jpeg"), str(tmp_path / "a" / "1.jpg")])
    assert found == sorted([tmp_path / "a" / "1.jpg", tmp_path / "a" / "deep" / "2.PNG", tmp_path / "b.jpeg"])
    assert find_images([str(tmp_path / "c.gif"), str(tmp_path / "b.jpeg")]) == [tmp_path / "b.jpeg",
                                                                                 tmp_path / "c.gif"]
    assert tmp_path / "a" / "deep" / "2.PNG" in find_images([str(tmp_path / "**" / "*.PNG")])


@pytest.mark.parametrize("pattern, problem", [
    ("*.webp", "pattern matches no files"),
    ("nothing.jpg", "file not found"),
    ("empty", "folder holds no images"),
])
def test_find_images_errors(tmp_path: Path, pattern: str, problem: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(ImcapError, match=problem):
        find_images([str(tmp_path / pattern)])
