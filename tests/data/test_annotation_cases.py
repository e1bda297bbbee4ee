"""Hostile annotation files: each case ends in its exact one-line error, or in the documented records and counts.

Covers duplicate ids after normalisation (1, 1.0, "1"), one image file under two ids or in two splits (an error,
or kept once with `dedupe`), ids that are not scalars, non-finite numbers, runaway nesting, file-name ids for the
raw/CSV/JSONL formats and Unicode punctuation in captions.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from imcap.data.readers import MAX_EXTRA_DEPTH, load_captions
from imcap.errors import ImcapError

COCO = "captions_val2014.json"  # the name gives the split (val) and the image folder (val2014/)


def _coco(images: list[tuple[object, str]], anns: list[tuple[object, str]] | None = None) -> str:
    """A COCO caption file's text; by default every image gets one caption."""
    anns = anns if anns is not None else [(i, f"a picture number {n}") for n, (i, _) in enumerate(images)]
    return json.dumps({"images": [{"id": i, "file_name": name} for i, name in images],
                       "annotations": [{"id": k, "image_id": i, "caption": c} for k, (i, c) in enumerate(anns)]})


def _karpathy(images: list[dict]) -> str:
    return json.dumps({"images": [{"sentences": [{"raw": "a small dog"}], **img} for img in images]})


def _raw(items: list[dict]) -> str:
    return json.dumps([{"captions": ["a small dog"], **item} for item in items])


def _nested(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


# (file name, file text, the error after "<path>: ")
ERRORS = {
    "coco id 0 twice": (COCO, _coco([(0, "a.jpg"), (0, "b.jpg")]),
                        "image id '0' appears twice: images[0] (id 0) and images[1] (id 0)"),
    "coco id 1.0 next to 1": (COCO, _coco([(1, "a.jpg"), (1.0, "b.jpg")]),
                              "image id '1' appears twice: images[0] (id 1) and images[1] (id 1.0)"),
    "coco id '1' next to 1": (COCO, _coco([(1, "a.jpg"), ("1", "b.jpg")]),
                              "image id '1' appears twice: images[0] (id 1) and images[1] (id '1')"),
    "coco id is a list": (COCO, _coco([([1], "a.jpg")], []), "images[0]: 'id' must be a string or a number, got a list"),
    "coco id is an object": (COCO, _coco([({"n": 1}, "a.jpg")], []),
                             "images[0]: 'id' must be a string or a number, got an object"),
    "coco id is true": (COCO, _coco([(True, "a.jpg")], []), "images[0]: 'id' must be a string or a number, got true"),
    "coco id is null": (COCO, _coco([(None, "a.jpg")], []), "images[0]: 'id' must be a string or a number, got null"),
    "coco id is empty": (COCO, _coco([(" ", "a.jpg")], []),
                         "images[0]: 'id' must be a string or a number, got an empty string"),
    "coco annotation id is a list": (COCO, _coco([(1, "a.jpg")], [([1], "a dog")]),
                                     "annotations[0]: 'image_id' must be a string or a number, got a list"),
    "coco id NaN": (COCO, '{"images": [{"id": NaN, "file_name": "a.jpg"}], "annotations": []}',
                    "invalid JSON at line 1: NaN is not a finite number"),
    "coco id -Infinity": (COCO, '{"images": [\n{"id": -Infinity, "file_name": "a.jpg"}], "annotations": []}',
                          "invalid JSON at line 2: -Infinity is not a finite number"),
    "coco id 1e400 overflows": (COCO, '{"images": [{"id": 1e400, "file_name": "a.jpg"}], "annotations": []}',
                                "invalid JSON at line 1: 1e400 is not a finite number"),
    "coco file_name is a list": (COCO, _coco([(1, ["a.jpg"])], []),
                                 "images[0]: 'file_name' must be a non-empty string, got a list"),
    "coco same file under two ids": (COCO, _coco([(1, "a.jpg"), (2, "b.jpg"), (3, "a.jpg")]),
                                     "image val2014/a.jpg is listed under two ids: images[0] (id 1) and images[2] "
                                     "(id 3) (--dedupe keeps the first listing)"),
    "json nested 5000 deep": ("deep.json", '{"images": ' + "[" * 5000 + "]" * 5000 + "}",
                              "invalid JSON: lists/objects nested too deeply to read"),
    "karpathy file in train and test": (
        "dataset.json", _karpathy([{"filepath": "val2014", "filename": "a.jpg", "split": "train", "cocoid": 1},
                                   {"filepath": "val2014", "filename": "a.jpg", "split": "test", "cocoid": 2}]),
        "image val2014/a.jpg is listed in two splits (train and test): image #0 (cocoid 1) and image #1 (cocoid 2) "
        "(--dedupe keeps the first listing)"),
    "karpathy cocoid 7.0 next to 7": (
        "dataset.json", _karpathy([{"filename": "a.jpg", "split": "train", "cocoid": 7},
                                   {"filename": "b.jpg", "split": "val", "cocoid": 7.0}]),
        "image id '7' appears twice: image #0 (cocoid 7) and image #1 (cocoid 7.0)"),
    "karpathy cocoid is a list": ("dataset.json", _karpathy([{"filename": "a.jpg", "split": "train", "cocoid": [7]}]),
                                  "image #0: 'cocoid' must be a string or a number, got a list"),
    "karpathy same stem a.jpg a.png": (
        "dataset.json", _karpathy([{"filename": "a.jpg", "split": "train"}, {"filename": "a.png", "split": "train"}]),
        "image id 'a' appears twice: image #0 (a.jpg) and image #1 (a.png)"),
    "karpathy extra nested too deep": (
        "dataset.json", _karpathy([{"filename": "a.jpg", "split": "train", "objects": _nested(MAX_EXTRA_DEPTH + 1)}]),
        f"image #0: field 'objects' nests lists/objects more than {MAX_EXTRA_DEPTH} levels deep"),
    "raw id 1.0 next to '1'": ("raw.json", _raw([{"file_path": "a.jpg", "id": "1"}, {"file_path": "b.jpg", "id": 1.0}]),
                               "image id '1' appears twice: item #0 (id '1') and item #1 (id 1.0)"),
    "raw same path twice": ("raw.json", _raw([{"file_path": "x/a.jpg", "split": "train"},
                                              {"file_path": "x/a.jpg", "split": "train"}]),
                            "image id 'x/a.jpg' appears twice: item #0 (x/a.jpg) and item #1 (x/a.jpg)"),
    "raw ./a.jpg and a.jpg": ("raw.json", _raw([{"file_path": "a.jpg", "split": "train"},
                                                {"file_path": "./a.jpg", "split": "train"}]),
                              "image ./a.jpg is listed under two ids: item #0 (a.jpg) and item #1 (./a.jpg) "
                              "(--dedupe keeps the first listing)"),
    "raw id is an object": ("raw.json", _raw([{"file_path": "a.jpg", "id": {}}]),
                            "item #0: 'id' must be a string or a number, got an object"),
    "csv image in two splits": ("caps.csv", "image,caption,split\na.jpg,a dog,train\nb.jpg,a cat,val\na.jpg,a pup,test\n",
                                "image a.jpg is listed in two splits (train and test): line 2 (a.jpg) and line 4 "
                                "(a.jpg) (--dedupe keeps the first listing)"),
    "jsonl NaN": ("caps.jsonl", '{"image": "a.jpg", "caption": "x"}\n{"image": "b.jpg", "caption": "y", "s": NaN}\n',
                  None),  # JSONL errors name the line: "<path>:2: ..."
    "jsonl nested 5000 deep": ("caps.jsonl", '{"image": "a.jpg", "caption": ' + "[" * 5000 + "]" * 5000 + "}\n", None),
    "jsonl image is a list": ("caps.jsonl", '{"image": ["a.jpg"], "caption": "x"}\n', None),
}
JSONL_ERRORS = {
    "jsonl NaN": ":2: invalid JSON (NaN is not a finite number)",
    "jsonl nested 5000 deep": ":1: invalid JSON (lists/objects nested too deeply to read)",
    "jsonl image is a list": ":1: 'image' must be a non-empty string, got a list",
}


@pytest.mark.parametrize("case", ERRORS)
def test_annotation_error_is_one_exact_line(tmp_path: Path, case: str) -> None:
    name, text, tail = ERRORS[case]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    expected = f"{path}{JSONL_ERRORS[case]}" if tail is None else f"{path}: {tail}"
    with pytest.raises(ImcapError) as err:
        load_captions(path)
    assert str(err.value) == expected


def test_duplicate_id_across_coco_files_names_both_files(tmp_path: Path) -> None:
    ann = tmp_path / "annotations"
    ann.mkdir()
    (ann / "captions_train2014.json").write_text(_coco([(5, "a.jpg")]))
    (ann / "captions_val2014.json").write_text(_coco([(5.0, "b.jpg")]))
    with pytest.raises(ImcapError) as err:
        load_captions(ann)
    assert str(err.value) == (f"{ann}: image id '5' appears twice: captions_train2014.json images[0] (id 5) and "
                              "captions_val2014.json images[0] (id 5.0)")


def test_dedupe_still_rejects_duplicate_ids(tmp_path: Path) -> None:
    path = tmp_path / COCO
    path.write_text(_coco([(1, "a.jpg"), (1.0, "b.jpg")]))
    with pytest.raises(ImcapError, match="image id '1' appears twice"):
        load_captions(path, dedupe=True)


def test_coco_annotation_ids_are_normalised_too(tmp_path: Path) -> None:
    path = tmp_path / COCO
    path.write_text(_coco([(1, "a.jpg"), ("2", "b.jpg")], [(1.0, "a dog"), (2, "a cat"), ("1", "a pup")]))
    found = load_captions(path)
    assert [(r.image_id, r.captions) for r in found.records] == [("1", ["a dog", "a pup"]), ("2", ["a cat"])]


# (file name, file text, kept (id, split) in order, dropped listings, warning)
DEDUPE = {
    "coco same file under two ids": (
        COCO, _coco([(1, "a.jpg"), (2, "b.jpg"), (3, "a.jpg")]), [("1", "val"), ("2", "val")], 1,
        "1 image file(s) are listed more than once; kept the first listing of each and dropped 1 later listing(s) "
        "with their captions (first: val2014/a.jpg at images[2] (id 3))"),
    "karpathy file in train and test": (
        "dataset.json", _karpathy([{"filename": "a.jpg", "split": "test", "cocoid": 1},
                                   {"filename": "b.jpg", "split": "train", "cocoid": 2},
                                   {"filename": "a.jpg", "split": "train", "cocoid": 3}]),
        [("1", "test"), ("2", "train")], 1,
        "1 image file(s) are listed more than once; kept the first listing of each and dropped 1 later listing(s) "
        "with their captions (first: a.jpg at image #2 (cocoid 3))"),
    "csv three listings of one file, two of another": (
        "caps.csv", "image,caption,split\na.jpg,one,train\n./a.jpg,two,train\nb.jpg,three,val\na.jpg,four,test\n"
                    "b.jpg,five,test\na.jpg,six,train\n",
        [("a.jpg", "train"), ("b.jpg", "val")], 3,
        "2 image file(s) are listed more than once; kept the first listing of each and dropped 3 later listing(s) "
        "with their captions (first: ./a.jpg at line 3 (./a.jpg))"),
}


@pytest.mark.parametrize("case", DEDUPE)
def test_dedupe_keeps_the_first_listing(tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str) -> None:
    name, text, kept, dropped, warning = DEDUPE[case]
    path = tmp_path / name
    path.write_text(text)
    caplog.set_level(logging.WARNING)
    found = load_captions(path, dedupe=True)
    assert [(r.image_id, r.split) for r in found.records] == kept
    assert found.dropped["duplicate_images"] == dropped
    assert f"{path}: {warning}" in caplog.messages


def test_dedupe_keeps_the_captions_of_the_first_listing_only(tmp_path: Path) -> None:
    path = tmp_path / "caps.csv"
    path.write_text("image,caption,split\na.jpg,one,train\na.jpg,two,test\na.jpg,three,train\n")
    found = load_captions(path, dedupe=True)
    assert [(r.image_id, r.split, r.captions) for r in found.records] == [("a.jpg", "train", ["one", "three"])]
    assert found.dropped == {"duplicate_images": 1, "empty_captions": 0, "images_without_captions": 0}


def test_without_dedupe_the_count_is_absent(tmp_path: Path) -> None:
    path = tmp_path / COCO
    path.write_text(_coco([(1, "a.jpg")]))
    assert "duplicate_images" not in load_captions(path).dropped


@pytest.mark.parametrize("name, text", [
    ("raw.json", _raw([{"file_path": "imgs/a.jpg"}, {"file_path": "imgs/a.png"}])),
    ("caps.csv", "image,caption\nimgs/a.jpg,a small dog\nimgs/a.png,a small dog\n"),
    ("caps.jsonl", '{"image": "imgs/a.jpg", "caption": "a small dog"}\n{"image": "imgs/a.png", "caption": "a dog"}\n'),
])
def test_same_stem_in_one_folder_is_two_images(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert [r.image_id for r in load_captions(path).records] == ["imgs/a.jpg", "imgs/a.png"]


def test_flickr8k_same_stem_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "Flickr8k.token.txt"
    path.write_text("a.jpg#0\ta dog\nb.jpg#0\ta cat\na.png#0\ta pup\n")
    with pytest.raises(ImcapError) as err:
        load_captions(path)
    assert str(err.value) == f"{path}: image id 'a' appears twice: a.jpg and a.png"


def test_deepest_allowed_extra_field_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "dataset.json"
    path.write_text(_karpathy([{"filename": "a.jpg", "split": "train", "objects": _nested(MAX_EXTRA_DEPTH)}]))
    assert load_captions(path).records[0].extra == {"objects": _nested(MAX_EXTRA_DEPTH)}


@pytest.mark.parametrize("caption, kept", [
    ("a dog \u2014 running", ["a dog \u2014 running"]),
    ("\u2014 \u2026 \u201c\u201d", []),  # em dash, ellipsis, curly quotes only: an empty caption
    ("\u00ab \u2013 \u00bb", []),  # guillemets and an en dash
])
def test_unicode_punctuation_only_caption_is_empty(tmp_path: Path, caption: str, kept: list[str]) -> None:
    path = tmp_path / "raw.json"
    path.write_text(json.dumps([{"file_path": "a.jpg", "captions": ["a cat", caption]}]))
    found = load_captions(path)
    assert found.records[0].captions == ["a cat", *kept]
    assert found.dropped["empty_captions"] == 1 - len(kept)


def _questions(splits: list[str]) -> str:
    """A Karpathy file of a non-caption task: one record per question, several per image (as `--task vqa` writes)."""
    records = [{"id": f"0-q{j}", "filename": "0.png", "split": split, "sentences": ["what is red"], "answer": "ball"}
               for j, split in enumerate(splits)]
    return json.dumps({"task": "vqa", "images": records})


def test_a_question_task_may_list_one_image_under_several_ids(tmp_path: Path) -> None:
    path = tmp_path / "captions.json"
    path.write_text(_questions(["train", "train", "train"]))
    assert [r.image_id for r in load_captions(path).records] == ["0-q0", "0-q1", "0-q2"]


def test_a_question_task_still_keeps_an_image_in_one_split(tmp_path: Path) -> None:
    path = tmp_path / "captions.json"
    path.write_text(_questions(["train", "train", "test"]))
    with pytest.raises(ImcapError) as err:
        load_captions(path)
    assert str(err.value) == (f"{path}: image 0.png is listed in two splits (train and test): image #0 (id '0-q0') "
                              "and image #2 (id '0-q2') (--dedupe keeps the first listing)")
