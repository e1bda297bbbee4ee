"""`imcap prepro` against hostile conditions: missing images, duplicate listings, an unwritable or full output
folder. Each ends in one exact line (exit 2 from the CLI) with earlier outputs intact and no temporary file left."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imcap.data.prepro
import imcap.files
from imcap.cli import main
from imcap.data.prepro import OUTPUT_FILES, PreproOptions, format_stats, prepro
from imcap.errors import ImcapError
from imcap.files import free_bytes, megabytes

HINT = "give --image-root DIR, or --no-check-images to skip this check"


def _csv(folder: Path, names: list[str], images: bool = True, split: str = "train") -> Path:
    """A CSV caption file with one caption per image (and, with `images`, the image files beside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "caps.csv"
    path.write_text("image,caption,split\n" + "".join(f"{n},a red ball number {i},{split}\n"
                                                       for i, n in enumerate(names)))
    for name in names if images else []:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")  # existence is all the default check looks at
    return path


def _prepro(path: Path, out: Path, **kw) -> dict:
    return prepro(PreproOptions(input=str(path), output_dir=str(out), word_count_threshold=0, **kw))


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_:
        main(["prepro", *args])
    return exit_.value.code, capsys.readouterr().err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# ------------------------------------------------------------------ image existence


def test_missing_images_are_counted_and_the_first_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    path = _csv(src, ["a.jpg", "b.jpg", "sub/c.jpg", "d.jpg"])
    (src / "b.jpg").unlink()
    (src / "sub" / "c.jpg").unlink()
    expected = f"{src}: 2 of 4 image(s) not found (first: {src}/b.jpg); {HINT}"
    with pytest.raises(ImcapError) as err:
        _prepro(path, tmp_path / "out")
    assert str(err.value) == expected
    code, printed = _cli(capsys, "--input", str(path), "--output-dir", str(tmp_path / "out"))
    assert (code, printed) == (2, f"imcap: error: {expected}\n")
    assert not (tmp_path / "out").exists()
    assert _prepro(path, tmp_path / "out", check_images=False)["num_images"] == 4


@pytest.mark.parametrize("make", ["broken symlink", "folder", "nothing"])
def test_what_counts_as_missing(tmp_path: Path, make: str) -> None:
    src = tmp_path / "src"
    path = _csv(src, ["a.jpg", "b.jpg"])
    (src / "b.jpg").unlink()
    if make == "broken symlink":
        (src / "b.jpg").symlink_to(src / "gone.jpg")
    elif make == "folder":
        (src / "b.jpg").mkdir()
    with pytest.raises(ImcapError, match=r"1 of 2 image\(s\) not found \(first: .*/src/b.jpg\)"):
        _prepro(path, tmp_path / "out")


def test_a_symlink_to_an_image_counts_as_present(tmp_path: Path) -> None:
    src = tmp_path / "src"
    path = _csv(src, ["a.jpg", "b.jpg"])
    (src / "b.jpg").unlink()
    (src / "b.jpg").symlink_to(src / "a.jpg")
    assert _prepro(path, tmp_path / "out")["num_images"] == 2


def test_image_check_lists_each_folder_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = [f"{folder}/{i}.jpg" for folder in ("f0", "f1", "f2") for i in range(200)]
    path = _csv(tmp_path / "src", names)
    calls = {"scandir": 0, "stat": 0}
    real_scandir, real_stat = os.scandir, os.stat

    def scandir(*args, **kw):
        calls["scandir"] += 1
        return real_scandir(*args, **kw)

    def stat(*args, **kw):
        calls["stat"] += 1
        return real_stat(*args, **kw)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "stat", stat)
    _prepro(path, tmp_path / "out")
    monkeypatch.undo()
    assert calls["scandir"] == 3
    assert calls["stat"] < 60  # the whole run, for 600 images: no stat per image


def _flickr8k(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "Flickr8k.token.txt").write_text("".join(f"{n}.jpg#0\ta dog number {n}\n" for n in "abc"))
    for split, name in (("train", "a"), ("dev", "b"), ("test", "c")):
        (folder / f"Flickr_8k.{split}Images.txt").write_text(f"{name}.jpg\n")
    return folder


def test_flickr8k_without_images_fails_clearly(tmp_path: Path) -> None:
    text = _flickr8k(tmp_path / "Flickr8k_text")
    with pytest.raises(ImcapError) as err:
        _prepro(text, tmp_path / "out")
    assert str(err.value) == f"{text}: 3 of 3 image(s) not found (first: {text}/a.jpg); {HINT}"


def test_flickr8k_finds_its_image_folder(tmp_path: Path) -> None:
    text = _flickr8k(tmp_path / "Flickr8k_text")
    images = tmp_path / "Flicker8k_Dataset"  # the official archive's spelling, beside the text folder
    images.mkdir()
    for n in "abc":
        Image.new("RGB", (4, 4)).save(images / f"{n}.jpg")
    stats = _prepro(text, tmp_path / "out")
    assert stats["images"] == {"train": 1, "val": 1, "test": 1}


def test_drop_bad_images_replaces_the_existence_check(tmp_path: Path) -> None:
    src = tmp_path / "src"
    path = _csv(src, ["a.png", "b.png", "c.png"], images=False)
    Image.new("RGB", (4, 4)).save(src / "a.png")
    (src / "b.png").write_text("not an image")
    stats = _prepro(path, tmp_path / "out", drop_bad_images=True)
    assert (stats["num_images"], stats["dropped"]["bad_images"]) == (1, 2)


def test_dedupe_through_prepro(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "src"
    path = _csv(src, ["a.jpg", "b.jpg", "./a.jpg"])
    code, err = _cli(capsys, "--input", str(path), "--output-dir", str(tmp_path / "out"))
    assert code == 2
    assert err == (f"imcap: error: {path}: image ./a.jpg is listed under two ids: line 2 (a.jpg) and line 4 (./a.jpg) "
                   "(--dedupe keeps the first listing)\n")
    stats = _prepro(path, tmp_path / "out", dedupe=True)
    assert (stats["num_images"], stats["dropped"]["duplicate_images"]) == (2, 1)
    assert "dropped: 1 duplicate images" in format_stats(stats)


# ------------------------------------------------------------------ the output folder


def test_output_under_a_file_is_one_line(tmp_path: Path) -> None:
    path = _csv(tmp_path / "src", ["a.jpg"])
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    out = blocker / "data"
    run = subprocess.run([sys.executable, "-m", "imcap", "prepro", "--input", str(path), "--output-dir", str(out)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr == f"imcap: error: {out}: cannot create the folder ({blocker} is a file)\n"


@pytest.fixture()
def read_only_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder nobody may write to: a read-only tmpfs as root (root ignores permissions), else mode 0555."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder, "permission denied"
        folder.chmod(0o755)
        return
    mounted = shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True, check=False
    ).returncode == 0
    if not mounted:
        pytest.skip("running as root without permission to mount a read-only tmpfs")
    try:
        yield folder, "read-only file system"
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def test_unwritable_output_dir_is_one_line_before_any_work(tmp_path: Path, read_only_dir: tuple[Path, str],
                                                          capsys: pytest.CaptureFixture) -> None:
    folder, cause = read_only_dir
    path = _csv(tmp_path / "src", ["a.jpg"])
    code, err = _cli(capsys, "--input", str(path), "--output-dir", str(folder))
    assert (code, err) == (2, f"imcap: error: {folder}: {cause}\n")
    code, err = _cli(capsys, "--input", str(path), "--output-dir", str(folder / "data"))
    assert (code, err) == (2, f"imcap: error: {folder / 'data'}: {cause} (in {folder})\n")


def test_stale_temporary_files_are_removed(tmp_path: Path) -> None:
    path = _csv(tmp_path / "src", ["a.jpg"])
    out = tmp_path / "out"
    out.mkdir()
    (out / ".labels.npy.k1ll3d_x.tmp").write_bytes(b"half a file")
    _prepro(path, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)


# ------------------------------------------------------------------ a full disk

NAMES = [f"{i}.jpg" for i in range(1000)]
BIG = 1000  # --max-length: labels.npy of the 1000 captions is 4.0 MB, more than the 3 MB disk


def _full_disk_run(small_disk: tuple[Path, str], tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """A 3 MB disk holding the outputs of a small run; returns (input, output folder, their bytes)."""
    disk, _ = small_disk
    path = _csv(tmp_path / "src", NAMES)
    out = disk / "data"
    _prepro(path, out)
    return path, out, _snapshot(out)


def test_full_disk_is_found_before_writing(small_disk: tuple[Path, str], tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    path, out, before = _full_disk_run(small_disk, tmp_path)
    needs = megabytes(128 + 4 * len(NAMES) * BIG)
    free = megabytes(free_bytes(out))
    code, err = _cli(capsys, "--input", str(path), "--output-dir", str(out), "--max-length", str(BIG),
                     "--word-count-threshold", "0")
    assert (code, err) == (2, f"imcap: error: {out}/labels.npy: no space left on device (needs {needs}, {free} free)\n")
    assert _snapshot(out) == before


def test_full_disk_while_writing(small_disk: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    """With the free-space checks blinded, the write itself runs out of space: same one line, nothing lost."""
    path, out, before = _full_disk_run(small_disk, tmp_path)
    monkeypatch.setattr(imcap.data.prepro, "check_free_space", lambda *a, **k: None)
    monkeypatch.setattr(imcap.files, "check_free_space", lambda *a, **k: None)
    code, err = _cli(capsys, "--input", str(path), "--output-dir", str(out), "--max-length", str(BIG),
                     "--word-count-threshold", "0")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"imcap: error: {out}/labels.npy: no space left on device (")
    assert _snapshot(out) == before  # the three earlier outputs, byte for byte, and no temporary file
    assert np.load(out / "labels.npy").shape == (len(NAMES), 16)
