"""Dataset-scale captioning: `imcap caption --out captions.jsonl`, batched, resumable and split across processes.

Output: one record per image, {"path": str, "captions": [str] * n, "scores": [float] * n} (scores: the
captions' log-probabilities), as JSON lines, or as a Parquet table (columns path, captions, scores) when
the output name ends in .parquet. Captions equal `Captioner.caption` on each image alone (the same
tensors, decoded in batches). An input that is a prepro folder with an image store (`imcap prepro
--image-store`) stands for all its images, named by their original paths and read from the store (the
resized copies training read, so their captions can differ slightly from those of the original files).

Resuming: images already in the output (or in a part file, below) are skipped. A JSON-lines output is
appended to and flushed after every batch; a killed run leaves complete lines and at most one torn
last line, which the next run cuts off before appending. Every image ends up in the output once.

Processes: with `nproc` N (local processes) or under torchrun (RANK, WORLD_SIZE), rank r captions
images r, r+N, r+2N, ... of the sorted list not yet done and appends them to `OUT.part-r-of-N` (JSON
lines). When every rank has finished, the parts (and any left by an earlier, interrupted run) are
merged with the output, in the order of the image list, into OUT (written atomically), and deleted.
Locally the launching process merges; under torchrun rank 0 merges after a barrier (gloo), so OUT and
its parts must be on a file system all nodes share.
"""
from __future__ import annotations

import glob
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from torch.utils.data import Dataset

from imcap.captioner import Captioner
from imcap.data.images import find_images, image_to_tensor, load_image
from imcap.data.loader import PreproData, ResumableSampler, make_loader, usable_cores
from imcap.data.store import ImageStore
from imcap.decoding import DecodeOptions
from imcap.devices import pick_device
from imcap.errors import ImcapError
from imcap.files import atomic_write
from imcap.progress import progress_bar

log = logging.getLogger(__name__)

PARQUET_ROWS = 65_536  # rows per Parquet row group
BARRIER_TIMEOUT = timedelta(days=7)  # ranks that finish early wait this long for the others under torchrun


@dataclass
class CaptionRunResult:
    """What a dataset-scale run did."""

    out: Path
    captioned: int  # images captioned by this run
    already: int  # images found in the output (or its parts) before this run
    skipped: int  # unreadable images (not written; retried by a rerun)
    seconds: float

    @property
    def images_per_s(self) -> float:
        """Images captioned per second of this run."""
        return self.captioned / self.seconds if self.seconds > 0 else 0.0


def caption_to_file(model: str | Path | Captioner, inputs: list[str], out: str | Path, decode: DecodeOptions, *, batch_size: int = 32,
                    num_workers: int = -1, nproc: int = 1, device: str = "auto", condition: str | None = None, progress: bool = True) -> CaptionRunResult:
    """Caption every image of `inputs` (files, folders, globs, prepro folders with an image store) into `out`
    (.jsonl or .parquet); return the run's figures.

    `model`: run directory, checkpoint or export folder (a loaded Captioner only with nproc 1);
    `num_workers`: DataLoader workers per process (-1: automatic); `nproc`: local processes.
    Under torchrun (WORLD_SIZE > 1 in the environment) this process is one rank and `nproc` must be 1.
    """
    out = Path(out)
    _check_output(out)
    files, stored = _resolve_inputs(list(inputs))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        if nproc > 1:
            raise ImcapError("--nproc: give either --nproc or torchrun's processes, not both")
        return _torchrun_rank(model, files, stored, out, decode, batch_size, num_workers, device, condition, progress)
    if nproc > 1 and isinstance(model, Captioner):
        raise ImcapError("--nproc: each process loads the model itself; pass its path, not a loaded Captioner")
    start = time.perf_counter()
    parts = [_part(out, r, nproc) for r in range(nproc)] if nproc > 1 or out.suffix == ".parquet" else [out]
    for p in parts:
        _read_paths(p, repair=True)  # cut a torn last line before anything is appended
    done = _done_paths(out, exclude=set(parts))
    for p in parts:
        if p != out:
            done.update(_read_paths(p))
    todo = [f for f in files if f not in done]
    already = len(files) - len(todo)
    if nproc == 1 and todo:
        captioner = model if isinstance(model, Captioner) else Captioner.load(model, device)
        bar = progress_bar(total=len(todo), desc="caption", unit="img", disable=not progress)
        written, skipped = caption_files(captioner, todo, parts[0], decode, batch_size, num_workers, condition, bar.update, stored)
        bar.close()
    elif todo:
        written = _run_local_ranks(str(model), todo, stored, parts, decode, batch_size, num_workers, device, condition, progress)
        skipped = len(todo) - written
    else:
        written = skipped = 0
    _merge(out, files)
    return CaptionRunResult(out, written, already, skipped, time.perf_counter() - start)


def caption_files(captioner: Captioner, files: list[str], part: Path, decode: DecodeOptions, batch_size: int, num_workers: int,
                  condition: str | None = None, advance=lambda n: None, stored: dict[str, tuple[ImageStore, str]] | None = None) -> tuple[int, int]:
    """Caption `files` in batches (images decoded by DataLoader workers) and append their records to `part`,
    flushed after each batch; call `advance(k)` after each batch. `stored`: path -> (image store, its key)
    for images read from a store. Returns (written, skipped)."""
    if not files:
        return 0, 0
    dataset = _ImageFiles(files, captioner.image_size, stored or {})
    loader = make_loader(dataset, batch_size, ResumableSampler(len(files), 0, shuffle=False), num_workers, collate_fn=_collate)
    written = skipped = 0
    with open(part, "a", encoding="utf-8") as fp:
        for paths, images, errors in loader:
            for path, error in errors:
                log.warning("skipped %s", error)
            skipped += len(errors)
            if paths:
                results = captioner.caption_tensors(images, decode, condition=condition)
                fp.write("".join(_record(p, caps) for p, caps in zip(paths, results)))
                fp.flush()  # a kill after this loses nothing of the batch
                written += len(paths)
            advance(len(paths) + len(errors))
        os.fsync(fp.fileno())
    return written, skipped


def _record(path: str, caps: list[tuple]) -> str:
    return json.dumps({"path": path, "captions": [c[0] for c in caps], "scores": [c[1] for c in caps]}) + "\n"


class _ImageFiles(Dataset):
    """Items are (path, image (3, S, S) or None, error): the tensor `Captioner.to_tensor` makes from the file,
    or, for a path in `stored`, from its image in the store (as training reads it)."""

    def __init__(self, files: list[str], size: int, stored: dict[str, tuple[ImageStore, str]]) -> None:
        self.files, self.size, self.stored = files, size, stored

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | None, str]:
        path = self.files[i]
        try:
            if path in self.stored:
                store, key = self.stored[path]
                return path, image_to_tensor(store.load(key, min_side=self.size), self.size), ""
            return path, image_to_tensor(load_image(path), self.size), ""
        except ImcapError as exc:
            return path, None, str(exc)


def _collate(items: list[tuple]) -> tuple[list[str], torch.Tensor | None, list[tuple[str, str]]]:
    """(paths of the readable images, their batch (B, 3, S, S), [(path, error)] of the others)."""
    good = [(p, t) for p, t, _ in items if t is not None]
    images = torch.stack([t for _, t in good]) if good else None  # (B, 3, S, S)
    return [p for p, _ in good], images, [(p, e) for p, t, e in items if t is None]


# ----------------------------------------------------------------------------------- files and parts
def _resolve_inputs(inputs: list[str]) -> tuple[list[str], dict[str, tuple[ImageStore, str]]]:
    """The sorted image paths of `inputs`, and how to read those that come from an image store.

    A prepro folder with an image store (`imcap prepro --image-store`) stands for all its images, named
    by their original paths and read from the store; other inputs are files, folders or globs.
    """
    plain, stored = [], {}
    for raw in inputs:
        store = ImageStore.find(raw) if Path(raw).is_dir() else None
        if store is None:
            plain.append(raw)
            continue
        data = PreproData.load(raw)
        stored.update({str(data.image_root / im["file_path"]): (data.store, im["file_path"]) for im in data.images})
    files = {str(p) for p in find_images(plain)} if plain else set()
    return sorted(files | set(stored)), stored


def _check_output(out: Path) -> None:
    if out.is_dir():
        raise ImcapError(f"--out {out}: is a folder; give a .jsonl or .parquet file")
    if out.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ModuleNotFoundError:
            raise ImcapError(f"--out {out}: Parquet output needs pyarrow (pip install 'imcap[scale]')") from None
    if not out.parent.is_dir():
        raise ImcapError(f"--out {out}: folder {out.parent} does not exist")


def _part(out: Path, rank: int, world: int) -> Path:
    return out.with_name(f"{out.name}.part-{rank}-of-{world}")


def _all_parts(out: Path) -> list[Path]:
    return sorted(out.parent.glob(glob.escape(out.name) + ".part-*-of-*"))


def _done_paths(out: Path, exclude: set[Path]) -> set[str]:
    """Paths in the output and in every part file except `exclude`."""
    done = set(_read_paths(out)) if out.suffix != ".parquet" else _parquet_paths(out)
    for p in _all_parts(out):
        if p not in exclude:
            done.update(_read_paths(p))
    return done


def _read_paths(path: Path, repair: bool = False) -> list[str]:
    """The "path" of every complete line of a JSON-lines file (none if it does not exist).

    A last line without its newline is a torn write: ignored, and with `repair` cut off the file.
    """
    return [p for p, _ in _read_lines(path, repair)]


def _read_lines(path: Path, repair: bool = False) -> list[tuple[str, str]]:
    """(path, line) for each complete line of a JSON-lines output or part file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data) and repair:
        os.truncate(path, end)
    result = []
    for n, line in enumerate(data[:end].decode("utf-8", errors="replace").splitlines(), 1):
        try:
            result.append((json.loads(line)["path"], line))
        except (ValueError, KeyError, TypeError):
            raise ImcapError(f"{path}: line {n} is not a caption record; move the file away or fix it") from None
    return result


def _parquet_paths(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    import pyarrow.parquet as pq

    try:
        return set(pq.read_table(path, columns=["path"]).column("path").to_pylist())
    except (OSError, KeyError, ValueError) as exc:
        raise ImcapError(f"{path}: cannot read as a caption table ({exc})") from None


def _merge(out: Path, order: list[str]) -> None:
    """Merge the output and all its parts into `out` (each image once, in `order`, then others); delete the parts."""
    parts = _all_parts(out)
    if not parts:
        return
    if out.suffix == ".parquet":
        import pyarrow.parquet as pq

        old = pq.read_table(out).to_pylist() if out.is_file() else []
        lines = [(r["path"], json.dumps(r)) for r in old]
    else:
        lines = _read_lines(out)
    for p in parts:
        lines += _read_lines(p)
    position = {p: i for i, p in enumerate(order)}
    unique: dict[str, str] = {}
    for path, line in lines:
        unique.setdefault(path, line)  # an image captioned twice (inputs changed between runs): the first wins
    ranked = sorted(unique, key=lambda p: position.get(p, len(order)))
    if out.suffix == ".parquet":
        atomic_write(out, lambda tmp: _write_parquet(tmp, (unique[p] for p in ranked)))
    else:
        atomic_write(out, lambda tmp: tmp.write_text("".join(unique[p] + "\n" for p in ranked), encoding="utf-8"))
    for p in parts:
        p.unlink()


def _write_parquet(tmp: Path, lines: Iterator[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("path", pa.string()), ("captions", pa.list_(pa.string())), ("scores", pa.list_(pa.float64()))])
    with pq.ParquetWriter(tmp, schema) as writer:
        rows: list[dict] = []
        for line in lines:
            rows.append(json.loads(line))
            if len(rows) == PARQUET_ROWS:
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                rows = []
        writer.write_table(pa.Table.from_pylist(rows, schema=schema))


# ----------------------------------------------------------------------------------- many processes
def _run_local_ranks(model: str, todo: list[str], stored: dict[str, tuple[ImageStore, str]], parts: list[Path], decode: DecodeOptions,
                     batch_size: int, num_workers: int, device: str, condition: str | None, progress: bool) -> int:
    """Caption `todo` in len(parts) spawned processes (rank r: todo[r::N] into parts[r]); return the records they wrote."""
    nproc = len(parts)
    context = multiprocessing.get_context("spawn")
    sizes = [p.stat().st_size if p.exists() else 0 for p in parts]
    shares = [todo[r::nproc] for r in range(nproc)]
    procs = [context.Process(target=_local_rank_main, args=(model, share, {f: stored[f] for f in share if f in stored}, str(parts[r]), decode,
                                                            batch_size, num_workers, device, condition, r, nproc)) for r, share in enumerate(shares)]
    for proc in procs:
        proc.start()
    bar = progress_bar(total=len(todo), desc=f"caption ({nproc} processes)", unit="img", disable=not progress)
    written = 0
    try:
        while any(proc.is_alive() for proc in procs):
            time.sleep(0.5)
            written += _new_lines(parts, sizes, bar)
        written += _new_lines(parts, sizes, bar)
    except BaseException:
        for proc in procs:
            proc.terminate()
        raise
    finally:
        bar.close()
        for proc in procs:
            proc.join()
    failed = [(r, proc.exitcode) for r, proc in enumerate(procs) if proc.exitcode != 0]
    if failed:
        rank, code = failed[0]
        raise ImcapError(f"--nproc {nproc}: process {rank} exited with code {code} (see its message above); a rerun resumes")
    return written


def _new_lines(parts: list[Path], sizes: list[int], bar) -> int:
    """Complete lines appended to the parts since `sizes` (updated); advance `bar` by them."""
    new = 0
    for r, p in enumerate(parts):
        if not p.exists():
            continue
        with open(p, "rb") as fp:
            fp.seek(sizes[r])
            chunk = fp.read()
        end = chunk.rfind(b"\n") + 1
        sizes[r] += end
        new += chunk[:end].count(b"\n")
    bar.update(new)
    return new


def _local_rank_main(model: str, files: list[str], stored: dict[str, tuple[ImageStore, str]], part: str, decode: DecodeOptions, batch_size: int,
                     num_workers: int, device: str, condition: str | None, rank: int, nproc: int) -> None:
    """Body of one spawned process of `--nproc`: its share of the threads and GPUs, then `caption_files`."""
    os.environ["LOCAL_WORLD_SIZE"] = str(nproc)  # automatic DataLoader workers share the cores
    torch.set_num_threads(max(1, usable_cores() // nproc))
    try:
        captioner = Captioner.load(model, _rank_device(device, rank))
        caption_files(captioner, files, Path(part), decode, batch_size, num_workers, condition, stored=stored)
    except ImcapError as exc:
        sys.stderr.write(f"imcap: error: {exc}\n")
        sys.exit(2)


def _torchrun_rank(model: str | Path | Captioner, files: list[str], stored: dict[str, tuple[ImageStore, str]], out: Path, decode: DecodeOptions, batch_size: int, num_workers: int,
                   device: str, condition: str | None, progress: bool) -> CaptionRunResult:
    """One torchrun rank: caption its share into its part; rank 0 merges after every rank has finished."""
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
    start = time.perf_counter()
    part = _part(out, rank, world)
    _read_paths(part, repair=True)
    done = _done_paths(out, exclude={_part(out, r, world) for r in range(world)})
    done.update(_read_paths(part))
    mine = files[rank::world]
    todo = [f for f in mine if f not in done]
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    captioner = model if isinstance(model, Captioner) else Captioner.load(model, _rank_device(device, local_rank))
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    group = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT) if dist.get_backend() != "gloo" else None
    try:
        bar = progress_bar(total=len(todo), desc=f"caption (rank {rank} of {world})", unit="img", disable=not progress or rank != 0)
        written, skipped = caption_files(captioner, todo, part, decode, batch_size, num_workers, condition, bar.update, stored)
        bar.close()
        counts = torch.tensor([written, skipped, len(mine) - len(todo)], dtype=torch.int64)
        dist.all_reduce(counts, group=group)  # also the barrier: every part is complete after this
        if rank == 0:
            _merge(out, files)
    finally:
        if own_group:
            dist.destroy_process_group()
    written, skipped, already = counts.tolist()
    return CaptionRunResult(out, written, already, skipped, time.perf_counter() - start)


def _rank_device(device: str, local_rank: int) -> str:
    """`cuda` or `auto` on a machine with GPUs: this process's GPU (local rank modulo the GPU count)."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    pick_device(device)  # raises the one-line error for a device this machine lacks
    return device
