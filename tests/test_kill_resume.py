"""SIGKILL `imcap train` at many instants around its checkpoint saves: `--resume` always works, ends
bit-identical to an uninterrupted run, and leaves no temporary file.

The kills come from the atomic writer's test hook (IMCAP_KILL_AT=STEP:FILE:N stops the process the Nth
time a write of FILE reaches STEP: opened, written, synced, renamed). A driver process imports torch
once and forks one child per run (the reference, each killed run, each resume), so the test costs
training time, not import time.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TRAIN = ["--max-iters", "6", "--save-checkpoint-every", "2", "--cnn", "small", "--cnn-width", "4", "--input-encoding-size", "16",
         "--rnn-size", "16", "--batch-size", "4", "--seq-per-img", "2", "--val-images-use", "4", "--learning-rate", "1e-3",
         "--seed", "5", "--no-progress", "--device", "cpu"]
KILLS = [
    "opened:options.json:1",  # before the first checkpoint
    "written:last.pt:1", "synced:last.pt:1", "renamed:last.pt:1",  # the first save: last.pt, then best.pt
    "written:best.pt:1", "renamed:best.pt:1",
    "renamed:history.json:1",
    "written:last.pt:2", "renamed:last.pt:2",  # a later save
    "written:best.pt:2",  # (only when that save improves)
    "renamed:last.pt:3",  # the final save
]


def _child(argv: list[str], kill: str) -> int:
    """Run `imcap ARGV` in a forked child; its exit status (negative: killed by that signal)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            from imcap.cli import main
            from imcap.files import KILL_ENV

            os.environ.pop(KILL_ENV, None)
            if kill:
                os.environ[KILL_ENV] = kill
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _differences(a, b, where: str = "") -> list[str]:
    """Where two checkpoint values differ (tensors bit for bit); wall-clock and training times and options are skipped."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        keys = (set(a) | set(b)) - {"time", "train_time", "train_seconds", "options"}
        return [d for k in sorted(keys, key=str) for d in _differences(a.get(k), b.get(k), f"{where}/{k}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [where]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def drive(data: str, root: str) -> None:
    """Train a reference run, then for each kill point a killed run and its resume; print a JSON report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (imported once here, not in every child)

    import imcap.cli  # noqa: F401
    import imcap.train  # noqa: F401

    root_path = Path(root)

    def argv(run: Path, resume: bool = False) -> list[str]:
        return ["train", "--data", data, "--checkpoint-path", str(run), *TRAIN, *(["--resume"] if resume else [])]

    report: dict = {"reference": _child(argv(root_path / "reference"), ""), "runs": {}}
    for i, kill in enumerate(KILLS):
        run = root_path / f"k{i}"
        killed = _child(argv(run), kill)
        left = sorted(p.name for p in run.glob(".*.tmp")) if run.exists() else []
        resumed = _child(argv(run, resume=True), "")
        report["runs"][kill] = {"killed": killed, "temporaries_after_kill": left, "resume": resumed,
                                "temporaries_after_resume": sorted(p.name for p in run.glob(".*.tmp"))}
    import torch  # only now: the children above were forked before this process ran any torch code

    for i, kill in enumerate(KILLS):
        entry = report["runs"][kill]
        diffs = []
        for name in ("last.pt", "best.pt"):
            mine, ref = root_path / f"k{i}" / name, root_path / "reference" / name
            if not mine.exists():
                diffs.append(f"{name} missing")
                continue
            diffs += [f"{name}{d}" for d in _differences(torch.load(mine, weights_only=True), torch.load(ref, weights_only=True))]
        entry["differences"] = diffs
    print(json.dumps(report))


@pytest.mark.slow
def test_killed_training_always_resumes_bit_identically(tiny_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    code = f"import test_kill_resume as t; t.drive({str(tiny_data)!r}, {str(tmp_path)!r})"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["reference"] == 0, done.stderr[-3000:]
    runs = report["runs"]
    for kill, entry in runs.items():
        assert entry["resume"] == 0, (kill, entry, done.stderr[-3000:])
        assert entry["temporaries_after_resume"] == [], (kill, entry)
        assert entry["differences"] == [], (kill, entry)
    killed = {kill for kill, entry in runs.items() if entry["killed"] == -signal.SIGKILL}
    always = {k for k in KILLS if not k.endswith(":best.pt:2")}  # every save but an improving second one happens for sure
    assert always <= killed, sorted(always - killed)
    assert any(runs[k]["temporaries_after_kill"] for k in killed)  # the kills did leave temporaries to clean up
