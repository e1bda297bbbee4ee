"""`imcap prepro`: caption file -> vocab.json + images.json + labels.npy (images are never decoded).

Output folder:
  vocab.json   `Vocab.save`; built from training captions only (words seen <= threshold times -> <UNK>).
  images.json  {"format": "imcap-prepro", "version": 1, "source", "source_format", "image_root",
                "max_length", "word_count_threshold", "stats", "images": [{"id", "file_path", "split",
                "captions", "label_start", "label_end", "extra"}]}
  labels.npy   int32 (num_captions, max_length) word ids, 0-padded, no <START>/<END>;
               rows [label_start, label_end) belong to one image, in the order of "images".
Before any work the output folder must be writable; before encoding there must be room for labels.npy, and
before writing room for all three. The three are then written together: each to a temporary file beside it
(written and fsynced), and only when all three are complete are they renamed into place, so a failed run
(a full disk included) leaves the earlier outputs intact and no temporary file behind.
numpy, the progress bar and PIL are imported inside the functions that need them, so `imcap --help` stays fast.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from imcap.data.readers import FORMATS, SPLITS, ImageRecord, load_captions
from imcap.data.vocab import UNK, Vocab, tokenize
from imcap.errors import ImcapError
from imcap.files import atomic_write, check_free_space, remove_stale_temporaries
from imcap.options import opt, validate

log = logging.getLogger(__name__)

OUTPUT_FORMAT, OUTPUT_VERSION = "imcap-prepro", 1
OUTPUT_FILES = ("labels.npy", "vocab.json", "images.json")
_NPY_HEADER = 128  # bytes np.save writes before a 2-D int32 array's data (format version 1.0)


def _format_error(value: str | None) -> str | None:
    return None if value is None or value in FORMATS else f"must be one of {', '.join(FORMATS)} (got {value!r})"


@dataclass
class PreproOptions:
    """Options of `imcap prepro` (neuraltalk2's prepro.py names where they differ)."""

    input: str = field(metadata={"cli": False, "help": "caption file or folder (any supported format)"})
    output_dir: str = field(metadata={"cli": False, "help": "folder for vocab.json, images.json, labels.npy"})
    format: str | None = opt(None, f"input format ({', '.join(FORMATS)}); detected from the name and contents "
                             "when not given", check=_format_error, metavar="FORMAT")
    image_root: str | None = opt(None, "folder the image paths are relative to (neuraltalk2: --images_root); "
                                 "default depends on format", metavar="DIR")
    word_count_threshold: int = opt(5, "words seen this many times or fewer in training captions become <UNK>",
                                    min=0)
    max_length: int = opt(16, "captions are cut to this many words", min=1)
    check_images: bool = opt(True, "check that every image file exists (one directory listing per folder, no "
                             "image is opened); a missing image is an error")
    drop_bad_images: bool = opt(False, "open every image's header (slow for large sets) and drop missing or "
                                "unreadable images, counted as bad_images, instead of failing")
    dedupe: bool = opt(False, "keep an image file listed under two ids or in two splits once, at its first "
                       "listing, with a warning, instead of stopping with an error")
    image_store: int = opt(0, "also write every image once, shorter side resized to this many pixels and re-encoded "
                           "as JPEG, into tar shards in OUTPUT_DIR/image_store/, which training, features and eval "
                           "then read (e.g. 256; 0: none; a rerun finishes an interrupted build)", min=0, metavar="SIZE")


def prepro(opts: PreproOptions) -> dict[str, Any]:
    """Write the prepro outputs for `opts.input` into `opts.output_dir` and return the statistics."""
    validate(opts)
    out = Path(opts.output_dir)
    _check_output_dir(out)
    found = load_captions(opts.input, opts.format, opts.image_root, opts.dedupe)
    records, dropped = found.records, dict(found.dropped)
    root = Path(found.image_root)
    if opts.drop_bad_images:
        records, dropped["bad_images"] = _drop_bad_images(records, root)
    elif opts.check_images:
        _check_images_exist(records, root)
    elif not root.is_dir():
        log.warning("%s: image folder not found (give --image-root)", root)
    train_captions = [c for r in records if r.split == "train" for c in r.captions]
    if not train_captions:
        raise ImcapError(f"{opts.input}: no training images (the vocabulary is built from training captions)")
    num_captions = sum(len(r.captions) for r in records)
    check_free_space(out, _NPY_HEADER + 4 * num_captions * opts.max_length, out / "labels.npy")
    vocab = Vocab.build((tokenize(c) for c in train_captions), opts.word_count_threshold)
    labels, stats, entries = _encode(records, vocab, opts.max_length)
    stats.update(word_count_threshold=opts.word_count_threshold, dropped=dropped)
    manifest = {
        "format": OUTPUT_FORMAT, "version": OUTPUT_VERSION, "source": str(opts.input),
        "source_format": found.format, "image_root": found.image_root, "max_length": opts.max_length,
        "word_count_threshold": opts.word_count_threshold, "stats": stats, "images": entries,
    }
    _write_outputs(out, labels, vocab.to_json().encode("utf-8"), json.dumps(manifest).encode("utf-8"))
    if opts.image_store:
        from imcap.data.store import STORE_DIR, build_image_store

        build_image_store(out / STORE_DIR, root, [e["file_path"] for e in entries], opts.image_store)
    return stats


def _check_output_dir(out: Path) -> None:
    """Raise a one-line ImcapError, before any work, when `out` is not a folder that can be made or written to."""
    if out.exists() and not out.is_dir():
        raise ImcapError(f"{out}: exists and is not a folder")
    existing = out.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    where = "" if existing == out.absolute() else f" (in {existing})"
    if not existing.is_dir():
        raise ImcapError(f"{out}: cannot create the folder ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = os.statvfs(existing).f_flag & os.ST_RDONLY
        raise ImcapError(f"{out}: {'read-only file system' if read_only else 'permission denied'}{where}")


def _check_images_exist(records: list[ImageRecord], root: Path) -> None:
    """Raise a one-line ImcapError when image files are missing: how many, and the first.

    Each folder is listed once (`os.scandir`); only a listed name that is not a regular file (a folder, a broken
    link) costs a `stat`. No image is opened.
    """
    listings: dict[str, dict[str, os.DirEntry] | None] = {}
    missing, first = 0, ""
    for rec in records:
        path = os.path.normpath(os.path.join(root, rec.file_path))
        folder, name = os.path.split(path)
        if folder not in listings:
            listings[folder] = _listing(folder)
        entries = listings[folder]
        if entries is None:  # the folder cannot be listed (no read permission): ask for the file itself
            exists = os.path.isfile(path)
        else:
            entry = entries.get(name)
            exists = entry is not None and entry.is_file()
        if not exists:
            missing += 1
            first = first or path
    if missing:
        raise ImcapError(f"{root}: {missing} of {len(records)} image(s) not found (first: {first}); "
                         "give --image-root DIR, or --no-check-images to skip this check")


def _listing(folder: str) -> dict[str, os.DirEntry] | None:
    """Return {name: entry} of a folder ({} when it does not exist; None when it cannot be listed)."""
    try:
        with os.scandir(folder) as it:
            return {entry.name: entry for entry in it}
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except OSError:
        return None


def _drop_bad_images(records: list[ImageRecord], root: Path) -> tuple[list[ImageRecord], int]:
    """Keep the records whose image header opens; log how many were dropped and the first problem."""
    from imcap.progress import progress_bar

    from imcap.data.images import check_image

    kept, bad, first = [], 0, ""
    for rec in progress_bar(records, desc="checking images", unit="img"):
        try:
            check_image(root / rec.file_path)
            kept.append(rec)
        except ImcapError as exc:
            bad += 1
            first = first or str(exc)
    if bad:
        log.warning("dropped %d image(s) that are missing or unreadable (first: %s)", bad, first)
    if not kept:
        raise ImcapError(f"{root}: none of the {len(records)} images could be opened (first: {first})")
    return kept, bad


def _encode(records: list[ImageRecord], vocab: Vocab, max_length: int) -> tuple[Any, dict[str, Any], list[dict]]:
    """Return the int32 label matrix (num_captions, max_length), the statistics and the images.json entries."""
    import numpy as np

    num_captions = sum(len(r.captions) for r in records)
    labels = np.zeros((num_captions, max_length), dtype=np.int32)  # (num_captions, max_length)
    lengths: Counter[int] = Counter()
    tokens = dict.fromkeys(SPLITS, 0)
    unks = dict.fromkeys(SPLITS, 0)
    entries = []
    row = 0
    for rec in records:
        start = row
        for caption in rec.captions:
            ids = vocab.encode(tokenize(caption))
            lengths[len(ids)] += 1
            tokens[rec.split] += len(ids)
            unks[rec.split] += ids.count(UNK)
            labels[row, :min(len(ids), max_length)] = ids[:max_length]
            row += 1
        entries.append({"id": rec.image_id, "file_path": rec.file_path, "split": rec.split,
                        "captions": rec.captions, "label_start": start, "label_end": row, "extra": rec.extra})
    truncated = sum(n for length, n in lengths.items() if length > max_length)
    stats = {
        "images": {s: sum(1 for r in records if r.split == s) for s in SPLITS},
        "captions": {s: sum(len(r.captions) for r in records if r.split == s) for s in SPLITS},
        "num_images": len(records),
        "num_captions": num_captions,
        "vocab_size": len(vocab),
        "vocab_words": len(vocab) - 4,
        "unk_pct": {s: round(100.0 * unks[s] / tokens[s], 3) if tokens[s] else 0.0 for s in SPLITS},
        "truncated_pct": round(100.0 * truncated / num_captions, 3),
        "max_length": max_length,
        "length_histogram": {str(k): lengths[k] for k in sorted(lengths)},
    }
    return labels, stats, entries


def _write_outputs(out: Path, labels: Any, vocab_json: bytes, images_json: bytes) -> None:
    """Write images.json, vocab.json and labels.npy into `out` as one unit; raise a one-line ImcapError on failure.

    The writes are nested `atomic_write`s: each one's temporary file is written and fsynced, then the next
    file's, and the renames run only after the innermost (labels.npy) is complete. A full disk, quota, read-only
    folder or missing permission anywhere leaves every earlier output as it was, with no temporary file behind.
    """
    import numpy as np

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImcapError(f"{out}: cannot create the folder ({exc.strerror or exc})") from None
    remove_stale_temporaries(out, OUTPUT_FILES)
    files: list[tuple[str, int, Callable[[BinaryIO], None]]] = [
        ("images.json", len(images_json), lambda f: f.write(images_json)),
        ("vocab.json", len(vocab_json), lambda f: f.write(vocab_json)),
        ("labels.npy", _NPY_HEADER + labels.nbytes, lambda f: np.save(f, labels, allow_pickle=False)),
    ]
    check_free_space(out, sum(size for _, size, _ in files), out / "labels.npy")

    def write_from(k: int) -> None:
        name, size, write = files[k]

        def write_then_rest(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            if k + 1 < len(files):
                write_from(k + 1)

        atomic_write(out / name, write_then_rest, needed_bytes=size)

    write_from(0)


def format_stats(stats: dict[str, Any], width: int = 40) -> str:
    """Return the statistics as the text `imcap prepro` prints, with a bar chart of caption lengths."""
    images, captions = stats["images"], stats["captions"]
    lines = [
        "images:   " + ", ".join(f"{images[s]} {s}" for s in SPLITS) + f" ({stats['num_images']} total)",
        "captions: " + ", ".join(f"{captions[s]} {s}" for s in SPLITS) + f" ({stats['num_captions']} total)",
        (f"vocabulary: {stats['vocab_words']} words + 4 special tokens = {stats['vocab_size']} entries "
         f"(training words seen <= {stats['word_count_threshold']} times -> <UNK>)"),
        "UNK tokens: " + ", ".join(f"{stats['unk_pct'][s]:.2f}% {s}" for s in SPLITS),
        f"captions longer than {stats['max_length']} words (truncated): {stats['truncated_pct']:.2f}%",
    ]
    dropped = {k: v for k, v in stats.get("dropped", {}).items() if v}
    if dropped:
        lines.append("dropped: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in dropped.items()))
    max_length = stats["max_length"]
    buckets: Counter[str] = Counter()
    for length, n in stats["length_histogram"].items():
        buckets[length if int(length) <= max_length else f">{max_length}"] += n
    order = [str(k) for k in range(max_length + 1)] + [f">{max_length}"]
    peak = max(buckets.values())
    lines.append("caption length (words before truncation):")
    for key in order:
        if key in buckets:
            bar = "#" * max(1, round(width * buckets[key] / peak))
            lines.append(f"{key:>4} | {bar} {buckets[key]}")
    return "\n".join(lines)
