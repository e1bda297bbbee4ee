"""`imcap prepro`: the on-disk output, vocabulary rules, statistics, atomic writes and the CLI's one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imcap.cli import main
from imcap.data.prepro import PreproOptions, format_stats, prepro
from imcap.data.vocab import UNK, Vocab, tokenize
from imcap.errors import ImcapError

FLICKR8K = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "flickr8k"


def _dataset(tmp_path: Path, with_images: bool = True) -> Path:
    """A Karpathy-style file: 'dog' is frequent in train, 'zebra' only in val, one caption is long."""
    images = [
        {"filename": "t0.png", "split": "train", "extra_field": {"k": 1},
         "sentences": [{"raw": "A dog runs on the grass."}, {"raw": "a dog and a cat"}]},
        {"filename": "t1.png", "split": "train",
         "sentences": [{"raw": "that dog sleeps"}, {"raw": "a dog"}, {"raw": "one two three four five six seven"}]},
        {"filename": "t2.png", "split": "restval", "sentences": [{"raw": "a dog eats"}, {"raw": "  "}]},
        {"filename": "v0.png", "split": "val", "sentences": [{"raw": "a zebra zebra zebra zebra"}]},
        {"filename": "s0.png", "split": "test", "sentences": [{"raw": "a dog"}]},
    ]
    path = tmp_path / "src" / "dataset.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images}))
    if with_images:
        for img in images:
            Image.new("RGB", (8, 8), (9, 9, 9)).save(path.parent / img["filename"])
    return path


def _run(tmp_path: Path, **kw) -> tuple[dict, Path]:
    out = tmp_path / "data"
    opts = PreproOptions(input=str(kw.pop("input", None) or _dataset(tmp_path)), output_dir=str(out), **kw)
    return prepro(opts), out


def test_output_format(tmp_path: Path) -> None:
    stats, out = _run(tmp_path, word_count_threshold=1, max_length=5)
    assert sorted(p.name for p in out.iterdir()) == ["images.json", "labels.npy", "vocab.json"]
    vocab = Vocab.load(out / "vocab.json")
    # counted in train only: 'a' x5, 'dog' x5, every other word once (<= 1 -> UNK); 'zebra' (val only) is unknown.
    assert vocab.idx_to_word[4:] == ["a", "dog"]
    meta = json.loads((out / "images.json").read_text())
    assert (meta["format"], meta["version"], meta["source_format"]) == ("imcap-prepro", 1, "karpathy")
    assert meta["image_root"] == str((tmp_path / "src").resolve()) and Path(meta["source"]).name == "dataset.json"
    assert (meta["max_length"], meta["word_count_threshold"], meta["stats"]) == (5, 1, stats)
    labels = np.load(out / "labels.npy")
    assert labels.dtype == np.int32 and labels.shape == (8, 5)
    images = meta["images"]
    assert [im["split"] for im in images] == ["train", "train", "train", "val", "test"]
    assert [(im["label_start"], im["label_end"]) for im in images] == [(0, 2), (2, 5), (5, 6), (6, 7), (7, 8)]
    assert images[0] == {"id": "t0", "file_path": "t0.png", "split": "train", "extra": {"extra_field": {"k": 1}},
                         "captions": ["A dog runs on the grass.", "a dog and a cat"],
                         "label_start": 0, "label_end": 2}
    for im in images:
        for row, caption in zip(labels[im["label_start"]:im["label_end"]], im["captions"]):
            ids = vocab.encode(tokenize(caption), 5)
            assert row.tolist() == ids + [0] * (5 - len(ids))
    assert labels[6].tolist() == [vocab.word_to_idx["a"], UNK, UNK, UNK, UNK]  # the val-only word is UNK


def test_stats(tmp_path: Path) -> None:
    stats, _ = _run(tmp_path, word_count_threshold=1, max_length=5)
    assert stats["images"] == {"train": 3, "val": 1, "test": 1} and stats["num_images"] == 5
    assert stats["captions"] == {"train": 6, "val": 1, "test": 1} and stats["num_captions"] == 8
    assert (stats["vocab_size"], stats["vocab_words"]) == (6, 2)
    # train tokens: 6 + 5 + 3 + 2 + 7 + 3 = 26, of which 'a' x5 and 'dog' x5 are known -> 16 UNK.
    assert stats["unk_pct"] == {"train": round(100 * 16 / 26, 3), "val": 80.0, "test": 0.0}
    assert stats["length_histogram"] == {"2": 2, "3": 2, "5": 2, "6": 1, "7": 1}
    assert stats["truncated_pct"] == 25.0  # 2 of 8 captions have more than 5 words
    assert stats["dropped"] == {"empty_captions": 1, "images_without_captions": 0}
    text = format_stats(stats)
    assert "3 train, 1 val, 1 test (5 total)" in text and "25.00%" in text and "1 empty captions" in text
    assert "   5 | " in text and "  >5 | " in text


def test_default_threshold_and_max_length(tmp_path: Path) -> None:
    stats, out = _run(tmp_path)
    assert stats["vocab_words"] == 0  # no word is seen more than 5 times
    assert np.load(out / "labels.npy").shape == (8, 16)


def test_drop_bad_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _dataset(tmp_path, with_images=True)
    (path.parent / "t1.png").write_text("not an image")
    (path.parent / "s0.png").unlink()
    stats, out = _run(tmp_path, input=path, drop_bad_images=True)
    assert stats["dropped"]["bad_images"] == 2 and stats["num_images"] == 3
    assert [im["id"] for im in json.loads((out / "images.json").read_text())["images"]] == ["t0", "t2", "v0"]
    assert "dropped 2 image(s) that are missing or unreadable" in caplog.text


def test_synth_extra_fields_survive(tmp_path: Path) -> None:
    synth = tmp_path / "synth"
    (synth / "images").mkdir(parents=True)
    images = [{"filepath": "images", "filename": f"{i}.png", "split": "train", "objects": [{"shape": "circle"}],
               "background": "plain gray", "sentences": [{"raw": "a red circle", "tokens": ["a", "red", "circle"]}]}
              for i in range(3)]
    (synth / "captions.json").write_text(json.dumps({"images": images}))
    _, out = _run(tmp_path, input=synth, word_count_threshold=0, check_images=False)
    meta = json.loads((out / "images.json").read_text())
    assert meta["source_format"] == "synth"
    assert all(im["extra"] == {"objects": [{"shape": "circle"}], "background": "plain gray"} for im in meta["images"])


def test_no_training_images_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "val.csv"
    path.write_text("image,caption,split\na.jpg,a cat,val\n")
    with pytest.raises(ImcapError, match="no training images"):
        prepro(PreproOptions(input=str(path), output_dir=str(tmp_path / "out"), check_images=False))
    assert not (tmp_path / "out").exists()


def test_failed_run_keeps_earlier_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, out = _run(tmp_path)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [}')
    with pytest.raises(ImcapError):
        prepro(PreproOptions(input=str(bad), output_dir=str(out)))
    # A failure while writing (here: the rename of the first file) leaves no temporary files and the old files.
    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(ImcapError, match="labels.npy: no space left on device"):
        prepro(PreproOptions(input=str(_dataset(tmp_path / "again")), output_dir=str(out), max_length=3))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_success_prints_stats(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = _dataset(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["prepro", "--input", str(path), "--output-dir", str(tmp_path / "d"), "--word-count-threshold", "1",
              "--max-length", "4", "--format", "karpathy"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "vocabulary: 2 words" in printed and "caption length" in printed
    assert np.load(tmp_path / "d" / "labels.npy").shape == (8, 4)


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    files = {"bad.json": '{"images": [', "empty.csv": "image,caption\na.jpg,  \n", "cols.csv": "img,text\na,b\n",
             "zero.json": ""}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return {
        "malformed": ([str(tmp_path / "bad.json")], "bad.json: invalid JSON"),
        "empty captions": ([str(tmp_path / "empty.csv")], "empty.csv: no images with a non-empty caption"),
        "columns": ([str(tmp_path / "cols.csv")], "cols.csv: needs a header"),
        "zero bytes": ([str(tmp_path / "zero.json")], "zero.json: empty file"),
        "missing": ([str(tmp_path / "nope.json")], "nope.json: file not found"),
        "bad option": ([str(tmp_path / "bad.json"), "--max-length", "0"], "--max-length must be >= 1 (got 0)"),
    }


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for key, (args, problem) in _bad_inputs(tmp_path).items():
        with pytest.raises(SystemExit) as exit_:
            main(["prepro", "--input", *args[:1], "--output-dir", str(tmp_path / "out"), *args[1:]])
        err = capsys.readouterr().err
        assert exit_.value.code == 2, key
        assert err.count("\n") == 1 and err.startswith("imcap: error: ") and problem in err, (key, err)
    assert not (tmp_path / "out").exists()


def test_cli_subprocess_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "caps.jsonl"
    bad.write_text('{"image": "a.jpg", "caption": "fine"}\nnot json\n')
    run = subprocess.run([sys.executable, "-m", "imcap", "prepro", "--input", str(bad), "--output-dir",
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2
    assert run.stderr == f"imcap: error: {bad}:2: invalid JSON (Expecting value)\n"
    assert run.stdout == ""


@pytest.mark.skipif(not FLICKR8K.is_dir(), reason=f"real Flickr8k captions not found at {FLICKR8K}")
def test_real_flickr8k_prepro(tmp_path: Path) -> None:
    stats, out = _run(tmp_path, input=FLICKR8K, check_images=False)  # captions only: the images are not there
    assert stats["images"] == {"train": 6000, "val": 1000, "test": 1000}
    assert stats["num_captions"] == 40000 and stats["dropped"]["images_not_in_split_lists"] == 92
    assert 1000 < stats["vocab_words"] < 5000 and 0 < stats["unk_pct"]["train"] < 10
    labels = np.load(out / "labels.npy", mmap_mode="r")
    assert labels.shape == (40000, 16) and (labels[:, 0] > 0).all()  # every caption has at least one word
