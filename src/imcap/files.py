"""Writing files safely: atomic replace, one-line errors for a full or read-only disk, free-space checks.

Outputs are written with `atomic_write` (temporary file beside the target, fsync, rename): a crash
or a full disk at any instant leaves either the old file or the new one, never half of one.
Failures a user can cause (no space, quota, read-only file system, permissions) become one
`ImcapError` naming the file, with the temporary file removed. Writers that fill a file in pieces
use `check_free_space`, `preallocate` and `reporting_disk_errors` for the same messages.
"""
from __future__ import annotations

import base64
import errno
import io
import json
import os
import re
import signal
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imcap.errors import ImcapError

_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
_MESSAGES = {os.strerror(code).lower(): cause for code, cause in _CAUSES.items()}
_SPACE_CAUSES = ("no space left on device", "disk quota exceeded")
# Below this many free bytes a write that failed without an errno (torch's zip writer, numpy's
# short-write check) is taken to have run out of space.
_NEARLY_FULL = 1 << 20

_TEMPORARY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.tmp")  # what tempfile.mkstemp makes in atomic_write
KILL_ENV = "IMCAP_KILL_AT"
_kill_counts: dict[tuple[str, str], int] = {}


def megabytes(n: int) -> str:
    """`n` bytes as a short size: "12 KB", "3.2 MB", "45 MB", "24.7 GB"."""
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e7:
        return f"{n / 1e6:.0f} MB"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.0f} KB"


def free_bytes(path: str | Path) -> int:
    """Bytes an unprivileged user may still write on the file system holding `path` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize


def check_free_space(path: str | Path, needed_bytes: int, what: str | Path | None = None) -> None:
    """Raise a one-line ImcapError naming `what` (default `path`) when `path`'s file system has under `needed_bytes` free."""
    free = free_bytes(path)
    if free < needed_bytes:
        raise ImcapError(f"{what or path}: no space left on device (needs {megabytes(needed_bytes)}, {megabytes(free)} free)")


def disk_cause(exc: BaseException, full: bool) -> str | None:
    """Why a write failed, as "no space left on device" / "read-only file system" / ..., or None for other failures.

    Looks through the exception chain for an errno or its message (torch.save and numpy wrap or drop
    them); a failure with neither counts as no space when the file system was nearly `full` then.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _CAUSES:
            return _CAUSES[e.errno]
        text = str(e).lower()
        for message, cause in _MESSAGES.items():
            if message in text:
                return cause
        e = e.__cause__ or e.__context__
    return "no space left on device" if full and isinstance(exc, (OSError, RuntimeError)) else None


def disk_error(path: str | Path, cause: str, needed_bytes: int | None = None, written_bytes: int = 0) -> ImcapError:
    """The one-line error for a write to `path` that failed for `cause`, with the space needed and free for a full disk.

    Build it after the failed write's exception is gone: until then its frames may keep the
    temporary file open and its space taken.
    """
    if cause not in _SPACE_CAUSES:
        return ImcapError(f"{path}: {cause}")
    free = megabytes(free_bytes(Path(path).parent))
    if needed_bytes and needed_bytes > written_bytes:
        return ImcapError(f"{path}: {cause} (needs {megabytes(needed_bytes)}, {free} free)")
    if written_bytes:
        return ImcapError(f"{path}: {cause} (needs more than {megabytes(written_bytes)}, {free} free)")
    return ImcapError(f"{path}: {cause} ({free} free)")


def nearly_full(path: str | Path) -> bool:
    """Whether the file system holding `path` has almost no space left (under 1 MiB)."""
    return free_bytes(path) < _NEARLY_FULL


@contextmanager
def reporting_disk_errors(path: str | Path, needed_bytes: int | None = None) -> Iterator[None]:
    """Turn a disk-full/read-only/permission failure inside the block into a one-line ImcapError naming `path`."""
    cause = None
    try:
        yield
    except (OSError, RuntimeError) as exc:
        cause = disk_cause(exc, nearly_full(Path(path).parent))
        if cause is None:
            raise
    if cause is not None:
        raise disk_error(path, cause, needed_bytes)


def preallocate(fd: int, nbytes: int, path: str | Path) -> None:
    """Reserve `nbytes` for the open file `fd` so a full disk fails now, not in the middle of the write."""
    if nbytes <= 0 or not hasattr(os, "posix_fallocate"):
        return
    cause = None
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):  # those: cannot reserve here; carry on
            cause = disk_cause(exc, full=False)
            if cause is None:
                raise
    if cause is not None:
        raise disk_error(path, cause, nbytes)


def _kill_point(step: str, path: Path) -> None:
    """Test hook: with IMCAP_KILL_AT=STEP:NAME:N, SIGKILL this process the Nth time a write of NAME reaches STEP.

    Steps, in order: "opened" (empty temporary file exists), "written", "synced" (fsync done), "renamed".
    """
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    want_step, name, nth = spec.split(":")
    if step != want_step or path.name != name:
        return
    key = (step, name)
    _kill_counts[key] = _kill_counts.get(key, 0) + 1
    if _kill_counts[key] == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write(path: str | Path, write: Callable[[Path], None], needed_bytes: int | None = None) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    `needed_bytes`, when the size is known in advance, is checked against the free space first.
    A full disk, quota, read-only file system or missing permission raises a one-line ImcapError;
    the temporary file is removed and the previous `path` is left as it was.
    """
    path = Path(path)
    tmp: Path | None = None
    cause, written = None, 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if needed_bytes:
            check_free_space(path.parent, needed_bytes, path)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        _kill_point("opened", path)
        write(tmp)
        _kill_point("written", path)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        _kill_point("synced", path)
        os.replace(tmp, path)
        tmp = None
        _kill_point("renamed", path)
        fsync_dir(path.parent)
    except (OSError, RuntimeError) as exc:
        written = tmp.stat().st_size if tmp is not None and tmp.exists() else 0
        cause = disk_cause(exc, nearly_full(path.parent))
        if cause is None:
            raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    if cause is not None:  # outside the except block, so the failed writer's open file is released
        raise disk_error(path, cause, needed_bytes, written)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace `path` with `text` (UTF-8)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically replace `path` with `obj` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2))


def remove_stale_temporaries(folder: str | Path, names: Iterable[str] | None = None) -> list[Path]:
    """Delete the temporary files that killed `atomic_write`s of `names` (default: any file) left in `folder`; return them.

    Call it only where no other process writes into `folder` at the same time (e.g. at the start of a run).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    wanted = None if names is None else set(names)
    removed = []
    for tmp in folder.iterdir():
        m = _TEMPORARY.fullmatch(tmp.name)
        if m and (wanted is None or m.group(1) in wanted) and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def png_data_uri(picture: Any) -> str:
    """A PIL picture as a PNG data URI for self-contained HTML."""
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def thumbnail_data_uri(path: str | Path, max_side: int = 256) -> str:
    """An image file shrunk to fit `max_side` as a PNG data URI (empty string when it cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((max_side, max_side))
            return png_data_uri(im)
    except (OSError, ValueError):
        return ""


def file_data_uri(path: str | Path, mime: str = "image/png") -> str:
    """A file's bytes as a data URI of type `mime`."""
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode()
