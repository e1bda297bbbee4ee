"""The synthetic scenes data set: layout, caption variety, CIDEr design checks, determinism, boxes; hard scenes: truthful counts, relations, occlusion."""
from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imcap.cli import main
from imcap.data.synth import (
    COLORS,
    SHAPE_WORDS,
    SceneObject,
    generate_scenes,
    location,
    relation,
)
from imcap.data.synth_hard import (
    COLORS_HARD,
    NUMBER_WORDS,
    PLURALS,
    TEXTURES,
    shade,
    shape_mask,
)
from imcap.data.synth_hard import SHAPES as HARD_SHAPES
from imcap.data.vocab import Vocab, tokenize
from imcap.errors import ImcapError

NUM_IMAGES = 500
SEED = 7
WORD_TO_SHAPE = {word.split()[0]: shape for shape, words in SHAPE_WORDS.items() for word in words}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> tuple[Path, dict]:
    """Generate one small data set shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("synth")
    path = generate_scenes(out, num_images=NUM_IMAGES, seed=SEED, progress=False)
    return out, json.loads(path.read_text())


def _tree_hash(root: Path) -> str:
    """Hash every file name and content under `root`."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _split(data: dict, name: str) -> list[dict]:
    return [im for im in data["images"] if im["split"] == name]


def _cider(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    cider = pytest.importorskip("pycocoevalcap.cider.cider")
    score, _ = cider.Cider().compute_score(gts, res)
    return float(score)


def _references(images: list[dict]) -> dict[int, list[str]]:
    return {im["imgid"]: [" ".join(s["tokens"]) for s in im["sentences"]] for im in images}


def _oracle(im: dict) -> str:
    """One fixed template from the true scene: "a large red circle , a small blue square and ..." left to right."""
    objects = sorted(im["objects"], key=lambda o: (o["bbox"][0] + o["bbox"][2], o["bbox"][1] + o["bbox"][3]))
    phrases = [f"{o['size']} {o['color']} {o['shape']}" for o in objects]
    phrases = [("an " if p[0] in "aeiou" else "a ") + p for p in phrases]
    text = phrases[0] if len(phrases) == 1 else " , ".join(phrases[:-1]) + " and " + phrases[-1]
    return " ".join(tokenize(text))


def _named(tokens: list[str]) -> list[tuple[str, str]]:
    """Return the (colour, shape) pairs a caption names, in order."""
    return [
        (word, WORD_TO_SHAPE[nxt])
        for word, nxt in itertools.pairwise(tokens)
        if word in COLORS and nxt in WORD_TO_SHAPE
    ]


def test_layout_and_json_format(synth):
    out, data = synth
    assert (data["dataset"], data["version"], data["seed"], data["image_size"]) == ("imcap-synth", 1, SEED, 64)
    assert [im["imgid"] for im in data["images"]] == list(range(NUM_IMAGES))
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(NUM_IMAGES)]
    assert Counter(im["split"] for im in data["images"]) == {"train": 400, "val": 50, "test": 50}
    for im in data["images"][:50]:
        assert (im["filepath"], im["filename"]) == ("images", f"{im['imgid']:06d}.png")
        with Image.open(out / im["filepath"] / im["filename"]) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 64))
        assert 1 <= len(im["objects"]) <= 3
        assert im["background"].split()[0] in ("plain", "gradient", "noisy")
    for im in data["images"]:
        for sentence in im["sentences"]:
            assert sentence["tokens"] == tokenize(sentence["raw"])
            assert sentence["raw"][0].isupper() and sentence["raw"].endswith(".")
            assert 1 <= len(sentence["tokens"]) <= 16


def test_every_image_has_five_distinct_captions_naming_every_object(synth):
    _, data = synth
    for im in data["images"]:
        token_lists = [tuple(s["tokens"]) for s in im["sentences"]]
        assert len(token_lists) == 5 and len(set(token_lists)) == 5
        truth = sorted((o["color"], o["shape"]) for o in im["objects"])
        for tokens in token_lists:
            assert sorted(_named(list(tokens))) == truth, (tokens, truth)


def test_scenes_and_captions_are_varied(synth):
    _, data = synth
    counts = Counter(w for im in data["images"] for s in im["sentences"] for w in s["tokens"])
    assert len(counts) >= 40
    assert len(Vocab.build([s["tokens"] for im in _split(data, "train") for s in im["sentences"]])) - 4 >= 40
    objects = [o for im in data["images"] for o in im["objects"]]
    assert {o["shape"] for o in objects} == set(SHAPE_WORDS)
    assert {o["color"] for o in objects} == set(COLORS)
    assert {o["size"] for o in objects} == {"small", "large"}
    assert set(Counter(len(im["objects"]) for im in data["images"])) == {1, 2, 3}
    assert len({im["background"] for im in data["images"]}) >= 30
    relation_words = Counter(w for im in data["images"] for s in im["sentences"] for w in s["tokens"])
    for word in ("left", "right", "above", "below", "top", "bottom"):
        assert relation_words[word] >= 10, word


def test_oracle_caption_scores_high_and_blind_baseline_low(synth):
    _, data = synth
    test = _split(data, "test")
    gts = _references(test)
    oracle = _cider(gts, {im["imgid"]: [_oracle(im)] for im in test})
    # The oracle caption of the next test image: right kind of sentence, wrong scene.
    other = _cider(gts, {im["imgid"]: [_oracle(test[(k + 1) % len(test)])] for k, im in enumerate(test)})
    train_captions = Counter(" ".join(s["tokens"]) for im in _split(data, "train") for s in im["sentences"])
    blind_caption = train_captions.most_common(1)[0][0]
    blind = _cider(gts, {imgid: [blind_caption] for imgid in gts})
    assert oracle >= 2.5
    assert blind < 0.4
    assert other < oracle / 4


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    first = generate_scenes(tmp_path / "a", num_images=30, seed=11, progress=False).parent
    second = generate_scenes(tmp_path / "b", num_images=30, seed=11, progress=False).parent
    other = generate_scenes(tmp_path / "c", num_images=30, seed=12, progress=False).parent
    assert _tree_hash(first) == _tree_hash(second)
    assert _tree_hash(first) != _tree_hash(other)
    # Re-running into an existing synth directory (even a larger one) overwrites it completely.
    generate_scenes(other, num_images=45, seed=3, progress=False)
    generate_scenes(other, num_images=30, seed=11, progress=False)
    assert _tree_hash(other) == _tree_hash(first)


def test_bounding_boxes_match_the_drawn_pixels(synth):
    out, data = synth
    for im in data["images"][:150]:
        pixels = np.asarray(Image.open(out / "images" / im["filename"]))  # (64, 64, 3)
        boxes = [o["bbox"] for o in im["objects"]]
        for obj in im["objects"]:
            x0, y0, x1, y1 = obj["bbox"]
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            mask = (pixels[y0:y1, x0:x1] == COLORS[obj["color"]]).all(axis=2)  # (h, w)
            assert mask[(y1 - y0) // 2, (x1 - x0) // 2], obj
            rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
            assert (rows[0], rows[-1], cols[0], cols[-1]) == (0, y1 - y0 - 1, 0, x1 - x0 - 1), obj
            assert mask.mean() > 0.3, obj
            # Outside the box (away from other objects) no pixel has this object's colour by accident.
            whole = (pixels == COLORS[obj["color"]]).all(axis=2)
            for bx0, by0, bx1, by1 in boxes:
                whole[by0:by1, bx0:bx1] = False
            assert not whole.any()
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
    large = [o["bbox"][2] - o["bbox"][0] for im in data["images"] for o in im["objects"] if o["size"] == "large"]
    small = [o["bbox"][2] - o["bbox"][0] for im in data["images"] for o in im["objects"] if o["size"] == "small"]
    assert min(large) >= 1.5 * max(small)


_RELATIONS = {  # caption words between the two objects -> (first object's place, relative to the second)
    ("to", "the", "left", "of"): "left",
    ("is", "left", "of"): "left",
    ("to", "the", "right", "of"): "right",
    ("is", "right", "of"): "right",
    ("above",): "above",
    ("is", "over"): "above",
    ("below",): "below",
    ("under",): "below",
}


def test_stated_relations_match_the_geometry(synth):
    _, data = synth
    checked = 0
    for im in data["images"]:
        by_kind = {(o["color"], o["shape"]): o for o in im["objects"]}
        for sentence in im["sentences"]:
            tokens = sentence["tokens"]
            for words, rel in _RELATIONS.items():
                spans = [i for i in range(len(tokens)) if tuple(tokens[i:i + len(words)]) == words]
                if not spans:
                    continue
                first, second = _named(tokens[: spans[0]])[-1], _named(tokens[spans[0]:])[0]
                (ax, ay), (bx, by) = (_centre(by_kind[first]), _centre(by_kind[second]))
                along, across = {
                    "left": (bx - ax, ay - by), "right": (ax - bx, ay - by),
                    "above": (by - ay, ax - bx), "below": (ay - by, ax - bx),
                }[rel]
                assert along >= 0.2 * 64 and abs(across) <= 0.5 * along, (sentence["raw"], im["objects"])
                checked += 1
    assert checked > 100


def _centre(obj: dict) -> tuple[float, float]:
    x0, y0, x1, y1 = obj["bbox"]
    return (x0 + x1) / 2, (y0 + y1) / 2


def test_relation_and_location_need_a_clear_margin():
    def box(cx: int, cy: int) -> SceneObject:
        return SceneObject("circle", "red", "small", (cx - 6, cy - 6, cx + 6, cy + 6))

    assert relation(box(10, 30), box(50, 30), 64) == "left"
    assert relation(box(50, 30), box(10, 30), 64) == "right"
    assert relation(box(30, 10), box(32, 50), 64) == "above"
    assert relation(box(30, 50), box(32, 10), 64) == "below"
    assert relation(box(20, 20), box(44, 44), 64) is None  # diagonal
    assert relation(box(20, 20), box(28, 22), 64) is None  # too close
    assert location(box(10, 10), 64) == "in the top left corner"
    assert location(box(32, 54), 64) == "at the bottom"
    assert location(box(54, 32), 64) == "on the right"
    assert location(box(32, 32), 64) == "in the center"
    assert location(box(24, 32), 64) is None


@pytest.mark.parametrize("kwargs", [{"num_images": 0}, {"num_images": -5}, {"image_size": 32}, {"image_size": 200}])
def test_bad_arguments_raise_imcap_error(tmp_path, kwargs):
    with pytest.raises(ImcapError):
        generate_scenes(tmp_path / "out", **kwargs, progress=False)
    assert not (tmp_path / "out").exists()


def test_refuses_a_foreign_non_empty_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ImcapError, match="not an imcap-synth"):
        generate_scenes(tmp_path, num_images=3, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ImcapError, match="not a directory"):
        generate_scenes(tmp_path / "file", num_images=3, progress=False)


def test_size_option_scales_the_images(tmp_path):
    data = json.loads(generate_scenes(tmp_path, num_images=12, seed=1, image_size=96, progress=False).read_text())
    assert data["image_size"] == 96
    with Image.open(tmp_path / "images" / "000000.png") as image:
        assert image.size == (96, 96)
    assert all(0 <= v <= 96 for im in data["images"] for o in im["objects"] for v in o["bbox"])


def test_cli_synth(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["synth", "--out", str(tmp_path / "d"), "--images", "8", "--seed", "4"])
    assert done.value.code == 0
    assert len(json.loads((tmp_path / "d" / "captions.json").read_text())["images"]) == 8
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        main(["synth", "--out", str(tmp_path / "e"), "--images", "0"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("imcap: error: --images") and err.count("\n") == 1


# ------------------------------------------------------------------------------------------ golden output

def _content_hash(root: Path) -> str:
    """Hash captions.json and the decoded pixels of every image (independent of the PNG encoder's bytes)."""
    digest = hashlib.sha256((root / "captions.json").read_bytes())
    for path in sorted((root / "images").iterdir()):
        digest.update(path.name.encode() + np.asarray(Image.open(path)).tobytes())
    return digest.hexdigest()


def test_normal_scenes_are_unchanged_by_the_hard_difficulty(tmp_path):
    # Recorded from the generator before `--difficulty` existed (seed 11, 30 images, 64 px): the default
    # (normal) data set must stay exactly what every earlier run and every recorded number used.
    generate_scenes(tmp_path / "a", num_images=30, seed=11, progress=False)
    generate_scenes(tmp_path / "b", num_images=30, seed=11, difficulty="normal", progress=False)
    assert _content_hash(tmp_path / "a") == "67ab24ff32cfb8bc5eb312cc95d94926e578c0ac02877ed9f6abb7899eabb197"
    assert _tree_hash(tmp_path / "a") == _tree_hash(tmp_path / "b")
    assert "difficulty" not in json.loads((tmp_path / "a" / "captions.json").read_text())


# ------------------------------------------------------------------------------------------ hard scenes

HARD_IMAGES = 300
WORD_TO_HARD_SHAPE = {**{s: s for s in HARD_SHAPES}, **{PLURALS[s]: s for s in HARD_SHAPES}}
NUMBERS = {"a": 1, "an": 1, **{w: n for n, w in enumerate(NUMBER_WORDS)}}
SIZES = ("small", "large")


@pytest.fixture(scope="module")
def hard(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("hard")
    path = generate_scenes(out, num_images=HARD_IMAGES, seed=SEED, difficulty="hard", progress=False)
    return out, json.loads(path.read_text())


def _masks(im: dict, size: int = 64) -> list[np.ndarray]:
    return [shape_mask(o["shape"], tuple(o["bbox"]), size) for o in im["objects"]]


def _visible(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Each object's pixels not covered by a later (front) object."""
    return [m & ~np.logical_or.reduce([np.zeros_like(m), *masks[k + 1:]]) for k, m in enumerate(masks)]


def test_hard_layout_and_caption_format(hard):
    out, data = hard
    assert (data["dataset"], data["difficulty"], data["image_size"]) == ("imcap-synth", "hard", 64)
    assert Counter(im["split"] for im in data["images"]) == {"train": 240, "val": 30, "test": 30}
    assert set(Counter(len(im["objects"]) for im in data["images"])) == {3, 4, 5, 6}
    objects = [o for im in data["images"] for o in im["objects"]]
    assert {o["shape"] for o in objects} == set(HARD_SHAPES) and set(HARD_SHAPES) > set(SHAPE_WORDS)
    assert {o["color"] for o in objects} == set(COLORS_HARD) and set(COLORS_HARD) > set(COLORS)
    assert {o["texture"] for o in objects} == set(TEXTURES)
    for im in data["images"]:
        token_lists = [tuple(s["tokens"]) for s in im["sentences"]]
        assert len(set(token_lists)) == 5
        for s in im["sentences"]:
            assert s["tokens"] == tokenize(s["raw"]) and s["raw"][0].isupper() and s["raw"].endswith(".")
            assert 2 <= len(s["tokens"]) <= 16
    with Image.open(out / "images" / "000000.png") as image:
        assert (image.mode, image.size) == ("RGB", (64, 64))


def test_hard_objects_overlap_but_stay_visible(hard):
    out, data = hard
    overlapping = textured = 0
    for im in data["images"][:150]:
        pixels = np.asarray(Image.open(out / "images" / im["filename"])).astype(int)  # (64, 64, 3)
        masks = _masks(im)
        visible = _visible(masks)
        for obj, mask, seen in zip(im["objects"], masks, visible):
            rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
            x0, y0, x1, y1 = obj["bbox"]
            assert (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) == (x0, y0, x1, y1), obj  # the box is the shape's tight box
            assert seen.sum() >= 0.6 * mask.sum(), obj
            color, dark = np.array(COLORS_HARD[obj["color"]]), np.array(shade(obj["color"]))
            is_color, is_dark = (pixels == color).all(axis=2), (pixels == dark).all(axis=2)  # (64, 64)
            assert (is_color | is_dark)[seen].all(), obj  # what shows of an object is painted in its tones
            if obj["texture"] == "plain":
                assert is_color[seen].all()
            else:
                textured += 1
                assert 0.15 < is_dark[seen].mean() < 0.7, obj
        for i, a in enumerate(im["objects"]):
            for j, b in enumerate(im["objects"][:i]):
                if (masks[i] & masks[j]).any():
                    overlapping += 1
                    assert a["color"] != b["color"]
                if a["color"] == b["color"]:  # one colour never touches itself: every blob is one object
                    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = a["bbox"], b["bbox"]
                    assert ax1 + 2 <= bx0 or bx1 + 2 <= ax0 or ay1 + 2 <= by0 or by1 + 2 <= ay0
        background = ~np.logical_or.reduce(masks)
        for rgb in COLORS_HARD.values():
            assert not (pixels == rgb).all(axis=2)[background].any()
    assert overlapping >= 50 and textured >= 100


def _referent(tokens: list[str], objects: list[dict]) -> tuple[int, int] | None:
    """`tokens` starting at "the": (object index, words used) when they name an object by attributes and shape."""
    named: dict[str, str] = {}
    for k, word in enumerate(tokens[1:], start=1):
        if word in HARD_SHAPES:
            named["shape"] = word
            matches = [i for i, o in enumerate(objects) if all(o[key] == value for key, value in named.items())]
            assert len(matches) == 1, (tokens, objects)  # "the ..." always picks out one object
            return matches[0], k + 1
        key = "size" if word in SIZES else "texture" if word in TEXTURES else "color" if word in COLORS_HARD else None
        if key is None:
            return None
        named[key] = word
    return None


def _parse(tokens: list[str], objects: list[dict]) -> tuple[list[int], list[tuple[str, ...]]]:
    """Split a caption into the objects it names with "the ..." and the words around them."""
    found, between, words, k = [], [], [], 0
    while k < len(tokens):
        hit = _referent(tokens[k:], objects) if tokens[k] == "the" else None
        if hit is None:
            words.append(tokens[k])
            k += 1
            continue
        found.append(hit[0])
        between.append(tuple(words))
        words, k = [], k + hit[1]
    return found, between + [tuple(words)]


def _along(a: dict, b: dict, rel: str) -> tuple[float, float]:
    """(distance along `rel`'s axis from a to b, offset across it) for "a is `rel` b"."""
    (ax, ay), (bx, by) = _centre(a), _centre(b)
    return {"left": (bx - ax, ay - by), "right": (ax - bx, ay - by), "above": (by - ay, ax - bx), "below": (ay - by, ax - bx)}[rel]


_HARD_RELATIONS = {
    ("is", "left", "of"): "left", ("is", "to", "the", "left", "of"): "left",
    ("is", "right", "of"): "right", ("is", "to", "the", "right", "of"): "right",
    ("is", "above"): "above", ("is", "below"): "below",
}
_IN_FRONT = {("is", "in", "front", "of"): True, ("covers", "part", "of"): True, ("is", "behind"): False, ("is", "partly", "hidden", "by"): False}


def test_hard_relations_occlusion_and_textures_are_true(hard):
    _, data = hard
    checked = Counter()
    far = 0
    for im in data["images"]:
        objects = im["objects"]
        masks = _masks(im)
        for sentence in im["sentences"]:
            found, words = _parse(sentence["tokens"], objects)
            if len(found) == 2 and words[1] in _HARD_RELATIONS:
                a, b = (objects[i] for i in found)
                along, across = _along(a, b, _HARD_RELATIONS[words[1]])
                assert along >= 0.2 * 64 and abs(across) <= 0.5 * along, (sentence["raw"], objects)
                axis = 0 if _HARD_RELATIONS[words[1]] in ("left", "right") else 1
                lo, hi = sorted((_centre(a)[axis], _centre(b)[axis]))
                far += any(lo < _centre(c)[axis] < hi for c in objects if c is not a and c is not b)
                checked["relation"] += 1
            elif len(found) == 2 and words[1] in _IN_FRONT:
                front, back = found if _IN_FRONT[words[1]] else found[::-1]
                assert front > back and (masks[front] & masks[back]).any(), (sentence["raw"], objects)
                checked["occlusion"] += 1
            elif len(found) == 3 and words[1:3] == [("is", "between"), ("and",)]:
                a, b, c = (objects[i] for i in (found[1], found[0], found[2]))  # "the b is between the a and the c"
                assert any(
                    all(along >= 0.2 * 64 and abs(across) <= 0.5 * along for along, across in (_along(a, b, rel), _along(b, c, rel)))
                    for rel in ("left", "above")
                ), (sentence["raw"], objects)
                checked["between"] += 1
            elif len(found) == 1 and words[1][:1] == ("has",):
                assert {"stripes": "striped", "dots": "dotted", "checks": "checked"}[words[1][1]] == objects[found[0]]["texture"]
                checked["texture"] += 1
            elif len(found) == 1 and words[1][:1] == ("is",):
                assert words[1][1:] and location(_Box(objects[found[0]]["bbox"]), 64) == " ".join(words[1][1:])
                checked["location"] += 1
            else:
                assert not found, sentence["raw"]  # every caption that names objects with "the" was checked above
    assert min(checked.values()) >= 20 and len(checked) == 5, checked
    assert far >= 0.5 * checked["relation"]  # most relations skip over another object


class _Box:
    def __init__(self, bbox: list[int]) -> None:
        self.center = ((bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2)


def _counted(tokens: list[str]) -> list[tuple[int, dict, str]]:
    """Every counted phrase: (number, attributes, noun) for "three red squares", "a striped shape", "five shapes"."""
    out = []
    for k, word in enumerate(tokens):
        if word not in NUMBERS or (k > 0 and tokens[k - 1] == "the"):
            continue
        attrs, j = {}, k + 1
        while j < len(tokens) and (tokens[j] in COLORS_HARD or tokens[j] in TEXTURES or tokens[j] == "different"):
            attrs["color" if tokens[j] in COLORS_HARD else "texture" if tokens[j] in TEXTURES else "different"] = tokens[j]
            j += 1
        if j < len(tokens) and (tokens[j] in WORD_TO_HARD_SHAPE or tokens[j] in ("shape", "shapes", "objects")):
            out.append((NUMBERS[word], attrs, tokens[j]))
    return out


def test_hard_counts_match_the_drawn_objects(hard):
    _, data = hard
    checked = Counter()
    for im in data["images"]:
        objects = im["objects"]
        for sentence in im["sentences"]:
            for number, attrs, noun in _counted(sentence["tokens"]):
                if attrs.pop("different", None):
                    assert number == len(objects) and len({(o["color"], o["shape"]) for o in objects}) == number
                if noun in WORD_TO_HARD_SHAPE:
                    attrs["shape"] = WORD_TO_HARD_SHAPE[noun]
                actual = sum(all(o[key] == value for key, value in attrs.items()) for o in objects)
                assert actual == number, (sentence["raw"], objects)
                checked[number] += 1
    assert set(checked) == {1, 2, 3, 4, 5, 6} and checked[3] >= 50, checked


def test_hard_vocabulary_is_larger(hard, synth):
    hard_words = {w for im in hard[1]["images"] for s in im["sentences"] for w in s["tokens"]}
    normal_words = {w for im in synth[1]["images"] for s in im["sentences"] for w in s["tokens"]}
    assert len(hard_words) >= len(normal_words) + 15
    for word in ("between", "front", "behind", "striped", "dotted", "checked", "four", "five", "six", "hexagons", "hearts"):
        assert word in hard_words, word


def test_hard_same_seed_same_bytes(tmp_path):
    first = generate_scenes(tmp_path / "a", num_images=20, seed=4, difficulty="hard", progress=False).parent
    second = generate_scenes(tmp_path / "b", num_images=20, seed=4, difficulty="hard", progress=False).parent
    other = generate_scenes(tmp_path / "c", num_images=20, seed=5, difficulty="hard", progress=False).parent
    assert _tree_hash(first) == _tree_hash(second) != _tree_hash(other)


def test_cli_synth_difficulty(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["synth", "--out", str(tmp_path / "d"), "--images", "6", "--difficulty", "hard"])
    assert done.value.code == 0
    assert json.loads((tmp_path / "d" / "captions.json").read_text())["difficulty"] == "hard"
    capsys.readouterr()
    for bad in (["--difficulty", "extreme"], ["--difficulty", "hard", "--task", "vqa"]):
        with pytest.raises(SystemExit) as done:
            main(["synth", "--out", str(tmp_path / "e"), "--images", "6", *bad])
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert "--difficulty" in err and err.count("\n") == 1, err
