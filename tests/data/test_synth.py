"""The synthetic scenes data set: layout, caption variety, CIDEr design checks, determinism, boxes."""
from __future__ import annotations

import hashlib
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
        for word, nxt in zip(tokens, tokens[1:])
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
