"""Caption-file readers: every format, format detection, split rules, empty captions and one-line errors."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from imcap.data.readers import (
    detect_format,
    hash_split,
    load_captions,
    read_captions,
    read_flickr8k_tokens,
)
from imcap.errors import ImcapError

FLICKR8K = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "flickr8k"


def _write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _karpathy(tmp_path: Path, name: str = "dataset_flickr8k.json") -> Path:
    images = [
        {"filepath": "val2014", "filename": "a.jpg", "split": "train", "cocoid": 11, "imgid": 0, "sentids": [0, 1],
         "sentences": [{"raw": "A dog runs.", "tokens": ["a", "dog", "runs"]}, {"tokens": ["a", "brown", "dog"]}]},
        {"filename": "b.jpg", "split": "restval", "imgid": 1, "sentences": [{"raw": "A cat sleeps"}]},
        {"filename": "c.jpg", "split": "val", "imgid": 2, "sentences": [{"raw": "two birds"}], "objects": [1, 2],
         "background": "plain gray"},
        {"filename": "d.jpg", "split": "test", "imgid": 3, "sentences": ["a red car"]},
    ]
    return _write_json(tmp_path / name, {"images": images, "dataset": "flickr8k"})


def test_karpathy_fields_splits_ids_and_root(tmp_path: Path) -> None:
    path = _karpathy(tmp_path)
    records, root = read_captions(path)
    assert root == str(tmp_path.resolve())
    assert [r.image_id for r in records] == ["11", "b", "c", "d"]
    assert [r.file_path for r in records] == ["val2014/a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert [r.split for r in records] == ["train", "train", "val", "test"]  # restval counts as train
    assert records[0].captions == ["A dog runs.", "a brown dog"]  # tokens joined when "raw" is absent
    assert records[2].extra == {"objects": [1, 2], "background": "plain gray"}
    assert records[0].extra == {}
    assert detect_format(path) == "karpathy"


def test_karpathy_detected_from_contents_and_image_root_override(tmp_path: Path) -> None:
    path = _karpathy(tmp_path, "whatever.json")
    found = load_captions(path, image_root=str(tmp_path / "imgs"))
    assert found.format == "karpathy"
    assert found.image_root == str((tmp_path / "imgs").resolve())


def test_synth_folder_keeps_extra_fields(tmp_path: Path) -> None:
    images = [{"imgid": i, "filepath": "images", "filename": f"{i:06d}.png", "split": s,
               "sentences": [{"raw": f"a red circle {i}", "tokens": []}],
               "objects": [{"shape": "circle", "color": "red", "size": "small", "bbox": [1, 2, 3, 4]}],
               "background": "plain gray"} for i, s in enumerate(["train", "val", "test"])]
    _write_json(tmp_path / "synth" / "captions.json", {"dataset": "imcap-synth", "images": images})
    found = load_captions(tmp_path / "synth")
    assert found.format == "synth"
    assert found.image_root == str((tmp_path / "synth").resolve())
    assert [r.image_id for r in found.records] == ["000000", "000001", "000002"]
    assert found.records[1].file_path == "images/000001.png"
    assert found.records[1].extra == {"objects": images[1]["objects"], "background": "plain gray"}


def test_reads_real_imcap_synth_output(tmp_path: Path) -> None:
    synth = pytest.importorskip("imcap.data.synth")
    synth.generate_scenes(tmp_path / "s", num_images=12, seed=1, image_size=64)
    found = load_captions(tmp_path / "s")
    assert found.format == "synth" and len(found.records) == 12
    assert all(len(r.captions) == 5 for r in found.records)
    assert all("objects" in r.extra and "background" in r.extra for r in found.records)
    assert all((Path(found.image_root) / r.file_path).is_file() for r in found.records)


def test_raw_neuraltalk2_list(tmp_path: Path) -> None:
    data = [{"file_path": "imgs/x.jpg", "captions": ["one cap", "two cap"], "source": "web"},
            {"file_path": "/abs/y.png", "captions": ["another"], "id": 7, "split": "dev"}]
    path = _write_json(tmp_path / "raw.json", data)
    found = load_captions(path)
    assert found.format == "raw"
    x, y = found.records
    assert (x.image_id, x.split, x.captions, x.extra) == ("imgs/x.jpg", hash_split("imgs/x.jpg"),
                                                         ["one cap", "two cap"], {"source": "web"})
    assert (y.image_id, y.file_path, y.split) == ("7", "/abs/y.png", "val")


def _flickr8k(folder: Path, lists: bool = True) -> Path:
    folder.mkdir(parents=True)
    lines = [f"{name}#{i}\tcaption {i} of {name} ." for name in ("a.jpg", "b.jpg", "c.jpg", "d.jpg") for i in range(2)]
    lines += ["e.jpg.1#0\tthe stray caption", "e.jpg#1\tthe real caption", "", "f.jpg#0\t   "]
    (folder / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    if lists:
        (folder / "Flickr_8k.trainImages.txt").write_text("a.jpg\ne.jpg\nf.jpg\n")
        (folder / "Flickr_8k.devImages.txt").write_text("b.jpg\n")
        (folder / "Flickr_8k.testImages.txt").write_text("c.jpg\n")
    return folder


def test_flickr8k_quirk_splits_and_dropped_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _flickr8k(tmp_path / "text")
    (tmp_path / "Flicker8k_Dataset").mkdir()  # sibling image folder, beside the text folder
    caplog.set_level(logging.WARNING)
    found = load_captions(folder)  # the folder works like the token file
    by_id = {r.image_id: r for r in found.records}
    assert found.format == "flickr8k"
    assert sorted(by_id) == ["a", "b", "c", "e"]  # d is in no list; f has only an empty caption
    assert by_id["e"].captions == ["the stray caption", "the real caption"]
    assert (by_id["a"].split, by_id["b"].split, by_id["c"].split) == ("train", "val", "test")
    assert found.dropped == {"images_not_in_split_lists": 1, "empty_captions": 1, "images_without_captions": 1}
    assert found.image_root == str((tmp_path / "Flicker8k_Dataset").resolve())
    assert "1 image(s) that are in no split list" in caplog.text
    assert detect_format(folder / "Flickr8k.token.txt") == "flickr8k"


def test_flickr8k_without_lists_uses_hash_split(tmp_path: Path) -> None:
    folder = _flickr8k(tmp_path / "f", lists=False)
    records, root = read_captions(folder / "Flickr8k.token.txt")
    assert {r.image_id: r.split for r in records} == {n: hash_split(f"{n}.jpg") for n in "abcde"}
    assert root == str(folder.resolve())


def test_flickr8k_partial_lists_and_bad_lines_are_errors(tmp_path: Path) -> None:
    folder = _flickr8k(tmp_path / "f")
    (folder / "Flickr_8k.devImages.txt").unlink()
    with pytest.raises(ImcapError, match="Flickr_8k.devImages.txt is missing"):
        load_captions(folder)
    bad = tmp_path / "bad.token.txt"
    bad.write_text("a.jpg#0\tfine\nno tab here\n")
    with pytest.raises(ImcapError, match=r"bad.token.txt:2: expected"):
        load_captions(bad)


@pytest.mark.skipif(not FLICKR8K.is_dir(), reason=f"real Flickr8k captions not found at {FLICKR8K}")
def test_real_flickr8k() -> None:
    tokens = read_flickr8k_tokens(FLICKR8K / "Flickr8k.token.txt")
    # 40,460 captions of 8,092 distinct images (8,091 with 5 captions, plus 2258277193_586949ec62.jpg whose
    # fifth caption is filed under the stray id "...jpg.1" and merged back here).
    assert sum(len(c) for c in tokens.values()) == 40460
    assert len(tokens) == 8092
    assert "2258277193_586949ec62.jpg.1" not in tokens
    assert all(len(c) == 5 for c in tokens.values())
    found = load_captions(FLICKR8K)
    assert Counter(r.split for r in found.records) == {"train": 6000, "val": 1000, "test": 1000}
    assert sum(len(r.captions) for r in found.records) == 40000
    assert found.dropped["images_not_in_split_lists"] == 92


def _coco(path: Path, names: dict[int, str], anns: list[tuple[int, str]]) -> Path:
    return _write_json(path, {
        "info": {}, "images": [{"id": i, "file_name": n, "width": 4, "height": 4} for i, n in names.items()],
        "annotations": [{"id": k, "image_id": i, "caption": c} for k, (i, c) in enumerate(anns)]})


def test_coco_file_and_folder(tmp_path: Path) -> None:
    ann = tmp_path / "coco" / "annotations"
    train = _coco(ann / "captions_train2014.json", {1: "COCO_train2014_1.jpg", 2: "COCO_train2014_2.jpg"},
                  [(1, "a man"), (2, "a woman"), (1, "a person")])
    _coco(ann / "captions_val2014.json", {5: "COCO_val2014_5.jpg", 6: "COCO_val2014_6.jpg"}, [(5, "a boat")])
    found = load_captions(train)
    assert found.format == "coco"
    assert found.image_root == str((tmp_path / "coco").resolve())  # parent of annotations/
    assert [(r.image_id, r.file_path, r.split, r.captions) for r in found.records] == [
        ("1", "train2014/COCO_train2014_1.jpg", "train", ["a man", "a person"]),
        ("2", "train2014/COCO_train2014_2.jpg", "train", ["a woman"]),
    ]
    both = load_captions(ann)  # a folder of captions_*.json: every file, each with its own split
    assert [(r.image_id, r.split) for r in both.records] == [("1", "train"), ("2", "train"), ("5", "val")]
    assert both.dropped["images_without_captions"] == 1  # image 6 has no annotation


def test_coco_unknown_image_id_is_an_error(tmp_path: Path) -> None:
    path = _coco(tmp_path / "captions_val2017.json", {1: "1.jpg"}, [(1, "ok"), (9, "orphan")])
    with pytest.raises(ImcapError, match=r"captions_val2017.json: annotations\[1\] refers to unknown image id 9"):
        read_captions(path)


def test_csv_grouping_quotes_and_split_column(tmp_path: Path) -> None:
    path = tmp_path / "caps.csv"
    path.write_text('image,caption,split\nx.jpg,"a dog, running",train\ny.jpg,a cat,test\n'
                    'x.jpg,"a ""quoted"" dog",train\ny.jpg,,test\n')
    found = load_captions(path)
    assert found.format == "csv"
    assert [(r.image_id, r.split, r.captions) for r in found.records] == [
        ("x.jpg", "train", ["a dog, running", 'a "quoted" dog']), ("y.jpg", "test", ["a cat"])]
    assert found.dropped["empty_captions"] == 1


def test_csv_without_split_column_hash_split(tmp_path: Path) -> None:
    path = tmp_path / "caps.csv"
    path.write_text("caption,image\n" + "".join(f"caption {i},img{i % 40}.jpg\n" for i in range(80)))
    records, _ = read_captions(path)
    assert len(records) == 40 and all(len(r.captions) == 2 for r in records)
    assert all(r.split == hash_split(r.file_path) for r in records)


@pytest.mark.parametrize("text, problem", [
    ("picture,caption\nx.jpg,hi\n", "needs a header with columns image,caption"),
    ("image,caption\nx.jpg,hi,extra\n", "caps.csv:2: wrong number of columns"),
    ("image,caption\nx.jpg\n", "caps.csv:2: wrong number of columns"),
    ('image,caption\nx.jpg,"unclosed\n', "caps.csv"),
    ("image,caption,split\nx.jpg,hi,holdout\n", "unknown split 'holdout'"),
    ("image,caption,split\nx.jpg,hi,train\nx.jpg,ho,val\n",
     "image x.jpg is listed in two splits (train and val): line 2 (x.jpg) and line 3 (x.jpg) "
     "(--dedupe keeps the first listing)"),
])
def test_csv_errors(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "caps.csv"
    path.write_text(text)
    with pytest.raises(ImcapError, match=re.escape(problem)) as err:
        read_captions(path)
    assert "\n" not in str(err.value)


def test_jsonl_rows_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "caps.jsonl"
    path.write_text('{"image": "a.png", "caption": "a thing"}\n\n'
                    '{"image": "a.png", "captions": ["more", "things"]}\n{"image": "b.png", "caption": "x", '
                    '"split": "val"}\n')
    found = load_captions(path)
    assert found.format == "jsonl"
    assert [(r.image_id, r.split, r.captions) for r in found.records] == [
        ("a.png", hash_split("a.png"), ["a thing", "more", "things"]), ("b.png", "val", ["x"])]
    path.write_text('{"image": "a.png", "caption": "ok"}\n{"image": "b.png", caption: oops}\n')
    with pytest.raises(ImcapError, match=r"caps.jsonl:2: invalid JSON"):
        read_captions(path)


def test_empty_captions_skipped_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = [{"file_path": "a.jpg", "captions": ["a dog", "  ", "..."], "split": "train"},
            {"file_path": "b.jpg", "captions": ["", " ! "], "split": "train"},
            {"file_path": "c.jpg", "captions": ["  padded caption  "], "split": "val"}]
    caplog.set_level(logging.WARNING)
    found = load_captions(_write_json(tmp_path / "raw.json", data))
    assert [(r.image_id, r.captions) for r in found.records] == [("a.jpg", ["a dog"]), ("c.jpg", ["padded caption"])]
    assert found.dropped == {"empty_captions": 4, "images_without_captions": 1}
    assert "skipped 4 empty caption(s)" in caplog.text and "dropped 1 image(s)" in caplog.text


def test_only_empty_captions_is_an_error(tmp_path: Path) -> None:
    path = _write_json(tmp_path / "raw.json", [{"file_path": "a.jpg", "captions": [" "]}])
    with pytest.raises(ImcapError, match="raw.json: no images with a non-empty caption"):
        read_captions(path)


@pytest.mark.parametrize("name, content, problem", [
    ("missing.json", None, "file not found"),
    ("zero.json", b"", "empty file"),
    ("bad.json", b'{"images": [', "invalid JSON at line 1"),
    ("latin.csv", "image,caption\nx.jpg,caf\xe9\n".encode("latin-1"), "not UTF-8 text"),
    ("odd.json", b'{"foo": 1}', "neither Karpathy"),
    ("notes.md", b"hello", "cannot tell the caption format"),
    ("dup.json", json.dumps({"images": [{"filename": "a.jpg", "split": "train", "sentences": ["x"]}] * 2}).encode(),
     r"image id 'a' appears twice: image #0 \(a.jpg\) and image #1 \(a.jpg\)"),
    ("split.json", json.dumps({"images": [{"filename": "a.jpg", "split": "holdout", "sentences": ["x"]}]}).encode(),
     r"image #0: unknown split 'holdout'"),
])
def test_bad_files_give_one_line_errors(tmp_path: Path, name: str, content: bytes | None, problem: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImcapError, match=problem) as err:
        read_captions(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_format_override_and_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text('{"image": "a.png", "caption": "x"}\n')
    assert load_captions(path, format="jsonl").format == "jsonl"
    with pytest.raises(ImcapError, match="unknown format 'yaml'"):
        read_captions(path, format="yaml")


def test_hash_split_is_stable_and_roughly_90_5_5() -> None:
    names = [f"img_{i}.jpg" for i in range(4000)]
    counts = Counter(hash_split(n) for n in names)
    # Another interpreter with another string-hash seed must give the same splits.
    code = ("from imcap.data.readers import hash_split\n"
            "print(''.join(hash_split(f'img_{i}.jpg')[0] for i in range(300)))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert other.stdout.strip() == "".join(hash_split(n)[0] for n in names[:300])
    assert 0.87 < counts["train"] / 4000 < 0.93
    assert 0.03 < counts["val"] / 4000 < 0.07 and 0.03 < counts["test"] / 4000 < 0.07
