"""The prepared image store: every image once, resized and re-encoded as JPEG, in a few large tar shards.

`imcap prepro --image-store SIZE` writes DATA/image_store/ (DATA: the prepro output folder):

  store.json         {"format": "imcap-image-store", "version": 1, "size": SIZE, "quality": 90,
                      "image_root": the folder the images were read from}
  shard-000000.tar   plain tar (WebDataset layout): members "<n>.jpg", n a 9-digit number unique in the
                     store; each member is one image, upright (EXIF applied), RGB, shorter side SIZE
                     (smaller images keep their size), JPEG quality 90
  shard-000000.json  the shard's index: {"shard": "shard-000000.tar", "bytes": tar size,
                     "images": [[file_path, data offset, data length, width, height], ...],
                     "bad": [[file_path, reason], ...]}   (file_path: as in images.json)

Random access reads `length` bytes at `offset` of the shard (no tar parsing). A shard is finished when
its .json exists and the tar has the size it records: the tar is written under a temporary name,
fsynced and renamed, and only then is its index written the same way. A killed build leaves at most a
temporary file or a tar without an index; the next build deletes those and carries on with the images
no finished shard holds. Images are decoded, resized and encoded by a pool of processes (one per core);
the parent process writes the shards. Nothing here imports torch (prepro stays torch-free).
"""
from __future__ import annotations

import io
import logging
import multiprocessing
import os
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from imcap.data.images import load_image
from imcap.errors import ImcapError
from imcap.files import (
    atomic_write,
    atomic_write_json,
    megabytes,
    reporting_disk_errors,
)
from imcap.progress import progress_bar

log = logging.getLogger(__name__)

STORE_DIR = "image_store"
FORMAT, VERSION = "imcap-image-store", 1
QUALITY = 90
SHARD_BYTES = 256 * 1024 * 1024  # WebDataset's advice: shards of a few hundred MB
_BLOCK = tarfile.BLOCKSIZE  # tar headers are one 512-byte block; member data is padded to whole blocks


@dataclass
class StoreStats:
    """What a build did: images written now and before, unreadable images, shards, bytes on disk, time."""

    path: Path
    written: int
    reused: int
    bad: int
    shards: int
    bytes: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        """Images written per second of this build."""
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: images, size on disk and speed."""
        done = f"{self.written} images written, {self.reused} kept from an earlier build" if self.reused else f"{self.written} images"
        bad = f", {self.bad} unreadable" if self.bad else ""
        speed = f"; {self.images_per_s:.0f} images/s" if self.written else " (complete already)"
        return f"image store {self.path}: {done}{bad}; {self.shards} shard(s), {megabytes(self.bytes)} on disk{speed}"


# ---------------------------------------------------------------------------------------------- build
def build_image_store(out: str | Path, image_root: str | Path, file_paths: list[str], size: int, *, quality: int = QUALITY,
                      workers: int = 0, shard_bytes: int = SHARD_BYTES, progress: bool = True) -> StoreStats:
    """Write (or finish) the store of `file_paths` (relative to `image_root`) in folder `out`; return its figures.

    `workers`: decoding processes (0: one per core; 1: in this process). Images already in finished
    shards are kept; a store built with another size, quality or image root is deleted first.
    """
    if size < 1:
        raise ImcapError(f"--image-store must be at least 1 (pixels of the shorter side), got {size}")
    out, root = Path(out), Path(image_root)
    header = {"format": FORMAT, "version": VERSION, "size": size, "quality": quality, "image_root": str(root.resolve())}
    with reporting_disk_errors(out):
        out.mkdir(parents=True, exist_ok=True)
        shards = _prepare_folder(out, header)
    done = {e[0] for s in shards for e in s["images"]} | {b[0] for s in shards for b in s["bad"]}
    wanted = list(dict.fromkeys(file_paths))
    todo = [p for p in wanted if p not in done]
    start = time.perf_counter()
    next_shard = 1 + max((_shard_number(s["shard"]) for s in shards), default=-1)
    writer = _ShardWriter(out, next_shard, sum(len(s["images"]) for s in shards), shard_bytes)
    bar = progress_bar(total=len(todo), desc="image store", unit="img", disable=not progress)
    workers = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    for path, data, width, height, error in _prepared(root, todo, size, quality, workers):
        writer.add(path, data, width, height, error)
        bar.update(1)
    writer.flush()
    bar.close()
    seconds = time.perf_counter() - start
    if writer.bad:
        log.warning("%d image(s) could not be read and are not in the store (first: %s)", len(writer.bad), writer.bad[0][1])
    shards = _finished_shards(out)
    stats = StoreStats(out, len(todo) - len(writer.bad), len(wanted) - len(todo), sum(len(s["bad"]) for s in shards),
                       len(shards), _disk_bytes(out), seconds)
    log.info("%s", stats.summary())
    return stats


def _prepare_folder(out: Path, header: dict) -> list[dict]:
    """Keep a compatible store's finished shards and delete everything else (all of an incompatible store)."""
    meta = out / "store.json"
    old = _read_json(meta) if meta.is_file() else None
    finished = _finished_shards(out) if old == header else []
    if old is not None and old != header:
        log.info("%s: built with other settings (%s); building it again", out, _difference(old, header))
    keep = {s["shard"] for s in finished} | {s["shard"].replace(".tar", ".json") for s in finished}
    for f in out.iterdir():
        if f.name.startswith(("shard-", ".shard-", ".store.json.")) and f.name not in keep:
            f.unlink()  # a killed build's temporary file, or a tar whose index was never written
    if old != header:
        atomic_write_json(meta, header)
    return finished


def _difference(old: dict, new: dict) -> str:
    keys = [k for k in new if old.get(k) != new[k]]
    return ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in keys) or "unreadable store.json"


def _finished_shards(out: Path) -> list[dict]:
    """Indexes of the finished shards, in order: a readable .json whose tar exists with the recorded size."""
    shards = []
    for index in sorted(out.glob("shard-*.json")):
        meta = _read_json(index)
        tar = out / str(meta.get("shard", "")) if meta else None
        if tar is not None and tar.is_file() and tar.stat().st_size == meta.get("bytes"):
            shards.append(meta)
    return shards


def _shard_number(name: str) -> int:
    return int(name.removeprefix("shard-").removesuffix(".tar"))


def _prepared(root: Path, todo: list[str], size: int, quality: int, workers: int) -> Iterator[tuple]:
    """(file_path, JPEG bytes or None, width, height, error) for each of `todo`, in order."""
    jobs = ((root, p, size, quality) for p in todo)
    if workers <= 1 or len(todo) < 2:
        yield from map(_prepare_one, jobs)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with context.Pool(workers) as pool:
        yield from pool.imap(_prepare_one, jobs, chunksize=8)


def _prepare_one(job: tuple[Path, str, int, int]) -> tuple[str, bytes | None, int, int, str]:
    root, path, size, quality = job
    try:
        img = resize_shorter(load_image(root / path), size)
    except ImcapError as exc:
        return path, None, 0, 0, str(exc)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return path, buf.getvalue(), img.width, img.height, ""


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Return `img` scaled (bilinear, antialiased) so that its shorter side is `size`; smaller images unchanged."""
    w, h = img.size
    if min(w, h) <= size:
        return img
    new = (size, max(1, round(h * size / w))) if w <= h else (max(1, round(w * size / h)), size)
    return img.resize(new, Image.Resampling.BILINEAR)


class _ShardWriter:
    """Collects the current shard's images; writes the shard, then its index, once it holds `shard_bytes`."""

    def __init__(self, out: Path, next_shard: int, next_member: int, shard_bytes: int) -> None:
        self.out, self.shard, self.member, self.shard_bytes = out, next_shard, next_member, shard_bytes
        self.items: list[tuple[str, bytes, int, int]] = []
        self.size = 0
        self.shard_bad: list[list[str]] = []
        self.bad: list[list[str]] = []  # of the whole build

    def add(self, path: str, data: bytes | None, width: int, height: int, error: str) -> None:
        if data is None:
            self.bad.append([path, error])
            self.shard_bad.append([path, error])
            return
        self.items.append((path, data, width, height))
        self.size += _BLOCK + _padded(len(data))
        if self.size >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the shard (the tar, then its index; each atomically) unless it is empty."""
        if not self.items and not self.shard_bad:
            return
        name = f"shard-{self.shard:06d}.tar"
        images: list[list] = []

        def write(tmp: Path) -> None:
            images.clear()
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                for n, (path, data, width, height) in enumerate(self.items, self.member):
                    info = tarfile.TarInfo(f"{n:09d}.jpg")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
                    images.append([path, tar.offset - _padded(len(data)), len(data), width, height])  # data follows its header

        atomic_write(self.out / name, write)
        index = {"shard": name, "bytes": (self.out / name).stat().st_size, "images": images, "bad": self.shard_bad}
        atomic_write_json(self.out / name.replace(".tar", ".json"), index)
        self.member += len(self.items)
        self.shard += 1
        self.items, self.size, self.shard_bad = [], 0, []


def _padded(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


def _read_json(path: Path) -> dict | None:
    import json

    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _disk_bytes(out: Path) -> int:
    return sum(f.stat().st_size for f in out.iterdir() if f.is_file())


# ----------------------------------------------------------------------------------------------- read
class ImageStore:
    """A built store, read by file path: `load(file_path)` returns the stored image (one pread, one decode)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta = _read_json(self.path / "store.json")
        if meta is None or meta.get("format") != FORMAT:
            raise ImcapError(f"{self.path / 'store.json'}: missing or not an imcap image store")
        if meta.get("version") != VERSION:
            raise ImcapError(f"{self.path / 'store.json'}: image store version {meta.get('version')} (this imcap reads {VERSION}); "
                             "build it again with `imcap prepro --image-store SIZE`")
        self.size: int = int(meta["size"])
        shards = _finished_shards(self.path)
        self.shard_names = [s["shard"] for s in shards]
        entries = [(k, e) for k, s in enumerate(shards) for e in s["images"]]
        self.row = {e[0]: r for r, (_, e) in enumerate(entries)}  # file_path -> row
        self.shard_of = np.array([k for k, _ in entries], dtype=np.int32)  # (N,)
        self.offset = np.array([e[1] for _, e in entries], dtype=np.int64)  # (N,)
        self.length = np.array([e[2] for _, e in entries], dtype=np.int64)  # (N,)
        self.bad = {b[0]: b[1] for s in shards for b in s["bad"]}
        self._fds: dict[int, int] = {}

    @classmethod
    def find(cls, data_dir: str | Path) -> ImageStore | None:
        """The store of a prepro folder, or None when it has none."""
        path = Path(data_dir) / STORE_DIR
        return cls(path) if (path / "store.json").is_file() else None

    def __len__(self) -> int:
        return len(self.row)

    def missing(self, file_paths: list[str]) -> list[str]:
        """The paths among `file_paths` that the store neither holds nor recorded as unreadable."""
        return [p for p in file_paths if p not in self.row and p not in self.bad]

    def read_bytes(self, file_path: str) -> bytes:
        """The stored JPEG bytes of `file_path`."""
        r = self.row.get(file_path)
        if r is None:
            if file_path in self.bad:
                raise ImcapError(self.bad[file_path])
            raise ImcapError(f"{file_path}: not in the image store {self.path}; run `imcap prepro --image-store {self.size}` again")
        shard = int(self.shard_of[r])
        fd = self._fds.get(shard)
        if fd is None:
            try:
                fd = self._fds[shard] = os.open(self.path / self.shard_names[shard], os.O_RDONLY)
            except OSError as exc:
                raise ImcapError(f"{self.path / self.shard_names[shard]}: cannot read ({exc.strerror})") from None
        data = os.pread(fd, int(self.length[r]), int(self.offset[r]))  # no shared file position: safe in forked workers
        if len(data) != self.length[r]:
            raise ImcapError(f"{self.path / self.shard_names[shard]}: shorter than its index says (truncated?)")
        return data

    def load(self, file_path: str, min_side: int = 0) -> Image.Image:
        """The stored image of `file_path` as RGB. With `min_side`, JPEG-decoded at the smallest scale
        (1/2, 1/4 or 1/8) that keeps both sides >= `min_side`: much faster when the model reads small images."""
        try:
            img = Image.open(io.BytesIO(self.read_bytes(file_path)))
            if min_side:
                img.draft("RGB", (min_side, min_side))
            return img.convert("RGB")
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImcapError(f"{file_path}: corrupt entry in the image store {self.path} ({exc})") from None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}}  # file descriptors do not travel to spawned workers

    def __del__(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            try:
                os.close(fd)
            except OSError:
                pass
