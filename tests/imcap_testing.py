"""Helpers shared by tests (a uniquely named module: several conftest.py files exist)."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def tiny_train_options(data: Path, run: Path, **kw):
    """TrainOptions for a model small enough to train a few iterations in about a second."""
    from imcap.train import TrainOptions

    base = dict(
        data=str(data), checkpoint_path=str(run), cnn="small", cnn_width=4, input_encoding_size=16, rnn_size=16,
        batch_size=4, seq_per_img=2, max_iters=6, save_checkpoint_every=3, val_images_use=4, progress=False,
        learning_rate=1e-3, seed=5,
    )
    base.update(kw)
    return TrainOptions(**base)


@contextmanager
def small_filesystem(folder: Path, size_mb: int = 3) -> Iterator[str]:
    """Make `folder` a file system of `size_mb` MB for the block; yield "tmpfs" or "simulated".

    As root a real tmpfs is mounted there (and unmounted after). Elsewhere the space is simulated in
    this process: statvfs reports what is left, and fsync / posix_fallocate of a file under `folder`
    fail with ENOSPC once the files there exceed `size_mb` (the writes themselves succeed, as they may
    on a real disk with delayed allocation).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and shutil.which("mount") and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(folder)], check=False, capture_output=True).returncode == 0:
        try:
            yield "tmpfs"
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)
        return
    with _simulated_filesystem(folder, size_mb << 20):
        yield "simulated"


@contextmanager
def _simulated_filesystem(folder: Path, size: int) -> Iterator[None]:
    root = str(folder.resolve())
    real_fsync, real_statvfs, real_fallocate = os.fsync, os.statvfs, getattr(os, "posix_fallocate", None)

    def inside(path: str) -> bool:
        return os.path.abspath(path) == root or os.path.abspath(path).startswith(root + os.sep)

    def used() -> int:
        return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())

    def fd_path(fd: int) -> str:
        return os.readlink(f"/proc/self/fd/{fd}")

    def fsync(fd: int) -> None:
        if inside(fd_path(fd)) and used() > size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    def fallocate(fd: int, offset: int, length: int) -> None:
        path = fd_path(fd)
        if inside(path) and used() - os.path.getsize(path) + offset + length > size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fallocate(fd, offset, length)

    def statvfs(path):
        st = real_statvfs(path)
        if not inside(os.fspath(path)):
            return st
        free = max(0, size - used()) // st.f_frsize
        return os.statvfs_result((st.f_bsize, st.f_frsize, size // st.f_frsize, free, free, *tuple(st)[5:]))

    os.fsync, os.statvfs = fsync, statvfs
    if real_fallocate is not None:
        os.posix_fallocate = fallocate
    try:
        yield
    finally:
        os.fsync, os.statvfs = real_fsync, real_statvfs
        if real_fallocate is not None:
            os.posix_fallocate = real_fallocate
