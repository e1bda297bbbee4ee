"""Checkpoints: atomic writes (write, fsync, rename) and code-free loading (`weights_only=True`).

A checkpoint is one plain dict (nanoGPT style):
    format, version, model {encoder, decoder}, model_args, vocab, optimizer, cnn_optimizer,
    iteration, epoch, position, rng, options, history, best_score, best_iteration
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imcap.errors import ImcapError

FORMAT = "imcap-checkpoint"
VERSION = 1
LAST, BEST = "last.pt", "best.pt"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace `path` with `text` (UTF-8)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically replace `path` with `obj` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2))


def rng_state() -> dict:
    """Every RNG state a training step can touch, as weights_only-loadable values."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path: str | Path, ckpt: dict) -> None:
    """Atomically write a checkpoint dict (adds format and version)."""
    ckpt = {"format": FORMAT, "version": VERSION, **ckpt}
    atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory means its best checkpoint (else its last); a file means itself."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise ImcapError(f"{path}: run directory holds no checkpoint ({BEST} or {LAST})")
    if not path.exists():
        raise ImcapError(f"{path}: checkpoint not found")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint without executing code; one-line ImcapError for truncated or foreign files."""
    path = resolve_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, not a torch file at all
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ImcapError(f"{path}: not a loadable imcap checkpoint (truncated or foreign file: {first[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ImcapError(f"{path}: not an imcap checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("version", 0) > VERSION:
        raise ImcapError(f"{path}: checkpoint version {ckpt['version']} is newer than this imcap understands")
    return ckpt


def open_run(run: Path, resume: bool) -> dict | None:
    """The last checkpoint of `run` when resuming (None for a fresh run); refuse to overwrite or resume nothing."""
    last = Path(run) / LAST
    if last.exists() and not resume:
        raise ImcapError(f"{run}: already holds a run; pass --resume to continue it or choose another --checkpoint-path")
    if not resume:
        return None
    if not last.exists():
        raise ImcapError(f"{last}: nothing to resume (no checkpoint yet)")
    return load_checkpoint(last)


def submodule_state(state: dict, prefix: str) -> dict:
    """The entries of a state dict under `prefix` (e.g. "encoder.backbone."), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
