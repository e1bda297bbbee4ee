"""`imcap train --checkpoint-path RUN --resume` keeps the run's word, from any directory."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imcap.checkpoint import load_checkpoint
from imcap.cli import main

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _imcap(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "imcap", *args], cwd=cwd, env=ENV, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"imcap {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc


def _train_args(data: str, run: str, iters: int) -> list[str]:
    return ["train", "--data", data, "--checkpoint-path", run, "--cnn-width", "4", "--input-encoding-size", "16", "--rnn-size", "16",
            "--batch-size", "4", "--seq-per-img", "2", "--max-iters", str(iters), "--save-checkpoint-every", "3",
            "--val-images-use", "2", "--learning-rate", "1e-3", "--seed", "5", "--no-progress"]


@pytest.fixture()
def workdir(tiny_data, tmp_path) -> Path:
    """A directory holding a copy of the tiny data set as `data/` (so the run can name it relatively)."""
    home = tmp_path / "home"
    shutil.copytree(tiny_data, home / "data")
    return home


@pytest.mark.slow
def test_sigkill_then_bare_resume_from_another_directory(workdir, tmp_path, monkeypatch):
    proc = subprocess.Popen([sys.executable, "-m", "imcap", *_train_args("data", "runs/killed", 10)], cwd=workdir, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = workdir / "runs" / "killed" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and not last.exists() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = load_checkpoint(last)["iteration"]
    assert stopped_at < 10, "the run finished before it could be killed"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = (workdir / "runs" / "killed").resolve()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed process (OMP_NUM_THREADS=1): the thread count changes float sums
    try:
        assert _main(_train_args("data", "runs/full", 10), workdir, monkeypatch) == 0  # the uninterrupted run
        assert _main(["train", "--checkpoint-path", str(run), "--resume"], elsewhere, monkeypatch) == 0
    finally:
        torch.set_num_threads(threads)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["iteration"] == 10  # the run's own --max-iters
    history = json.loads((run / "history.json").read_text())
    assert [v["iteration"] for v in history["val"]] == [3, 6, 9, 10]  # its own checkpoint interval
    full = load_checkpoint(workdir / "runs" / "full" / "last.pt")["model"]
    for key, value in full.items():
        assert torch.equal(value, ckpt["model"][key]), key
    assert not list(elsewhere.iterdir()), "resume wrote into the current directory"

    third = tmp_path / "third"
    third.mkdir()
    out = _imcap(["eval", "--model", str(run), "--split", "test", "--no-progress"], cwd=third)
    assert "CIDEr" in out.stdout
    assert (run / "eval-test" / "metrics.json").is_file()


def _main(args: list[str], cwd: Path, monkeypatch) -> int:
    """`imcap ARGS` in this process (cheaper than a subprocess), from `cwd`; returns the exit code."""
    monkeypatch.chdir(cwd)
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code


def test_resume_overrides_and_refusals(workdir, tmp_path, monkeypatch, capsys, caplog):
    caplog.set_level(logging.INFO, logger="imcap")
    assert _main(_train_args("data", "runs/r", 3), workdir, monkeypatch) == 0
    run = str((workdir / "runs" / "r").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    capsys.readouterr()

    assert _main(["train", "--checkpoint-path", run, "--resume", "--learning-rate", "0.1"], elsewhere, monkeypatch) == 2
    assert capsys.readouterr().err.strip().startswith("imcap: error: --learning-rate cannot change when resuming")

    assert _main(["train", "--checkpoint-path", run, "--resume", "--learning-rate", "1e-3", "--max-iters", "5"], elsewhere, monkeypatch) == 0
    assert "--max-iters 5 overrides the run's 3" in caplog.text
    assert load_checkpoint(Path(run) / "last.pt")["iteration"] == 5
    assert load_checkpoint(Path(run) / "last.pt")["options"]["save_checkpoint_every"] == 3

    moved = tmp_path / "moved-data"
    shutil.copytree(workdir / "data", moved)
    assert _main(["train", "--checkpoint-path", run, "--resume", "--data", str(moved), "--max-iters", "6"], elsewhere, monkeypatch) == 0
    assert "same data set" in caplog.text

    other = tmp_path / "other-data"
    shutil.copytree(workdir / "data", other)
    (other / "images.json").write_text((other / "images.json").read_text().replace('"split": "test"', '"split": "val"', 1))
    capsys.readouterr()
    assert _main(["train", "--checkpoint-path", run, "--resume", "--data", str(other), "--max-iters", "7"], elsewhere, monkeypatch) == 2
    assert "not the data set this run was trained on" in capsys.readouterr().err
    assert _main(["eval", "--model", run, "--data", str(other), "--no-progress"], elsewhere, monkeypatch) == 2
    assert "not the data set" in capsys.readouterr().err


def test_start_from_takes_sizes_from_the_checkpoint(workdir, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="imcap")
    assert _main(_train_args("data", "runs/base", 3), workdir, monkeypatch) == 0
    args = _train_args("data", "runs/next", 2) + ["--start-from", "runs/base/last.pt"]
    args[args.index("--rnn-size") + 1] = "32"  # differs from the checkpoint's 16
    assert _main(args, workdir, monkeypatch) == 0
    assert "--rnn-size 16 (flag: 32)" in caplog.text
    assert load_checkpoint(workdir / "runs" / "next" / "last.pt")["model_args"]["rnn_size"] == 16
