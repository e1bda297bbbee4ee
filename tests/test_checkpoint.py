import errno
import logging
import pickle

import pytest
import torch

from imcap.checkpoint import BEST, LAST, load_checkpoint, open_run, resolve_checkpoint, save_checkpoint, save_run_checkpoints
from imcap.errors import ImcapError
from imcap.files import (
    atomic_write,
    atomic_write_text,
    check_free_space,
    disk_cause,
    file_data_uri,
    png_data_uri,
    remove_stale_temporaries,
    thumbnail_data_uri,
)


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]  # no temp file left behind


def test_roundtrip_and_run_directory_resolution(tmp_path):
    save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.ones(2)}, "iteration": 3})
    assert resolve_checkpoint(tmp_path) == tmp_path / "last.pt"
    save_checkpoint(tmp_path / "best.pt", {"model": {"w": torch.zeros(2)}, "iteration": 2})
    assert resolve_checkpoint(tmp_path) == tmp_path / "best.pt"
    assert load_checkpoint(tmp_path)["iteration"] == 2


def test_truncated_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"model": {"w": torch.ones(1000)}})
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImcapError, match="t.pt: not a loadable imcap checkpoint"):
        load_checkpoint(tmp_path / "t.pt")


def test_foreign_checkpoints(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ImcapError, match="not an imcap checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "zero.pt").write_bytes(b"")
    with pytest.raises(ImcapError, match="zero.pt"):
        load_checkpoint(tmp_path / "zero.pt")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_never_executed(tmp_path, capsys):
    torch.save({"format": "imcap-checkpoint", "x": Evil()}, tmp_path / "evil.pt", pickle_module=pickle)
    with pytest.raises(ImcapError):
        load_checkpoint(tmp_path / "evil.pt")
    assert "pwned" not in capsys.readouterr().out


def test_missing(tmp_path):
    with pytest.raises(ImcapError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(ImcapError, match="holds no checkpoint"):
        load_checkpoint(tmp_path)


# ---------------------------------------------------------------- disk errors


@pytest.mark.parametrize("exc,cause", [
    (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
    (OSError(errno.EROFS, "Read-only file system"), "read-only file system"),
    (PermissionError(errno.EACCES, "Permission denied"), "permission denied"),
    (OSError(errno.EPERM, "Operation not permitted"), "permission denied"),
    (RuntimeError("PytorchStreamWriter failed writing file data/0: [Errno 28] No space left on device"), "no space left on device"),
    (OSError(errno.EIO, "Input/output error"), None),
    (ValueError("bad value"), None),
])
def test_disk_cause(exc, cause):
    assert disk_cause(exc, full=False) == cause


def test_disk_cause_looks_through_wrapped_errors():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904 (as torch.save does)
    except RuntimeError as exc:
        assert disk_cause(exc, full=False) == "no space left on device"
    # torch's writer to a path and numpy's short-write check drop the errno: a nearly full disk decides
    assert disk_cause(RuntimeError("unexpected pos 576 vs 534"), full=True) == "no space left on device"
    assert disk_cause(RuntimeError("unexpected pos 576 vs 534"), full=False) is None


def test_atomic_write_turns_a_full_disk_into_one_line(tmp_path):
    target = tmp_path / "x.bin"
    atomic_write_text(target, "old")

    def full(tmp):
        tmp.write_bytes(b"x" * 5000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ImcapError, match=r"x.bin: no space left on device \(needs more than 5 KB, .* [KMG]B free\)"):
        atomic_write(target, full)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]
    with pytest.raises(ImcapError, match=r"x.bin: no space left on device \(needs 1000.0 GB"):
        atomic_write(target, full, needed_bytes=10**12)  # checked before anything is written
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_atomic_write_into_a_read_only_folder(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(ImcapError, match=r"^\S+/out.json: read-only file system$"):
        atomic_write_text(tmp_path / "out.json", "{}")


def test_check_free_space(tmp_path):
    check_free_space(tmp_path, 1)
    with pytest.raises(ImcapError, match=r"^features/x.npy: no space left on device \(needs 1000.0 GB, [0-9.]+ [KMG]B free\)$"):
        check_free_space(tmp_path / "not" / "yet", 10**12, "features/x.npy")


def test_remove_stale_temporaries(tmp_path):
    for name in (".last.pt.ab_cd123.tmp", ".best.pt.zzzzzzzz.tmp", ".notes.txt.0123abcd.tmp", "last.pt", "keep.tmp", ".x.tmp"):
        (tmp_path / name).write_text("x")
    assert {p.name for p in remove_stale_temporaries(tmp_path, [LAST])} == {".last.pt.ab_cd123.tmp"}
    assert {p.name for p in remove_stale_temporaries(tmp_path)} == {".best.pt.zzzzzzzz.tmp", ".notes.txt.0123abcd.tmp"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".x.tmp", "keep.tmp", "last.pt"]


def test_data_uris(tmp_path):
    from PIL import Image

    picture = Image.new("RGB", (600, 300), "red")
    picture.save(tmp_path / "a.png")
    assert png_data_uri(picture).startswith("data:image/png;base64,")
    assert file_data_uri(tmp_path / "a.png") == "data:image/png;base64," + __import__("base64").b64encode((tmp_path / "a.png").read_bytes()).decode()
    thumb = thumbnail_data_uri(tmp_path / "a.png", 64)
    assert thumb.startswith("data:image/png;base64,") and len(thumb) < len(file_data_uri(tmp_path / "a.png"))
    (tmp_path / "b.png").write_text("not an image")
    assert thumbnail_data_uri(tmp_path / "b.png") == ""


# ---------------------------------------------------------------- run directories


def _ckpt(iteration, best_iteration=None):
    return {"model": {"w": torch.full((3,), float(iteration))}, "iteration": iteration,
            "best_iteration": iteration if best_iteration is None else best_iteration}


def test_save_run_checkpoints_writes_last_before_best(tmp_path, monkeypatch):
    import imcap.checkpoint as checkpoint

    order = []
    real = checkpoint.save_checkpoint
    monkeypatch.setattr(checkpoint, "save_checkpoint", lambda path, ckpt: (order.append(path.name), real(path, ckpt)))
    save_run_checkpoints(tmp_path, _ckpt(3), best=True)
    save_run_checkpoints(tmp_path, _ckpt(6, 3), best=False)
    assert order == [LAST, BEST, LAST]
    assert load_checkpoint(tmp_path / LAST)["iteration"] == 6 and load_checkpoint(tmp_path)["iteration"] == 3


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_best_falls_back_to_last_with_a_warning(tmp_path, caplog, damage):
    save_run_checkpoints(tmp_path, _ckpt(3), best=True)
    save_run_checkpoints(tmp_path, _ckpt(6, 3), best=False)
    data = (tmp_path / BEST).read_bytes()
    (tmp_path / BEST).write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * len(data), "empty": b""}[damage])
    with caplog.at_level(logging.WARNING):
        assert resolve_checkpoint(tmp_path) == tmp_path / LAST
        assert load_checkpoint(tmp_path)["iteration"] == 6
    warnings = [r.getMessage() for r in caplog.records]  # once, though the run was resolved and loaded
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {tmp_path / BEST}: ") and warnings[0].endswith("using last.pt instead")
    assert "\n" not in warnings[0]


def test_damaged_last_falls_back_to_best_on_resume(tmp_path, caplog):
    save_run_checkpoints(tmp_path, _ckpt(3), best=True)
    (tmp_path / LAST).write_bytes((tmp_path / LAST).read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        assert open_run(tmp_path, resume=True)["iteration"] == 3
    assert [r.getMessage() for r in caplog.records][0].startswith(f"warning: {tmp_path / LAST}: ")


def test_both_damaged_names_both(tmp_path):
    for name in (BEST, LAST):
        (tmp_path / name).write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ImcapError, match=r"no loadable checkpoint \(best.pt: .*; last.pt: .*\)"):
        load_checkpoint(tmp_path)
    with pytest.raises(ImcapError, match=r"no loadable checkpoint \(best.pt: .*; last.pt: .*\)"):
        resolve_checkpoint(tmp_path)


def test_open_run_removes_stale_temporaries_and_restores_best(tmp_path):
    save_checkpoint(tmp_path / LAST, _ckpt(3))  # a kill came between last.pt and best.pt of an improving save
    (tmp_path / ".best.pt.k1ll3d00.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".last.pt.k1ll3d01.tmp").write_bytes(b"")
    ckpt = open_run(tmp_path, resume=True)
    assert ckpt["iteration"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST, LAST]
    assert (tmp_path / BEST).read_bytes() == (tmp_path / LAST).read_bytes()
    save_checkpoint(tmp_path / LAST, _ckpt(6, 3))  # a later, not improving save: best.pt stays as it is
    best = (tmp_path / BEST).read_bytes()
    open_run(tmp_path, resume=True)
    assert (tmp_path / BEST).read_bytes() == best


def test_open_run_fresh_resume_and_refusals(tmp_path, caplog):
    run = tmp_path / "run"
    assert open_run(run, resume=False) is None
    with pytest.raises(ImcapError, match="nothing to resume"):
        open_run(run, resume=True)
    run.mkdir()  # started, killed before its first checkpoint
    with caplog.at_level(logging.WARNING):
        assert open_run(run, resume=True) is None
    assert "starting it from iteration 0" in caplog.records[-1].getMessage()
    save_checkpoint(run / BEST, _ckpt(3))  # an older run that wrote best.pt first and was killed
    with pytest.raises(ImcapError, match="already holds a run"):
        open_run(run, resume=False)
    assert open_run(run, resume=True)["iteration"] == 3


def test_commands_use_last_when_best_is_damaged(tiny_run, tiny_data, tmp_path, capsys, caplog, monkeypatch):
    """`imcap caption` and `imcap eval` on a run whose best.pt is truncated: last.pt and one warning line."""
    import json
    import shutil

    from imcap.cli import main

    monkeypatch.setenv("IMCAP_JAVA", str(tmp_path / "no-java"))  # eval without METEOR's slow start

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    image = sorted((tiny_data.parent / "synth" / "images").glob("*.png"))[0]
    whole = (run / BEST).read_bytes()
    for cut, argv in ((300, ["caption", "--model", run, image, "--device", "cpu"]),
                      (301, ["eval", "--model", run, "--max-images", "2", "--html-images", "0", "--out", tmp_path / "ev", "--no-progress", "--device", "cpu"])):
        (run / BEST).write_bytes(whole[:cut])  # damaged anew: a process warns once per damaged file
        caplog.clear()
        with pytest.raises(SystemExit) as exc, caplog.at_level(logging.WARNING):
            main([str(a) for a in argv])
        _, err = capsys.readouterr()
        assert exc.value.code == 0, err
        warnings = [r.getMessage() for r in caplog.records if r.getMessage().startswith("warning: ")]
        assert warnings == [f"warning: {run / BEST}: not a loadable imcap checkpoint (truncated or overwritten: File is not a zip file); using last.pt instead"]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["checkpoint"] == str(run / LAST)
