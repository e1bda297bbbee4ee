"""The parts every synthetic scene is made of, whatever its difficulty: object colours, backgrounds, and the
geometry behind "left of" / "above" relations and "in the top left corner" locations."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 60),
    "blue": (30, 70, 230),
    "purple": (150, 40, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
# Muted mid-tone background bases, far from every object colour they are combined with.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "slate": (112, 124, 140),
    "sage": (130, 145, 120),
    "sand": (160, 148, 118),
    "taupe": (140, 125, 120),
    "mauve": (145, 120, 140),
    "teal": (95, 130, 130),
    "khaki": (150, 150, 105),
}
BACKGROUND_KINDS = ("plain", "gradient", "noisy")
MIN_CONTRAST = 100.0  # Euclidean RGB distance between an object colour and any background tone
MAX_CAPTION_WORDS = 16
RELATION_MARGIN = 0.2  # centres must differ by this fraction of the image side along the relation's axis


class Placed(Protocol):
    """Anything with a bounding-box centre (x, y) in pixels."""

    @property
    def center(self) -> tuple[float, float]: ...


@dataclass(frozen=True)
class Background:
    """A background: `kind` is plain/gradient/noisy; `tones` are the base names of its two ends."""

    kind: str
    tones: tuple[str, str]
    colors: tuple[tuple[int, int, int], tuple[int, int, int]]
    direction: int  # gradient: 0 horizontal, 1 vertical, 2 diagonal
    noise_seed: int

    @property
    def name(self) -> str:
        """Return the short description stored in captions.json, e.g. "gradient sand-teal"."""
        tones = self.tones[0] if self.tones[0] == self.tones[1] else f"{self.tones[0]}-{self.tones[1]}"
        return f"{self.kind} {tones}"


def jittered(rng: np.random.Generator, rgb: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
    """Return `rgb` with every channel moved by at most `amount`."""
    return tuple(int(c) for c in np.clip(np.array(rgb) + rng.integers(-amount, amount + 1, size=3), 0, 255))


def sample_background(rng: np.random.Generator) -> Background:
    """Draw a background kind and its one or two tones."""
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    names = list(BACKGROUNDS)
    first = names[int(rng.integers(len(names)))]
    second = names[int(rng.integers(len(names)))] if kind == "gradient" else first
    colors = (jittered(rng, BACKGROUNDS[first], 12), jittered(rng, BACKGROUNDS[second], 12))
    return Background(kind, (first, second), colors, int(rng.integers(3)), int(rng.integers(2**31)))


def allowed_colors(background: Background, palette: dict[str, tuple[int, int, int]] = COLORS) -> list[str]:
    """Return the names of `palette` colours that contrast with every tone of `background`, in palette order."""
    tones = np.array(background.colors, dtype=float)  # (2, 3)
    return [
        name for name, rgb in palette.items() if np.linalg.norm(tones - np.array(rgb), axis=1).min() >= MIN_CONTRAST
    ]


def background_pixels(background: Background, image_size: int) -> np.ndarray:
    """Return the (S, S, 3) uint8 background."""
    first, second = (np.array(c, dtype=np.float64) for c in background.colors)
    ramp = np.linspace(0.0, 1.0, image_size)
    if background.kind == "gradient":
        if background.direction == 0:
            t = np.broadcast_to(ramp[None, :], (image_size, image_size))
        elif background.direction == 1:
            t = np.broadcast_to(ramp[:, None], (image_size, image_size))
        else:
            t = (ramp[None, :] + ramp[:, None]) / 2
        pixels = first + (second - first) * t[:, :, None]  # (S, S, 3)
    else:
        pixels = np.broadcast_to(first, (image_size, image_size, 3)).copy()
        if background.kind == "noisy":
            noise = np.random.default_rng(background.noise_seed).normal(0.0, 6.0, size=(image_size, image_size, 1))
            pixels = pixels + noise  # (S, S, 3): grey-level noise keeps the tone
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def relation(a: Placed, b: Placed, image_size: int) -> str | None:
    """Return "left", "right", "above" or "below" (a relative to b) when unambiguous, else None."""
    dx = b.center[0] - a.center[0]
    dy = b.center[1] - a.center[1]
    margin = RELATION_MARGIN * image_size
    if abs(dx) >= margin and abs(dy) <= 0.5 * abs(dx):
        return "left" if dx > 0 else "right"
    if abs(dy) >= margin and abs(dx) <= 0.5 * abs(dy):
        return "above" if dy > 0 else "below"
    return None


def location(obj: Placed, image_size: int) -> str | None:
    """Return where a lone object clearly is ("on the left", "in the top right corner", ...), else None."""
    def band(value: float) -> str | None:
        if value < 0.35 * image_size:
            return "low"
        if value > 0.65 * image_size:
            return "high"
        if 0.42 * image_size < value < 0.58 * image_size:
            return "mid"
        return None

    cx, cy = obj.center
    h, v = band(cx), band(cy)
    horizontal = {"low": "left", "high": "right"}.get(h or "")
    vertical = {"low": "top", "high": "bottom"}.get(v or "")
    if horizontal and vertical:
        return f"in the {vertical} {horizontal} corner"
    if horizontal and v == "mid":
        return f"on the {horizontal}"
    if vertical and h == "mid":
        return f"at the {vertical}"
    if h == "mid" and v == "mid":
        return "in the center"
    return None


def article(phrase: str) -> str:
    """Return `phrase` with "a" or "an" in front."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase
