"""The built-in synthetic "scenes" data set: coloured shapes on plain backgrounds, 5 captions each.

Every image is drawn from a `Scene` (1-3 non-overlapping filled shapes with a colour, a size and a
bounding box, on a plain, gradient or lightly noisy background). `describe_scene` turns a scene into
5 different captions (several templates, synonyms, word orders and left/right/above/below relations
that are only stated when the geometry is unambiguous). `generate_scenes` writes the images and a
Karpathy-style captions.json; the same seed gives byte-identical files. `difficulty="hard"` draws the
harder scenes of `imcap.data.synth_hard` instead (3-6 overlapping, textured shapes; counting captions);
colours, backgrounds and the relation test shared by both live in `imcap.data.scene_parts`.

Scene sampling, rendering and describing are separate steps so that another per-scene annotation
(e.g. question/answer pairs) can be added next to `describe_scene` without touching the rest.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

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
from imcap.data.synth_hard import (
    describe_hard_scene,
    render_hard_scene,
    sample_hard_scene,
)
from imcap.data.vocab import tokenize
from imcap.errors import ImcapError
from imcap.progress import progress_bar

log = logging.getLogger(__name__)

DATASET_NAME = "imcap-synth"
FORMAT_VERSION = 1
CAPTIONS_PER_IMAGE = 5
MIN_SIZE, MAX_SIZE = 64, 128
MAX_IMAGES = 999_999

SHAPES = ("circle", "square", "triangle", "cross")
# Caption words naming each shape / size: the first is the usual one, the others are synonyms.
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "cross": ("cross", "plus sign"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
SIZE_FRACTION = {"small": 0.19, "large": 0.36}  # side of the shape's box / image side


@dataclass(frozen=True)
class SceneObject:
    """One filled shape; `bbox` is (x0, y0, x1, y1) in pixels, x1/y1 exclusive."""

    shape: str
    color: str
    size: str
    bbox: tuple[int, int, int, int]

    @property
    def center(self) -> tuple[float, float]:
        """Return the (x, y) centre of the bounding box."""
        x0, y0, x1, y1 = self.bbox
        return (x0 + x1) / 2, (y0 + y1) / 2

    def to_dict(self) -> dict:
        """Return the JSON form stored in captions.json."""
        return {"shape": self.shape, "color": self.color, "size": self.size, "bbox": list(self.bbox)}


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw and describe one image."""

    image_size: int
    background: Background
    objects: tuple[SceneObject, ...]


# ------------------------------------------------------------------------------------------ sampling


def _side(rng: np.random.Generator, size: str, image_size: int) -> int:
    """Return the pixel side of a shape of `size` (small/large) with a +-1 px jitter."""
    return round(SIZE_FRACTION[size] * image_size) + int(rng.integers(-1, 2))


def _gap_ok(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]], gap: int) -> bool:
    """True when `box` stays at least `gap` pixels away from every box in `others`."""
    x0, y0, x1, y1 = box
    return all(x1 + gap <= a0 or a1 + gap <= x0 or y1 + gap <= b0 or b1 + gap <= y0 for a0, b0, a1, b1 in others)


def _place_free(rng: np.random.Generator, sides: list[int], image_size: int) -> list[tuple] | None:
    """Return one box per side anywhere in the image, apart from each other, or None when one did not fit."""
    margin, gap = 2, max(3, image_size // 20)
    boxes: list[tuple[int, int, int, int]] = []
    for side in sides:
        for _ in range(100):
            x0 = int(rng.integers(margin, image_size - margin - side + 1))
            y0 = int(rng.integers(margin, image_size - margin - side + 1))
            box = (x0, y0, x0 + side, y0 + side)
            if _gap_ok(box, boxes, gap):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def _place_row(rng: np.random.Generator, sides: list[int], image_size: int) -> list[tuple] | None:
    """Return boxes side by side on one horizontal line (random gaps), or None when they do not fit."""
    margin, gap = 2, max(3, image_size // 20)
    slack = image_size - 2 * margin - sum(sides) - gap * (len(sides) - 1)
    if slack < 0:
        return None
    cuts = np.sort(rng.integers(0, slack + 1, size=len(sides)))  # extra space before each box
    extra = np.diff(cuts, prepend=0)
    line = int(rng.integers(margin + max(sides) // 2, image_size - margin - max(sides) // 2 + 1))
    boxes, x = [], margin
    for side, more in zip(sides, extra):
        x += int(more)
        y0 = min(max(line - side // 2 + int(rng.integers(-2, 3)), margin), image_size - margin - side)
        boxes.append((x, y0, x + side, y0 + side))
        x += side + gap
    return boxes


def _transpose(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Swap the x and y coordinates of a box."""
    return box[1], box[0], box[3], box[2]


def sample_scene(rng: np.random.Generator, image_size: int = 64) -> Scene:
    """Draw a random scene: background, 1-3 objects of contrasting colours, sizes and positions.

    No two objects share both colour and shape, so "the red circle" always names one object.
    """
    background = sample_background(rng)
    colors = allowed_colors(background)
    count = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    arrangement = ("free", "row", "column")[int(rng.choice(3, p=[0.4, 0.35, 0.25]))] if count > 1 else "free"
    kinds = [(shape, color) for shape in SHAPES for color in colors]
    while True:
        sizes = [("small", "large")[int(rng.integers(2))] for _ in range(count)]
        sides = [_side(rng, s, image_size) for s in sizes]
        if arrangement == "free":
            boxes = _place_free(rng, sides, image_size)
        else:
            boxes = _place_row(rng, sides, image_size)
            if boxes is not None and arrangement == "column":
                boxes = [_transpose(b) for b in boxes]
        if boxes is None:
            arrangement = "free"
            continue
        picked = rng.choice(len(kinds), size=count, replace=False)
        objects = tuple(
            SceneObject(shape=kinds[k][0], color=kinds[k][1], size=size, bbox=box)
            for k, size, box in zip(picked, sizes, boxes)
        )
        return Scene(image_size, background, objects)


# ----------------------------------------------------------------------------------------- rendering


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    """Fill `obj`'s shape so that its pixels span exactly its bounding box."""
    x0, y0, x1, y1 = obj.bbox
    xe, ye = x1 - 1, y1 - 1  # PIL's boxes include their last pixel
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse((x0, y0, xe, ye), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, xe, ye), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + xe) // 2, y0), (xe, ye), (x0, ye)], fill=fill)
    elif obj.shape == "cross":
        thick = max(3, (x1 - x0) // 3)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((x0, cy - thick // 2, xe, cy - thick // 2 + thick - 1), fill=fill)
        draw.rectangle((cx - thick // 2, y0, cx - thick // 2 + thick - 1, ye), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}")


def render_scene(scene: Scene) -> Image.Image:
    """Return the RGB image of `scene` (no anti-aliasing, so the same scene gives the same pixels)."""
    image = Image.fromarray(background_pixels(scene.background, scene.image_size))  # uint8 (S, S, 3) -> RGB
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_object(draw, obj)
    return image


# ---------------------------------------------------------------------------------------- describing


_ONE = [
    "{A}",
    "there is {A}",
    "a picture of {A}",
    "an image with {A}",
    "a single {a}",
    "one {a}",
    "only one shape : {A}",
    "{A} alone",
]
_ONE_PLACED = ["{A} {loc}", "{loc} there is {A}", "{loc} : {A}"]
_TWO = [
    "{A} and {B}",
    "there is {A} and {B}",
    "two shapes : {A} and {B}",
    "an image with {A} and {B}",
    "a picture of {A} and {B}",
    "{A} with {B}",
    "two objects , {A} and {B}",
]
_LAYOUT = {  # reading_order's layout -> templates; {A} is left of / above {B} (and {B} of {C})
    "left": [
        "{A} to the left of {B}",
        "{B} to the right of {A}",
        "{A} is left of {B}",
        "{B} is right of {A}",
        "{A} next to {B}",
        "{A} on the left and {B} on the right",
    ],
    "above": [
        "{A} above {B}",
        "{B} below {A}",
        "{A} is over {B}",
        "{B} under {A}",
        "{A} at the top and {B} at the bottom",
    ],
    "row": ["{A} , {B} and {C} from left to right", "from left to right : {A} , {B} and {C}"],
    "column": ["{A} , {B} and {C} from top to bottom", "from top to bottom : {A} , {B} and {C}"],
}
_THREE = [
    "{A} , {B} and {C}",
    "three shapes : {A} , {B} and {C}",
    "there are three shapes : {A} , {B} and {C}",
    "an image with {A} , {B} and {C}",
    "a picture of {A} , {B} and {C}",
    "three objects : {A} , {B} and {C}",
]


def _noun_phrase(rng: np.random.Generator, obj: SceneObject, with_size: bool) -> str:
    """Return e.g. "large red circle" or "big red ball" (no article); synonyms are the minority."""
    shape_words = SHAPE_WORDS[obj.shape]
    shape = shape_words[0] if rng.random() < 0.8 else shape_words[int(rng.integers(len(shape_words)))]
    words = [obj.color, shape]
    if with_size:
        size_words = SIZE_WORDS[obj.size]
        words.insert(0, size_words[0] if rng.random() < 0.75 else size_words[int(rng.integers(len(size_words)))])
    return " ".join(words)


def reading_order(scene: Scene) -> tuple[list[SceneObject], str | None]:
    """Return the objects in the order captions name them, and the layout that order follows.

    Layouts: "left" / "above" (two objects, the first is clearly left of / above the second), "row" /
    "column" (three objects clearly left to right / top to bottom), None (no clear layout; left to right).
    """
    by_x = sorted(scene.objects, key=lambda o: (o.center[0], o.center[1]))
    by_y = sorted(scene.objects, key=lambda o: (o.center[1], o.center[0]))
    if len(by_x) == 1:
        return by_x, None
    if all(relation(a, b, scene.image_size) == "left" for a, b in itertools.pairwise(by_x)):
        return by_x, "left" if len(by_x) == 2 else "row"
    if all(relation(a, b, scene.image_size) == "above" for a, b in itertools.pairwise(by_y)):
        return by_y, "above" if len(by_y) == 2 else "column"
    return by_x, None


def _templates(scene: Scene, objects: list[SceneObject], layout: str | None) -> list[list[str]]:
    """Return caption template groups: a specific group (relations, location) first, if any, then the generic one."""
    if len(objects) == 1:
        return [_ONE_PLACED, _ONE] if location(objects[0], scene.image_size) else [_ONE]
    generic = _TWO if len(objects) == 2 else _THREE
    return [_LAYOUT[layout], generic] if layout else [generic]


def _fill(rng: np.random.Generator, template: str, objects: list[SceneObject], loc: str | None) -> str:
    """Fill a template's {A}/{a}, {B}, {C}, {loc} slots, dropping size words if the caption gets too long."""
    with_size = bool(rng.random() < 0.5)
    for sized in (with_size, False):
        phrases = [_noun_phrase(rng, obj, sized) for obj in objects]
        slots = {"loc": loc or "", "a": phrases[0]}
        slots.update({key: article(p) for key, p in zip("ABC", phrases)})
        caption = template.format(**slots)
        if len(tokenize(caption)) <= MAX_CAPTION_WORDS:
            break
    return caption[0].upper() + caption[1:] + "."


def describe_scene(scene: Scene, rng: np.random.Generator, count: int = CAPTIONS_PER_IMAGE) -> list[str]:
    """Return `count` different captions of `scene` (raw text, capitalised, with a final period)."""
    objects, layout = reading_order(scene)
    loc = location(objects[0], scene.image_size) if len(objects) == 1 else None
    groups = _templates(scene, objects, layout)
    # The specific group (relations / locations) gives up to 3 captions, the generic group the rest.
    order: list[str] = []
    for i, group in enumerate(groups):
        picked = [group[j] for j in rng.permutation(len(group))]
        order += picked[:3] if i == 0 and len(groups) > 1 else picked
    captions: list[str] = []
    seen: set[tuple[str, ...]] = set()
    for attempt in range(200):
        template = order[attempt % len(order)]
        caption = _fill(rng, template, objects, loc)
        key = tuple(tokenize(caption))
        if key not in seen:
            seen.add(key)
            captions.append(caption)
            if len(captions) == count:
                return captions
    raise RuntimeError(f"could not write {count} different captions for {scene}")


def named_object(word: str, objects: list[dict]) -> dict | None:
    """The object (a captions.json "objects" entry) that a caption word names by its colour or shape
    (synonyms included; hard scenes' shapes by their own name), when exactly one object of the scene matches; None otherwise."""
    matches = [o for o in objects if o["color"] == word]
    if not matches:
        matches = [o for o in objects if word in SHAPE_WORDS.get(o["shape"], (o["shape"],)) or word in ("plus", "sign") and o["shape"] == "cross"]
    return matches[0] if len(matches) == 1 else None


# ----------------------------------------------------------------------------------------- questions

TASKS = ("captions", "vqa")
DIFFICULTIES = ("normal", "hard")
QUESTIONS_PER_IMAGE = 3
COUNT_WORDS = ("one", "two", "three")
# Paraphrases of each question kind; every question/answer pair gets all of its kind's as references.
_QUESTIONS: dict[str, list[str]] = {
    "colour": [
        "What colour is the {shape}?",
        "What is the colour of the {shape}?",
        "Which colour does the {shape} have?",
        "What color is the {shape}?",
    ],
    "shape": [
        "What shape is the {color} object?",
        "Which shape is {color}?",
        "What is the {color} shape?",
        "What kind of shape is the {color} one?",
    ],
    "size": [
        "How big is the {color} {shape}?",
        "What size is the {color} {shape}?",
        "Is the {color} {shape} small or large?",
        "How large is the {color} {shape}?",
    ],
    "count": [
        "How many shapes are there?",
        "How many objects are in the picture?",
        "What is the number of shapes?",
        "How many shapes can you see?",
    ],
}


def question_candidates(scene: Scene) -> list[tuple[str, int | None, str]]:
    """Every unambiguous (kind, object index or None, answer) of a scene.

    "colour" asks about an object whose shape is unique in the scene, "shape" about one whose colour is
    unique, "size" about any object (named by colour and shape), "count" about the whole image.
    """
    shapes = [o.shape for o in scene.objects]
    colors = [o.color for o in scene.objects]
    out: list[tuple[str, int | None, str]] = []
    for k, obj in enumerate(scene.objects):
        if shapes.count(obj.shape) == 1:
            out.append(("colour", k, obj.color))
        if colors.count(obj.color) == 1:
            out.append(("shape", k, obj.shape))
        out.append(("size", k, obj.size))
    out.append(("count", None, COUNT_WORDS[len(scene.objects) - 1]))
    return out


def ask_questions(scene: Scene, rng: np.random.Generator, count: int = QUESTIONS_PER_IMAGE) -> list[dict]:
    """Up to `count` different question/answer pairs about `scene`: {"kind", "object", "answer", "questions"}."""
    candidates = question_candidates(scene)
    picked = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    pairs = []
    for c in sorted(int(i) for i in picked):
        kind, k, answer = candidates[c]
        obj = scene.objects[k] if k is not None else None
        slots = {"shape": obj.shape, "color": obj.color} if obj is not None else {}
        pairs.append({"kind": kind, "object": k, "answer": answer, "questions": [t.format(**slots) for t in _QUESTIONS[kind]]})
    return pairs


def _question_rng(seed: int, index: int) -> np.random.Generator:
    """The generator that picks image `index`'s questions (separate from the scene's, so the images do not change)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, 0xA5C]))


def _vqa_records(scene: Scene, index: int, filename: str, split: str, seed: int) -> list[dict]:
    """One Karpathy-style record per question/answer pair: its questions are the "sentences", "answer" the condition."""
    objects = [obj.to_dict() for obj in scene.objects]
    return [
        {
            "id": f"{index:06d}-q{j}",
            "imgid": index,
            "filepath": "images",
            "filename": filename,
            "split": split,
            "sentences": [{"raw": q, "tokens": tokenize(q)} for q in pair["questions"]],
            "answer": pair["answer"],
            "question_kind": pair["kind"],
            "target": pair["object"],
            "objects": objects,
            "background": scene.background.name,
        }
        for j, pair in enumerate(ask_questions(scene, _question_rng(seed, index)))
    ]


# ----------------------------------------------------------------------------------------- the files

_IMAGE_NAME = re.compile(r"^\d{6}\.png$")


def _check_out_dir(out_dir: Path) -> None:
    """Refuse a path that is a file or a non-empty directory other than an earlier synth output."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ImcapError(f"{out_dir}: exists and is not a directory")
    entries = {p.name for p in out_dir.iterdir()}
    if not entries:
        return
    captions = out_dir / "captions.json"
    if captions.is_file():
        try:
            if json.loads(captions.read_text(encoding="utf-8")).get("dataset") == DATASET_NAME:
                return
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            pass
    images = out_dir / "images"
    # An interrupted run leaves only images/ with our file names in it (and maybe a half-written json).
    if entries <= {"images", "captions.json.tmp"} and images.is_dir() and all(_IMAGE_NAME.match(p.name) for p in images.iterdir()):
        return
    raise ImcapError(f"{out_dir}: directory is not empty and is not an {DATASET_NAME} data set; choose another --out")


def _clear_previous(out_dir: Path) -> None:
    """Delete the files an earlier run wrote, so that a smaller run leaves no stale images."""
    for name in ("captions.json", "captions.json.tmp"):
        (out_dir / name).unlink(missing_ok=True)
    images = out_dir / "images"
    if images.is_dir():
        for path in images.iterdir():
            if _IMAGE_NAME.match(path.name):
                path.unlink()


def split_of(num_images: int, seed: int) -> list[str]:
    """Return the deterministic 80/10/10 train/val/test split of `num_images` images."""
    n_val = n_test = round(num_images * 0.1)
    labels = np.array(["train"] * (num_images - n_val - n_test) + ["val"] * n_val + ["test"] * n_test)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5E1F]))
    return [str(s) for s in labels[rng.permutation(num_images)]]


def _validate(num_images: int, image_size: int) -> None:
    """Raise ImcapError for an impossible image count or size."""
    if not 1 <= num_images <= MAX_IMAGES:
        raise ImcapError(f"--images: must be between 1 and {MAX_IMAGES}, got {num_images}")
    if not MIN_SIZE <= image_size <= MAX_SIZE:
        raise ImcapError(f"--size: must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {image_size}")


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """Return the random generator of image `index` (independent of how many images are made)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def generate_scenes(
    out_dir: str | Path, num_images: int = 3000, seed: int = 123, image_size: int = 64, progress: bool = True, task: str = "captions",
    difficulty: str = "normal",
) -> Path:
    """Write `num_images` synthetic scenes and their captions under `out_dir`; return the captions.json path.

    task "vqa" writes the same images with question/answer pairs instead: one record per pair (id
    "<image>-q<j>"), its paraphrased questions as "sentences" and the answer in "answer".
    difficulty "hard" draws the scenes of `imcap.data.synth_hard` (3-6 overlapping, textured shapes; captions only).
    """
    if task not in TASKS:
        raise ImcapError(f"--task: must be one of {', '.join(TASKS)}, got {task!r}")
    if difficulty not in DIFFICULTIES:
        raise ImcapError(f"--difficulty: must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    if difficulty == "hard" and task != "captions":
        raise ImcapError("--difficulty hard: only for --task captions (questions are written for the normal scenes)")
    _validate(num_images, image_size)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    try:
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImcapError(f"{out_dir}: cannot create directory ({exc.strerror})") from None
    _clear_previous(out_dir)
    splits = split_of(num_images, seed)
    records = []
    for index in progress_bar(range(num_images), desc="synth", unit="img", disable=not progress):
        rng = scene_rng(seed, index)
        filename = f"{index:06d}.png"
        if difficulty == "hard":
            hard = sample_hard_scene(rng, image_size)
            render_hard_scene(hard).save(out_dir / "images" / filename, format="PNG")
            captions, objects, background = describe_hard_scene(hard, rng), hard.objects, hard.background
        else:
            scene = sample_scene(rng, image_size)
            render_scene(scene).save(out_dir / "images" / filename, format="PNG")
            if task == "vqa":
                records += _vqa_records(scene, index, filename, splits[index], seed)
                continue
            captions, objects, background = describe_scene(scene, rng), scene.objects, scene.background
        records.append({
            "imgid": index,
            "filepath": "images",
            "filename": filename,
            "split": splits[index],
            "sentences": [{"raw": raw, "tokens": tokenize(raw)} for raw in captions],
            "objects": [obj.to_dict() for obj in objects],
            "background": background.name,
        })
    data = {
        "dataset": DATASET_NAME,
        "version": FORMAT_VERSION,
        "seed": seed,
        "image_size": image_size,
        **({"task": task} if task != "captions" else {}),
        **({"difficulty": difficulty} if difficulty != "normal" else {}),
        "images": records,
    }
    path = out_dir / "captions.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data), encoding="utf-8")
    os.replace(tmp, path)
    log.debug("wrote %d images and %d captions to %s", num_images, CAPTIONS_PER_IMAGE * num_images, out_dir)
    return path
