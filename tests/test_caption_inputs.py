"""`imcap caption` on folders and globs: every file passed over is listed, none is dropped silently."""
import json
import logging
import os
import shutil

import pytest

from imcap.cli import main
from imcap.data.images import collect_images
from imcap.errors import ImcapError


@pytest.fixture()
def folder(tmp_path, tiny_data):
    """Two scene images, a broken symbolic link, a text file, an unreadable image and a link to a good one."""
    meta = json.loads((tiny_data / "images.json").read_text())
    out = tmp_path / "imgs"
    (out / "sub").mkdir(parents=True)
    for i, im in enumerate(meta["images"][:2]):
        shutil.copy(f"{meta['image_root']}/{im['file_path']}", out / ("sub" if i else "") / f"good{i}.png")
    (out / "gone.png").symlink_to(tmp_path / "deleted.png")
    (out / "notes.txt").write_text("not an image")
    shutil.copy(out / "good0.png", out / "locked.png")
    (out / "alias.png").symlink_to(out / "good0.png")
    return out


@pytest.fixture()
def locked(monkeypatch, folder):
    """locked.png is unreadable (as root every file is readable, so access() is told otherwise)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).endswith("locked.png") else real(p, mode, **kw))


def test_collect_lists_what_it_passes_over(folder, locked):
    images, passed = collect_images([str(folder)])
    assert [p.name for p in images] == ["alias.png", "good0.png", "good1.png"]
    assert [(os.path.basename(f), problem) for f, problem in passed] == [
        ("gone.png", f"broken symbolic link (to {folder.parent / 'deleted.png'})"),
        ("locked.png", "not readable (permission denied)"),
        ("notes.txt", "not an image file (.txt)"),
    ]
    images, passed = collect_images([str(folder / "*")])  # a glob: its files are tried whatever their extension, its folders searched
    assert {p.name for p in images} == {"alias.png", "good0.png", "good1.png", "notes.txt"} and {os.path.basename(f) for f, _ in passed} == {"gone.png", "locked.png"}
    with pytest.raises(ImcapError, match="missing.png: file not found"):
        collect_images([str(folder / "missing.png")])


def test_caption_lists_every_skipped_file(capsys, caplog, tiny_run, folder, locked):
    with pytest.raises(SystemExit) as exc, caplog.at_level(logging.WARNING):
        main(["caption", "--model", str(tiny_run), str(folder), "--json", "--no-progress", "--device", "cpu"])
    out, err = capsys.readouterr()
    assert exc.value.code == 0
    result = json.loads(out)
    assert len(result["results"]) == 3
    assert sorted(os.path.basename(s["file"]) for s in result["skipped"]) == ["gone.png", "locked.png", "notes.txt"]
    assert "skipped 3 bad image(s) of 6" in err
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped 3 file(s) that are not readable images: "))
    assert "gone.png (broken symbolic link" in line and "locked.png (not readable" in line and "notes.txt (not an image file" in line
