"""Checkpoints: atomic saves (last.pt before best.pt), code-free loading (`weights_only=True`), and run
directories (a damaged best.pt or last.pt falls back to the other with a warning; resume cleans up).

A checkpoint is one plain dict (nanoGPT style):
    format, version, model {encoder, decoder}, model_args, vocab, optimizer, cnn_optimizer,
    iteration, epoch, position, rng, options, history, best_score, best_iteration
"""
from __future__ import annotations

import filecmp
import logging
import random
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imcap.errors import ImcapError
from imcap.files import atomic_write, remove_stale_temporaries

FORMAT = "imcap-checkpoint"
VERSION = 1
LAST, BEST = "last.pt", "best.pt"

log = logging.getLogger(__name__)
_warned: set[tuple[str, int, int]] = set()


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
    """Atomically write a checkpoint dict (adds format and version); a full disk is a one-line ImcapError."""
    ckpt = {"format": FORMAT, "version": VERSION, **ckpt}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a Python file object keeps the errno that torch's own writer drops
            torch.save(ckpt, f)

    atomic_write(path, write, needed_bytes=_tensor_bytes(ckpt))


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested dict/list: a lower bound on the size of the saved file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_run_checkpoints(run: str | Path, ckpt: dict, best: bool) -> None:
    """Write RUN/last.pt, then RUN/best.pt when `best`: a kill at any instant leaves a resumable last.pt.

    (Writing best.pt first would leave a run with best.pt and no last.pt after a kill between the two.)
    """
    run = Path(run)
    save_checkpoint(run / LAST, ckpt)
    if best:
        save_checkpoint(run / BEST, ckpt)


def resolve_checkpoint(path: str | Path) -> Path:
    """A file means itself; a run directory means its best.pt, or its last.pt when best.pt is missing or damaged.

    A damaged (truncated, overwritten) checkpoint is passed over with a one-line warning.
    """
    path = Path(path)
    if not path.is_dir():
        if not path.exists():
            raise ImcapError(f"{path}: checkpoint not found")
        return path
    problems = []
    for file in _candidates(path, (BEST, LAST)):
        problem = _damage(file)
        if problem is None:
            _warn_skipped(problems, file)
            return file
        problems.append((file, problem))
    raise _nothing_loadable(path, problems)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint without executing code; one-line ImcapError for truncated or foreign files.

    For a run directory: its best.pt, or (with a one-line warning) its last.pt when best.pt cannot be loaded.
    """
    path = Path(path)
    if not path.is_dir():
        return _load(resolve_checkpoint(path), map_location)
    return _load_first(path, (BEST, LAST), map_location)[1]


def _candidates(run: Path, names: tuple[str, ...]) -> list[Path]:
    return [run / name for name in names if (run / name).is_file()]


def _load_first(run: Path, names: tuple[str, ...], map_location: str | torch.device = "cpu") -> tuple[Path, dict]:
    """The first of RUN/names that loads, and its checkpoint; warns about each one passed over."""
    problems = []
    for file in _candidates(run, names):
        try:
            ckpt = _load(file, map_location)
        except ImcapError as exc:
            problems.append((file, str(exc).removeprefix(f"{file}: ")))
            continue
        _warn_skipped(problems, file)
        return file, ckpt
    raise _nothing_loadable(run, problems, names)


def _warn_skipped(problems: list[tuple[Path, str]], used: Path) -> None:
    """One warning per damaged file and process (a command may resolve a run directory more than once)."""
    for file, problem in problems:
        stat = file.stat()
        key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _warned:
            _warned.add(key)
            log.warning("warning: %s: %s; using %s instead", file, problem, used.name)


def _nothing_loadable(run: Path, problems: list[tuple[Path, str]], names: tuple[str, ...] = (BEST, LAST)) -> ImcapError:
    if not problems:
        return ImcapError(f"{run}: run directory holds no checkpoint ({' or '.join(names)})")
    return ImcapError(f"{run}: no loadable checkpoint (" + "; ".join(f"{f.name}: {p}" for f, p in problems) + ")")


def _damage(file: Path) -> str | None:
    """What makes `file` no whole checkpoint (not a zip archive, truncated, a corrupt record), or None; reads little."""
    try:
        with zipfile.ZipFile(file) as z:
            pickles = [n for n in z.namelist() if n.endswith("data.pkl")]
            if not pickles:
                return "not a loadable imcap checkpoint (no data.pkl record)"
            z.read(pickles[0])  # checks its CRC
            size = file.stat().st_size
            if any(i.header_offset + i.compress_size > size for i in z.infolist()):
                return "not a loadable imcap checkpoint (truncated)"
    except zipfile.BadZipFile as exc:
        return f"not a loadable imcap checkpoint (truncated or overwritten: {exc})"
    except (OSError, EOFError, ValueError, RuntimeError) as exc:
        return f"not a loadable imcap checkpoint ({exc.__class__.__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})"
    return None


def _load(path: Path, map_location: str | torch.device = "cpu") -> dict:
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001  (truncated zip, pickle with code, not a torch file at all)
        damage = _damage(path) if _starts_like_zip(path) else None
        if damage:
            raise ImcapError(f"{path}: {damage}") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ImcapError(f"{path}: not a loadable imcap checkpoint (truncated or foreign file: {first[:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ImcapError(f"{path}: not an imcap checkpoint (no '{FORMAT}' marker)")
    if ckpt.get("version", 0) > VERSION:
        raise ImcapError(f"{path}: checkpoint version {ckpt['version']} is newer than this imcap understands")
    return ckpt


def _starts_like_zip(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def open_run(run: str | Path, resume: bool) -> dict | None:
    """The checkpoint to resume `run` from (None for a fresh run); refuse to overwrite a run or to resume nothing.

    Removes temporary files that killed writes left in the run directory. Resuming reads last.pt, or
    best.pt (with a one-line warning) when last.pt is missing or damaged; when the resumed save was also
    the best one, best.pt is rewritten if a kill kept it from being written. A run directory without a
    checkpoint (a run killed before its first save) resumes from the start, with a warning.
    """
    run = Path(run)
    remove_stale_temporaries(run)
    saved = _candidates(run, (LAST, BEST))
    if saved and not resume:
        raise ImcapError(f"{run}: already holds a run; pass --resume to continue it or choose another --checkpoint-path")
    if not resume:
        return None
    if not saved and run.is_dir():
        log.warning("warning: %s: the run stopped before its first checkpoint; starting it from iteration 0", run)
        return None
    if not saved:
        raise ImcapError(f"{run / LAST}: nothing to resume (no checkpoint yet)")
    file, ckpt = _load_first(run, (LAST, BEST))
    if file.name == LAST and ckpt.get("best_iteration") == ckpt.get("iteration") and not _same_bytes(file, run / BEST):
        atomic_write(run / BEST, lambda tmp: shutil.copyfile(file, tmp))
    return ckpt


def _same_bytes(a: Path, b: Path) -> bool:
    return b.is_file() and a.stat().st_size == b.stat().st_size and filecmp.cmp(a, b, shallow=False)


def submodule_state(state: dict, prefix: str) -> dict:
    """The entries of a state dict under `prefix` (e.g. "encoder.backbone."), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
