"""`imcap prepro`: caption file -> vocab.json + images.json + labels.npy (images are never loaded).

Output folder:
  vocab.json   `Vocab.save`; built from training captions only (words seen <= threshold times -> <UNK>).
  images.json  {"format": "imcap-prepro", "version": 1, "source", "source_format", "image_root",
                "max_length", "word_count_threshold", "stats", "images": [{"id", "file_path", "split",
                "captions", "label_start", "label_end", "extra"}]}
  labels.npy   int32 (num_captions, max_length) word ids, 0-padded, no <START>/<END>;
               rows [label_start, label_end) belong to one image, in the order of "images".
All three are written under temporary names and renamed at the end, so a failed run leaves old outputs intact.
numpy, tqdm and PIL are imported inside the functions that need them, so `imcap --help` stays fast.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from imcap.data.readers import FORMATS, SPLITS, ImageRecord, load_captions
from imcap.data.vocab import UNK, Vocab, tokenize
from imcap.errors import ImcapError

log = logging.getLogger(__name__)

OUTPUT_FORMAT, OUTPUT_VERSION = "imcap-prepro", 1
OUTPUT_FILES = ("labels.npy", "vocab.json", "images.json")


@dataclass
class PreproOptions:
    """Options of `imcap prepro` (neuraltalk2's prepro.py names where they differ)."""

    input: str = field(metadata={"cli": False, "help": "caption file or folder (any supported format)"})
    output_dir: str = field(metadata={"cli": False, "help": "folder for vocab.json, images.json, labels.npy"})
    # Optional[...] rather than `str | None`: imcap.options recognises typing.Union.
    format: Optional[str] = field(default=None, metadata={  # noqa: UP007
        "help": "input format; detected from the name and contents when not given", "choices": FORMATS})
    image_root: Optional[str] = field(default=None, metadata={  # noqa: UP007
        "help": "folder the image paths are relative to (neuraltalk2: --images_root); default depends on format"})
    word_count_threshold: int = field(default=5, metadata={
        "help": "words seen this many times or fewer in training captions become <UNK>"})
    max_length: int = field(default=16, metadata={"help": "captions are cut to this many words"})
    check_images: bool = field(default=False, metadata={
        "help": "open every image header and drop missing or unreadable images"})


def prepro(opts: PreproOptions) -> dict[str, Any]:
    """Write the prepro outputs for `opts.input` into `opts.output_dir` and return the statistics."""
    if opts.max_length < 1:
        raise ImcapError(f"--max-length must be at least 1, got {opts.max_length}")
    if opts.word_count_threshold < 0:
        raise ImcapError(f"--word-count-threshold must be 0 or more, got {opts.word_count_threshold}")
    out = Path(opts.output_dir)
    if out.exists() and not out.is_dir():
        raise ImcapError(f"{out}: exists and is not a folder")
    found = load_captions(opts.input, opts.format, opts.image_root)
    records, dropped = found.records, dict(found.dropped)
    if opts.check_images:
        records, dropped["bad_images"] = _check_images(records, Path(found.image_root))
    elif not Path(found.image_root).is_dir():
        log.warning("%s: image folder not found (give --image-root)", found.image_root)
    train_captions = [c for r in records if r.split == "train" for c in r.captions]
    if not train_captions:
        raise ImcapError(f"{opts.input}: no training images (the vocabulary is built from training captions)")
    vocab = Vocab.build((tokenize(c) for c in train_captions), opts.word_count_threshold)

    out.mkdir(parents=True, exist_ok=True)
    temps = {name: out / f".{name}.tmp-{os.getpid()}" for name in OUTPUT_FILES}
    try:
        stats, entries = _write_labels(records, vocab, opts.max_length, temps["labels.npy"])
        stats.update(word_count_threshold=opts.word_count_threshold, dropped=dropped)
        vocab.save(temps["vocab.json"])
        manifest = {
            "format": OUTPUT_FORMAT, "version": OUTPUT_VERSION, "source": str(opts.input),
            "source_format": found.format, "image_root": found.image_root, "max_length": opts.max_length,
            "word_count_threshold": opts.word_count_threshold, "stats": stats, "images": entries,
        }
        with open(temps["images.json"], "w", encoding="utf-8") as fp:
            json.dump(manifest, fp)
        for name, temp in temps.items():
            os.replace(temp, out / name)
    except OSError as exc:
        raise ImcapError(f"{out}: cannot write outputs ({exc.strerror or exc})") from None
    finally:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
    return stats


def _check_images(records: list[ImageRecord], root: Path) -> tuple[list[ImageRecord], int]:
    """Keep the records whose image header opens; log how many were dropped and the first problem."""
    from tqdm import tqdm

    from imcap.data.images import check_image

    kept, bad, first = [], 0, ""
    for rec in tqdm(records, desc="checking images", unit="img", disable=None):
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


def _write_labels(records: list[ImageRecord], vocab: Vocab, max_length: int,
                  path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Encode every caption into an int32 memmap at `path`; return the stats and the images.json entries."""
    import numpy as np
    from numpy.lib.format import open_memmap

    num_captions = sum(len(r.captions) for r in records)
    labels = open_memmap(path, mode="w+", dtype=np.int32, shape=(num_captions, max_length))
    lengths: Counter[int] = Counter()
    tokens = dict.fromkeys(SPLITS, 0)
    unks = dict.fromkeys(SPLITS, 0)
    entries = []
    row = 0
    for rec in records:
        block = np.zeros((len(rec.captions), max_length), dtype=np.int32)  # (captions, max_length)
        for i, caption in enumerate(rec.captions):
            ids = vocab.encode(tokenize(caption))
            lengths[len(ids)] += 1
            tokens[rec.split] += len(ids)
            unks[rec.split] += ids.count(UNK)
            block[i, :min(len(ids), max_length)] = ids[:max_length]
        labels[row:row + len(block)] = block
        entries.append({"id": rec.image_id, "file_path": rec.file_path, "split": rec.split,
                        "captions": rec.captions, "label_start": row, "label_end": row + len(block),
                        "extra": rec.extra})
        row += len(block)
    labels.flush()
    del labels
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
    return stats, entries


def format_stats(stats: dict[str, Any], width: int = 40) -> str:
    """Return the statistics as the text `imcap prepro` prints, with a bar chart of caption lengths."""
    images, captions = stats["images"], stats["captions"]
    lines = [
        "images:   " + ", ".join(f"{images[s]} {s}" for s in SPLITS) + f" ({stats['num_images']} total)",
        "captions: " + ", ".join(f"{captions[s]} {s}" for s in SPLITS) + f" ({stats['num_captions']} total)",
        f"vocabulary: {stats['vocab_words']} words + 4 special tokens = {stats['vocab_size']} entries "
        f"(training words seen <= {stats['word_count_threshold']} times -> <UNK>)",
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
    order = [str(k) for k in range(0, max_length + 1)] + [f">{max_length}"]
    peak = max(buckets.values())
    lines.append("caption length (words before truncation):")
    for key in order:
        if key in buckets:
            bar = "#" * max(1, round(width * buckets[key] / peak))
            lines.append(f"{key:>4} | {bar} {buckets[key]}")
    return "\n".join(lines)
