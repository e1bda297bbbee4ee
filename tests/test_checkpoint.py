import pickle

import pytest
import torch

from imcap.checkpoint import atomic_write_text, load_checkpoint, resolve_checkpoint, save_checkpoint
from imcap.errors import ImcapError


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")

    def boom(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    from imcap.checkpoint import atomic_write

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
