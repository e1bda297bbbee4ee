"""The hard synthetic scenes (`imcap synth --difficulty hard`): 3-6 textured shapes that may overlap.

A `HardScene` lists its objects back to front: later objects are drawn over earlier ones, and every
object keeps at least MIN_VISIBLE of its pixels in view. Objects of one colour never touch, so each is a
separate blob to count. Beside the normal four shapes there are diamonds, stars, hexagons and hearts; beside the
normal eight colours pink, cyan and brown; and most coloured shapes carry a texture (striped, dotted,
checked: the object's colour with a darker shade of it).

`describe_hard_scene` writes 5 captions; each states a few facts that hold in the picture: an inventory
with counts ("five shapes : three red squares , a blue star and a green circle"), the largest group
("there are three red squares"), a relation between two objects that are not neighbours when the scene
has such a pair ("the striped red square is left of the blue star" with a third object between them),
"between", occlusion ("the blue star is in front of the red square"), textures and locations ("the pink
heart is in the top left corner"). An object is named
by the fewest words that pick out exactly one object (`referring_words`).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import permutations

import numpy as np
from PIL import Image, ImageDraw

from imcap.data.scene_parts import (
    COLORS,
    MAX_CAPTION_WORDS,
    Background,
    allowed_colors,
    article,
    background_pixels,
    location,
    relation,
    sample_background,
)
from imcap.data.vocab import tokenize

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "star", "hexagon", "heart")
PLURALS = {shape: shape + ("es" if shape.endswith("s") else "s") for shape in SHAPES}
COLORS_HARD: dict[str, tuple[int, int, int]] = {**COLORS, "pink": (250, 125, 190), "cyan": (40, 200, 215), "brown": (125, 70, 25)}
TEXTURES = ("plain", "striped", "dotted", "checked")
TEXTURE_NOUNS = {"striped": "stripes", "dotted": "dots", "checked": "checks"}
TEXTURED_COLORS = tuple(c for c in COLORS_HARD if c not in ("white", "black", "brown"))  # their shade would look like another colour
TEXTURED_SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "heart")  # thin arms (cross, star) cannot show a pattern
SIZE_FRACTION = {"small": 0.2, "large": 0.31}  # side of the shape's box / image side
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
MIN_OBJECTS, MAX_OBJECTS = 3, 6
MIN_VISIBLE = 0.6  # every object keeps this share of its pixels in view
MIN_OVERLAP = 0.08  # two shapes that overlap share at least this share of the smaller one's pixels
OVERLAP_PROB = 0.45  # chance that a new object is placed over an earlier one
GROUP_PROB = 0.6  # chance that a scene has a group of 2-3 objects of one colour and shape
SHADE = 0.4  # a texture's second tone: the object colour times this


@dataclass(frozen=True)
class HardObject:
    """One shape; `bbox` is (x0, y0, x1, y1) in pixels (x1/y1 exclusive), the tight box of the whole shape."""

    shape: str
    color: str
    size: str
    texture: str
    bbox: tuple[int, int, int, int]

    @property
    def center(self) -> tuple[float, float]:
        """Return the (x, y) centre of the bounding box."""
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) / 2, (y0 + y1) / 2

    def to_dict(self) -> dict:
        """Return the JSON form stored in captions.json."""
        return {"shape": self.shape, "color": self.color, "size": self.size, "texture": self.texture, "bbox": list(self.bbox)}

    @classmethod
    def from_dict(cls, raw: dict) -> HardObject:
        """Return the object of a captions.json "objects" entry."""
        return cls(raw["shape"], raw["color"], raw["size"], raw["texture"], tuple(raw["bbox"]))


@dataclass(frozen=True)
class HardScene:
    """Everything needed to draw and describe one hard image; `objects` run back to front."""

    image_size: int
    background: Background
    objects: tuple[HardObject, ...]


# ------------------------------------------------------------------------------------------ drawing


def _unit_box(xs: np.ndarray, ys: np.ndarray) -> list[tuple[float, float]]:
    """Return the points (xs, ys) scaled and shifted so that they span [0, 1] in x and y."""
    return list(zip((xs - xs.min()) / np.ptp(xs), (ys - ys.min()) / np.ptp(ys)))


def _star_points() -> list[tuple[float, float]]:
    """The 10 corners of a five-pointed star."""
    angles = np.deg2rad(-90 + 36 * np.arange(10))
    radius = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return _unit_box(radius * np.cos(angles), radius * np.sin(angles))


def _heart_points() -> list[tuple[float, float]]:
    """32 points on the outline of a heart (the classic parametric curve, tip down)."""
    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    return _unit_box(16 * np.sin(t) ** 3, -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)))


_OUTLINES = {"star": _star_points(), "heart": _heart_points()}  # unit-box polygons


def shape_mask(shape: str, bbox: tuple[int, int, int, int], image_size: int) -> np.ndarray:
    """Return the (S, S) bool mask of `shape` drawn to span exactly `bbox`."""
    canvas = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = bbox
    xe, ye = x1 - 1, y1 - 1  # PIL's boxes include their last pixel
    cx, cy = (x0 + xe) // 2, (y0 + ye) // 2
    if shape == "circle":
        draw.ellipse((x0, y0, xe, ye), fill=1)
    elif shape == "square":
        draw.rectangle((x0, y0, xe, ye), fill=1)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (xe, ye), (x0, ye)], fill=1)
    elif shape == "cross":
        thick = max(3, (x1 - x0) // 3)
        draw.rectangle((x0, cy - thick // 2, xe, cy - thick // 2 + thick - 1), fill=1)
        draw.rectangle((cx - thick // 2, y0, cx - thick // 2 + thick - 1, ye), fill=1)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (xe, cy), (cx, ye), (x0, cy)], fill=1)
    elif shape == "hexagon":
        q = (x1 - x0) // 4
        draw.polygon([(x0, cy), (x0 + q, y0), (xe - q, y0), (xe, cy), (xe - q, ye), (x0 + q, ye)], fill=1)
    elif shape in _OUTLINES:
        draw.polygon([(x0 + round(u * (xe - x0)), y0 + round(v * (ye - y0))) for u, v in _OUTLINES[shape]], fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(canvas) > 0


def texture_pattern(texture: str, bbox: tuple[int, int, int, int], image_size: int) -> np.ndarray:
    """Return the (S, S) bool mask of the pixels a texture paints in the darker shade (aligned to `bbox`)."""
    ys, xs = np.mgrid[0:image_size, 0:image_size]  # (S, S) each
    dx, dy = xs - bbox[0], ys - bbox[1]
    half = max(2, image_size // 32)  # 2 px stripes / dots / checks at 64 px
    if texture == "striped":
        return (dy // half) % 2 == 1
    if texture == "dotted":
        return ((dx - half) % (2 * half) < half) & ((dy - half) % (2 * half) < half)
    if texture == "checked":
        return (dx // half + dy // half) % 2 == 1
    if texture == "plain":
        return np.zeros((image_size, image_size), dtype=bool)
    raise ValueError(f"unknown texture {texture!r}")


def shade(color: str) -> tuple[int, int, int]:
    """Return the darker tone a texture of `color` alternates with."""
    return tuple(round(SHADE * c) for c in COLORS_HARD[color])


def render_hard_scene(scene: HardScene) -> Image.Image:
    """Return the RGB image of `scene`, objects painted back to front."""
    pixels = background_pixels(scene.background, scene.image_size)  # (S, S, 3) uint8
    for obj in scene.objects:
        mask = shape_mask(obj.shape, obj.bbox, scene.image_size)  # (S, S)
        pixels[mask] = COLORS_HARD[obj.color]
        if obj.texture != "plain":
            pixels[mask & texture_pattern(obj.texture, obj.bbox, scene.image_size)] = shade(obj.color)
    return Image.fromarray(pixels)


def overlaps(scene: HardScene) -> list[tuple[int, int]]:
    """Return the (front, back) index pairs of objects whose shapes overlap; the front one hides part of the back one."""
    masks = [shape_mask(o.shape, o.bbox, scene.image_size) for o in scene.objects]
    return [(i, j) for i in range(len(masks)) for j in range(i) if (masks[i] & masks[j]).any()]


# ------------------------------------------------------------------------------------------ sampling


def _sample_kinds(rng: np.random.Generator, count: int, colors: list[str]) -> list[tuple[str, str]]:
    """Return `count` (shape, colour) pairs in drawing order, often with a group of 2-3 equal ones to count."""
    def one() -> tuple[str, str]:
        return SHAPES[int(rng.integers(len(SHAPES)))], colors[int(rng.integers(len(colors)))]

    kinds = [one()] * int(rng.integers(2, 4)) if rng.random() < GROUP_PROB else []
    while len(kinds) < count:
        kinds.append(one())
    return [kinds[k] for k in rng.permutation(count)]


def _boxes_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int) -> bool:
    """True when boxes `a` and `b` are at least `gap` pixels apart."""
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _place(rng: np.random.Generator, kinds: list[tuple[str, str]], sides: list[int], image_size: int) -> list[tuple] | None:
    """Return one box per object, back to front, or None when one did not fit.

    A new object either keeps clear of the others or overlaps one or more of them clearly (MIN_OVERLAP),
    never one of its own colour, and never hides more than 1 - MIN_VISIBLE of an earlier object.
    """
    margin = 1
    boxes: list[tuple[int, int, int, int]] = []
    masks: list[np.ndarray] = []
    hidden: list[np.ndarray] = []  # per placed object: its pixels covered by later objects
    for (shape, color), side in zip(kinds, sides):
        over = bool(boxes) and rng.random() < OVERLAP_PROB
        for _ in range(60):
            if over:
                ax0, ay0, ax1, ay1 = boxes[int(rng.integers(len(boxes)))]
                reach = (ax1 - ax0 + side) / 2
                cx, cy = (ax0 + ax1) / 2 + rng.uniform(-0.8, 0.8) * reach, (ay0 + ay1) / 2 + rng.uniform(-0.8, 0.8) * reach
                x0 = min(max(round(cx - side / 2), margin), image_size - margin - side)
                y0 = min(max(round(cy - side / 2), margin), image_size - margin - side)
            else:
                x0 = int(rng.integers(margin, image_size - margin - side + 1))
                y0 = int(rng.integers(margin, image_size - margin - side + 1))
            box = (x0, y0, x0 + side, y0 + side)
            if not all(_boxes_apart(box, b, 2) for b, (_, c) in zip(boxes, kinds) if c == color):
                continue
            if not over and not all(_boxes_apart(box, b, 1) for b in boxes):
                continue
            mask = shape_mask(shape, box, image_size)
            shared = [int((mask & m).sum()) for m in masks]
            clear = all(s == 0 or s >= MIN_OVERLAP * min(mask.sum(), m.sum()) for s, m in zip(shared, masks))
            visible = all(((m & ~h & ~mask).sum()) >= MIN_VISIBLE * m.sum() for m, h in zip(masks, hidden))
            if clear and visible and (not over or any(shared)):
                hidden = [h | mask for h in hidden]
                boxes.append(box)
                masks.append(mask)
                hidden.append(np.zeros_like(mask))
                break
        else:
            return None
    return boxes


def sample_hard_scene(rng: np.random.Generator, image_size: int = 64) -> HardScene:
    """Draw a random hard scene: background, 3-6 objects (some overlapping, some textured), back to front."""
    background = sample_background(rng)
    colors = allowed_colors(background, COLORS_HARD)
    count = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    while True:
        kinds = _sample_kinds(rng, count, colors)
        sizes = [("small", "large")[int(rng.integers(2))] for _ in range(count)]
        sides = [round(SIZE_FRACTION[s] * image_size) + int(rng.integers(-1, 2)) for s in sizes]
        textures = [
            TEXTURES[int(rng.choice(len(TEXTURES), p=[0.4, 0.2, 0.2, 0.2]))] if shape in TEXTURED_SHAPES and color in TEXTURED_COLORS else "plain"
            for shape, color in kinds
        ]
        boxes = _place(rng, kinds, sides, image_size)
        if boxes is not None:
            objects = tuple(HardObject(s, c, z, t, b) for (s, c), z, t, b in zip(kinds, sizes, textures, boxes))
            return HardScene(image_size, background, objects)


# ---------------------------------------------------------------------------------------- describing

_ORDER = ("size", "texture", "color", "shape")  # word order of a noun phrase


def _naming(obj: HardObject, objects: tuple[HardObject, ...], choices: list[set[str]]) -> str | None:
    """Return the words of the first attribute set in `choices` that matches `obj` alone among `objects`, else None."""
    for named in choices:
        if sum(all(getattr(o, a) == getattr(obj, a) for a in named) for o in objects) == 1:
            return " ".join(getattr(obj, a) for a in _ORDER if a in named)
    return None


def referring_words(obj: HardObject, objects: tuple[HardObject, ...]) -> str | None:
    """Return the fewest words that pick out `obj` alone among `objects` ("striped red square"), else None.

    A textured object always names its texture; size, and "plain" for an untextured one, are added only when needed.
    """
    base = {"color", "shape"} | ({"texture"} if obj.texture != "plain" else set())
    return _naming(obj, objects, [base, base | {"size"}, base | {"texture"}, base | {"size", "texture"}])


def _join(phrases: list[str]) -> str:
    """Return "A", "A and B" or "A , B and C"."""
    return phrases[0] if len(phrases) == 1 else " , ".join(phrases[:-1]) + " and " + phrases[-1]


def _counted(n: int, words: str, plural: str) -> str:
    """Return "a red square" for one, "three red squares" for more."""
    return article(words) if n == 1 else f"{NUMBER_WORDS[n]} {plural}"


def _groups(objects: tuple[HardObject, ...], by_color: bool) -> list[tuple[int, str, str]]:
    """Return (count, singular, plural) per kind ((colour, shape) or shape), largest first, then left to right."""
    key = (lambda o: (o.color, o.shape)) if by_color else (lambda o: (o.shape,))
    counts = Counter(key(o) for o in objects)
    first_x = {}
    for o in sorted(objects, key=lambda o: o.center):
        first_x.setdefault(key(o), o.center[0])
    ordered = sorted(counts, key=lambda k: (-counts[k], first_x[k]))
    return [(counts[k], " ".join(k), " ".join(k[:-1] + (PLURALS[k[-1]],))) for k in ordered]


def inventory_captions(objects: tuple[HardObject, ...]) -> list[str]:
    """Every object counted: by colour and shape, by shape when that is too long, or only the total (3 wordings)."""
    n = NUMBER_WORDS[len(objects)]
    for by_color in (True, False):
        listed = _join([_counted(c, one, many) for c, one, many in _groups(objects, by_color)])
        captions = [f"{n} shapes : {listed}", f"there are {n} shapes : {listed}", f"{n} objects : {listed}"]
        fitting = [c for c in captions if len(tokenize(c)) <= MAX_CAPTION_WORDS]
        if fitting:
            return fitting
    return [f"there are {n} shapes", f"{n} shapes", f"{n} objects"]


def _largest_group(scene: HardScene) -> list[str]:
    """The largest group of equal objects: same colour and shape, else same colour, else same shape."""
    count, _, plural = _groups(scene.objects, by_color=True)[0]
    if count < 2:
        color, count = Counter(o.color for o in scene.objects).most_common(1)[0]
        plural = f"{color} shapes"
    if count < 2:
        count, _, plural = _groups(scene.objects, by_color=False)[0]
    if count < 2:
        n = NUMBER_WORDS[len(scene.objects)]
        return [f"{n} different shapes", f"there are {n} different shapes"]
    phrase = f"{NUMBER_WORDS[count]} {plural}"
    return [f"there are {phrase}", f"{phrase} in the picture", f"the picture shows {phrase}"]


def _between_axis(a: HardObject, b: HardObject, c: HardObject, axis: int) -> bool:
    """True when `c`'s centre lies strictly between those of `a` and `b` along `axis` (0: x, 1: y)."""
    lo, hi = sorted((a.center[axis], b.center[axis]))
    return lo < c.center[axis] < hi


def _relations(scene: HardScene, names: list[str | None]) -> list[str]:
    """Left/right/above/below between two named objects; pairs with another object between them come first."""
    objs = scene.objects
    near, far = [], []
    for i, j in permutations(range(len(objs)), 2):
        rel = relation(objs[i], objs[j], scene.image_size)
        if rel not in ("left", "above") or names[i] is None or names[j] is None:
            continue
        a, b = f"the {names[i]}", f"the {names[j]}"
        if rel == "left":
            captions = [f"{a} is left of {b}", f"{a} is to the left of {b}", f"{b} is right of {a}", f"{b} is to the right of {a}"]
        else:
            captions = [f"{a} is above {b}", f"{b} is below {a}"]
        axis = 0 if rel == "left" else 1
        between = any(_between_axis(objs[i], objs[j], objs[k], axis) for k in range(len(objs)) if k not in (i, j))
        (far if between else near).append(captions)
    return [c for group in (far or near) for c in group]


def _betweens(scene: HardScene, names: list[str | None]) -> list[str]:
    """"the B is between the A and the C" where A, B, C run clearly left to right or top to bottom."""
    objs = scene.objects
    out = []
    for i, j, k in permutations(range(len(objs)), 3):
        if None in (names[i], names[j], names[k]):
            continue
        rel = relation(objs[i], objs[j], scene.image_size)
        if rel in ("left", "above") and relation(objs[j], objs[k], scene.image_size) == rel:
            out.append(f"the {names[j]} is between the {names[i]} and the {names[k]}")
    return out


def _occlusions(scene: HardScene, names: list[str | None]) -> list[str]:
    """Which named object is in front of which."""
    out = []
    for i, j in overlaps(scene):
        if names[i] is None or names[j] is None:
            continue
        f, b = f"the {names[i]}", f"the {names[j]}"
        out += [f"{f} is in front of {b}", f"{b} is behind {f}", f"{f} covers part of {b}", f"{b} is partly hidden by {f}"]
    return out


def _locations(scene: HardScene, names: list[str | None]) -> list[str]:
    """Where a named object clearly is: "the red square is in the top left corner"."""
    out = []
    for obj, name in zip(scene.objects, names):
        where = location(obj, scene.image_size)
        if name is not None and where is not None:
            out.append(f"the {name} is {where}")
    return out


def _textures(scene: HardScene) -> list[str]:
    """How many shapes carry each texture, and which object has which texture."""
    counts = Counter(o.texture for o in scene.objects if o.texture != "plain")
    if not counts:
        return ["all the shapes are plain", "none of the shapes has a pattern"]
    present = [t for t in TEXTURE_NOUNS if t in counts]
    listed = _join([_counted(counts[t], f"{t} shape", f"{t} shapes") for t in present])
    out = [listed, f"there {'is' if counts[present[0]] == 1 else 'are'} {listed}"]
    for obj in scene.objects:
        words = _naming(obj, scene.objects, [{"color", "shape"}, {"size", "color", "shape"}]) if obj.texture != "plain" else None
        if words is not None:
            out.append(f"the {words} has {TEXTURE_NOUNS[obj.texture]}")
    return out


def describe_hard_scene(scene: HardScene, rng: np.random.Generator, count: int = 5) -> list[str]:
    """Return `count` different captions of `scene` (raw text, capitalised, with a final period).

    The first two count (the inventory, the largest group); the others pick in random order among
    relations, occlusion, textures, "between" and locations, one fact each, then go round again.
    """
    names = [referring_words(o, scene.objects) for o in scene.objects]
    facts = [_relations(scene, names), _occlusions(scene, names), _textures(scene), _betweens(scene, names), _locations(scene, names)]
    kinds = [inventory_captions(scene.objects), _largest_group(scene)] + [facts[k] for k in rng.permutation(len(facts))]
    pools = [[c for c in (kind[k] for k in rng.permutation(len(kind))) if len(tokenize(c)) <= MAX_CAPTION_WORDS] for kind in kinds]
    captions: list[str] = []
    seen: set[tuple[str, ...]] = set()
    while any(pools):
        for pool in pools:
            if pool:
                caption = pool.pop(0)
                key = tuple(tokenize(caption))
                if key not in seen:
                    seen.add(key)
                    captions.append(caption[0].upper() + caption[1:] + ".")
                    if len(captions) == count:
                        return captions
    raise RuntimeError(f"could not write {count} different captions for {scene}")
