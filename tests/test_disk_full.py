"""A full disk: every writer exits 2 with one line naming the file and "no space", leaves no temporary
file, and an earlier output in the same place is unchanged.

Runs on a 3 MB tmpfs when the tests run as root (else on a simulated small file system, see
imcap_testing.small_filesystem): each command first writes its output there, then the disk is filled
up to `leave` bytes and the command is run again into the same place.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from imcap.cli import main
from imcap.files import free_bytes

TRAIN = ["--cnn", "small", "--cnn-width", "4", "--input-encoding-size", "16", "--rnn-size", "16", "--batch-size", "4",
         "--seq-per-img", "2", "--save-checkpoint-every", "2", "--val-images-use", "4", "--no-progress", "--seed", "5", "--device", "cpu"]
TEMPORARY = re.compile(r"(^\..*\.tmp$)|(\.partial$)|(\.tmp-\d+$)|(^\.progress\.json$)")


def run(capsys, argv: list) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code, capsys.readouterr().err


def fill(disk: Path, leave: int) -> None:
    """Take all but `leave` bytes of the disk's free space."""
    free = free_bytes(disk)
    with open(disk / "filler", "wb") as f:
        f.truncate(0)
        for _ in range(max(0, free - leave) // 4096):
            f.write(b"\0" * 4096)
        f.flush()
        os.fsync(f.fileno())


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every output file's bytes (but options.json, which a resumed run rewrites with --resume in it)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "options.json"}


def case_prepro(disk: Path, tiny_data: Path, tiny_run: Path, tmp_path: Path):
    argv = ["prepro", "--input", tiny_data.parent / "synth", "--output-dir", disk / "data", "--word-count-threshold", "0"]
    return argv, argv, disk / "data", 0


def case_train(disk: Path, tiny_data: Path, tiny_run: Path, tmp_path: Path):
    first = ["train", "--data", tiny_data, "--checkpoint-path", disk / "run", "--max-iters", "2", *TRAIN]
    again = ["train", "--checkpoint-path", disk / "run", "--resume", "--max-iters", "4", "--no-progress", "--device", "cpu"]
    # room for options.json (rewritten on resume) and history.json, not for a checkpoint
    return first, again, disk / "run", 24 << 10


def case_features(disk: Path, tiny_data: Path, tiny_run: Path, tmp_path: Path):
    first = ["features", "--data", tiny_data, "--out", disk / "feats", "--model", tiny_run, "--no-progress", "--device", "cpu"]
    return first, [*first, "--store", "both"], disk / "feats", 16 << 10


def case_eval(disk: Path, tiny_data: Path, tiny_run: Path, tmp_path: Path):
    argv = ["eval", "--model", tiny_run, "--data", tiny_data, "--out", disk / "eval", "--no-progress", "--device", "cpu"]
    return argv, argv, disk / "eval", 0


def case_search_index(disk: Path, tiny_data: Path, tiny_run: Path, tmp_path: Path):
    images = sorted((tiny_data.parent / "synth" / "images").glob("*.png"))
    rng = np.random.default_rng(0)
    argvs = []
    for part, chosen in (("a", images[:20]), ("b", images[20:60])):
        vectors = rng.standard_normal((len(chosen), 256)).astype(np.float32)
        np.save(tmp_path / f"{part}.npy", vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        (tmp_path / f"{part}.txt").write_text("\n".join(map(str, chosen)) + "\n")
        argvs.append(["search", "index", "--embeddings", tmp_path / f"{part}.npy", "--paths", tmp_path / f"{part}.txt", "--out", disk / "idx"])
    return argvs[0], argvs[1], disk / "idx", 8 << 10


@pytest.mark.parametrize("case", [case_prepro, case_train, case_features, case_eval, case_search_index], ids=lambda c: c.__name__[5:])
def test_a_full_disk_is_one_line_and_loses_nothing(case, small_disk, tiny_data, tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("IMCAP_JAVA", str(tmp_path / "no-java"))  # eval without METEOR's slow start
    disk, _ = small_disk
    first, again, output, leave = case(disk, tiny_data, tiny_run, tmp_path)
    code, err = run(capsys, first)
    assert code == 0, err
    before = snapshot(output)
    fill(disk, leave)
    code, err = run(capsys, again)
    lines = [line for line in err.splitlines() if line.startswith("imcap: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert re.search(rf"imcap: error: {re.escape(str(disk))}/\S+: no space left on device \(", lines[0]), lines[0]
    assert [p.name for p in disk.rglob("*") if TEMPORARY.search(p.name)] == []
    assert snapshot(output) == before
