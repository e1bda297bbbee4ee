"""Search data: the CUHK-PEDES reader, identities, captions as word ids, and image loading for search models.

Any captioned image set is a search set. `SearchData.load` takes a prepro folder (`imcap prepro`), any caption
file or folder that imcap reads (Karpathy, raw, Flickr8k, COCO, CSV/JSONL, an `imcap synth` folder) or a
CUHK-PEDES `reid_raw.json`. Identity: the CUHK-PEDES person id (`extra["person_id"]` in a prepro folder);
for every other set each image is its own identity.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from imcap.data.images import image_to_tensor, load_image
from imcap.data.readers import ImageRecord, hash_split, load_captions
from imcap.data.vocab import NULL, UNK, Vocab, tokenize
from imcap.errors import ImcapError

log = logging.getLogger(__name__)

CUHK_PEDES = "cuhk-pedes"
CUHK_PEDES_FILE = "reid_raw.json"
_CUHK_KEYS = {"file_path", "captions", "id", "split", "processed_tokens"}
_SPLIT_NAMES = {"train": "train", "restval": "train", "val": "val", "dev": "val", "validation": "val", "test": "test"}


# ---------------------------------------------------------------- CUHK-PEDES


def is_cuhk_pedes(path: Path, data: Any) -> bool:
    """Whether parsed JSON `data` (from `path`) is CUHK-PEDES: named reid_raw.json, or a raw list whose ids repeat."""
    if not isinstance(data, list) or not data or not all(isinstance(it, dict) for it in data[:10]):
        return False
    if not all({"file_path", "captions", "id"} <= it.keys() for it in data[:10]):
        return False
    if path.name.lower() == CUHK_PEDES_FILE or "processed_tokens" in data[0]:
        return True
    ids = [str(it.get("id")) for it in data if isinstance(it, dict)]
    return len(set(ids)) < len(ids)  # one id per person, several images each (a raw list would fail on this)


def cuhk_pedes_records(data: Any, path: str | Path) -> list[ImageRecord]:
    """CUHK-PEDES `[{"split", "captions", "file_path", "id"}]` -> one record per image; the person id is `extra["person_id"]`.

    An image listed twice for the same person has its captions merged. A file without splits gets a hash split
    of the person id, so all images of one person land in the same split.
    """
    path = Path(path)
    if not isinstance(data, list):
        raise ImcapError(f"{path}: not a CUHK-PEDES file (expected [{{split, captions, file_path, id}}, ...])")
    by_path: dict[str, ImageRecord] = {}
    for i, item in enumerate(data):
        where = f"{path}: item #{i}"
        if not isinstance(item, dict) or not isinstance(item.get("file_path"), str) or "id" not in item or "captions" not in item:
            raise ImcapError(f"{where}: needs 'file_path' (a string), 'captions' and 'id' (the person)")
        captions = item["captions"]
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise ImcapError(f"{where}: captions must be a list of strings")
        person = str(item["id"])
        raw_split = item.get("split")
        split = _SPLIT_NAMES.get(str(raw_split).strip().lower()) if raw_split is not None else hash_split(person)
        if split is None:
            raise ImcapError(f"{where}: unknown split {raw_split!r} (expected train, val or test)")
        file_path = item["file_path"]
        rec = by_path.get(file_path)
        if rec is not None:
            if rec.extra["person_id"] != person or rec.split != split:
                raise ImcapError(f"{where}: {file_path} is listed again with another person id or split")
            rec.captions.extend(captions)
            continue
        extra = {k: v for k, v in item.items() if k not in _CUHK_KEYS}
        extra["person_id"] = person
        image_id = str(PurePosixPath(file_path.replace("\\", "/")).with_suffix(""))
        by_path[file_path] = ImageRecord(image_id, file_path, split, list(captions), extra)
    return list(by_path.values())


def read_cuhk_pedes(path: str | Path, image_root: str | None = None) -> tuple[list[ImageRecord], str]:
    """Read a CUHK-PEDES `reid_raw.json`; return records without empty captions and the image root.

    The default image root is the `imgs/` folder beside the file (the CUHK-PEDES layout), else the file's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise ImcapError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ImcapError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImcapError(f"{path}: cannot read ({exc.__class__.__name__})") from None
    records = []
    empty = 0
    for rec in cuhk_pedes_records(data, path):
        kept = [c.strip() for c in rec.captions if tokenize(c)]
        empty += len(rec.captions) - len(kept)
        if kept:
            rec.captions = kept
            records.append(rec)
    if empty:
        log.warning("%s: skipped %d empty caption(s)", path, empty)
    if not records:
        raise ImcapError(f"{path}: no images with a non-empty caption")
    root = Path(image_root) if image_root else (path.parent / "imgs" if (path.parent / "imgs").is_dir() else path.parent)
    return records, str(root.resolve())


# ---------------------------------------------------------------- the search data set


@dataclass
class SearchData:
    """Images (with identities), their captions as word ids, and the vocabulary."""

    source: str
    image_root: Path
    images: list[dict]  # {"id", "file_path", "split", "identity"}
    labels: np.ndarray  # (num_captions, max_length) int64 word ids, 0-padded
    caption_image: np.ndarray  # (num_captions,) image index of each caption
    identity: np.ndarray  # (num_images,) int64 identity number of each image
    vocab: Vocab
    max_length: int

    @classmethod
    def load(cls, source: str | Path, format: str | None = None, image_root: str | None = None,
             max_length: int = 50, word_count_threshold: int = 5) -> SearchData:
        """Read a prepro folder, a caption file/folder of any imcap format, or a CUHK-PEDES reid_raw.json.

        `max_length` and `word_count_threshold` apply only when reading caption files (a prepro folder has its own).
        """
        source = Path(source)
        if source.is_dir() and (source / "images.json").is_file():
            return cls._from_prepro(source)
        if format == CUHK_PEDES or (format is None and _looks_like_cuhk(source)):
            records, root = read_cuhk_pedes(source, image_root)
        else:
            found = load_captions(source, format, image_root)
            records, root = found.records, found.image_root
        return cls._from_records(str(source), Path(root), records, max_length, word_count_threshold)

    @classmethod
    def _from_prepro(cls, folder: Path) -> SearchData:
        from imcap.data.loader import PreproData

        pre = PreproData.load(folder)
        images, rows, owner = [], [], []
        for i, im in enumerate(pre.images):
            extra = im.get("extra") or {}
            images.append({"id": str(im["id"]), "file_path": im["file_path"], "split": _SPLIT_NAMES.get(im["split"], im["split"]),
                           "identity": str(extra.get("person_id", im["id"]))})
            rows.append(np.asarray(pre.labels[im["label_start"]:im["label_end"]], dtype=np.int64))
            owner.append(np.full(im["label_end"] - im["label_start"], i, dtype=np.int64))
        labels = np.concatenate(rows) if rows else np.zeros((0, pre.max_length), np.int64)
        return cls._finish(str(folder), pre.image_root, images, labels, np.concatenate(owner), pre.vocab, pre.max_length)

    @classmethod
    def _from_records(cls, source: str, root: Path, records: list[ImageRecord], max_length: int, threshold: int) -> SearchData:
        if max_length < 1:
            raise ImcapError(f"--max-length must be at least 1, got {max_length}")
        train = [tokenize(c) for r in records if r.split == "train" for c in r.captions]
        if not train:
            raise ImcapError(f"{source}: no training images (the vocabulary is built from training captions)")
        vocab = Vocab.build(train, threshold)
        num = sum(len(r.captions) for r in records)
        labels = np.zeros((num, max_length), dtype=np.int64)  # (num_captions, max_length)
        owner = np.zeros(num, dtype=np.int64)
        images, row = [], 0
        for i, rec in enumerate(records):
            images.append({"id": rec.image_id, "file_path": rec.file_path, "split": rec.split,
                           "identity": str(rec.extra.get("person_id", rec.image_id))})
            for caption in rec.captions:
                ids = vocab.encode(tokenize(caption), max_length)
                labels[row, :len(ids)] = ids
                owner[row] = i
                row += 1
        return cls._finish(source, root, images, labels, owner, vocab, max_length)

    @classmethod
    def _finish(cls, source: str, root: Path, images: list[dict], labels: np.ndarray, owner: np.ndarray,
                vocab: Vocab, max_length: int) -> SearchData:
        numbers: dict[str, int] = {}
        identity = np.array([numbers.setdefault(im["identity"], len(numbers)) for im in images], dtype=np.int64)
        return cls(source, Path(root), images, labels, owner, identity, vocab, max_length)

    def split_images(self, split: str) -> np.ndarray:
        """Indices of the images of `split`."""
        return np.array([i for i, im in enumerate(self.images) if im["split"] == split], dtype=np.int64)

    def captions_of_images(self, image_indices: np.ndarray) -> np.ndarray:
        """Indices of the captions that belong to `image_indices`, in caption order."""
        keep = np.zeros(len(self.images), dtype=bool)
        keep[image_indices] = True
        return np.flatnonzero(keep[self.caption_image])

    def image_path(self, i: int) -> Path:
        """Absolute path of image `i`."""
        return self.image_root / self.images[i]["file_path"]


def _looks_like_cuhk(path: Path) -> bool:
    if not path.is_file() or path.suffix.lower() != ".json":
        return False
    if path.name.lower() == CUHK_PEDES_FILE:
        return True
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False  # the ordinary reader gives the one-line error
    return is_cuhk_pedes(path, data)


# ---------------------------------------------------------------- captions and images as tensors


def encode_query(text: str, vocab: Vocab, max_length: int) -> list[int]:
    """Word ids of a free-text query; one-line ImcapError when it has no word, or no word the model knows."""
    words = tokenize(text or "")
    if not words:
        raise ImcapError("empty query: give a sentence that describes the image, e.g. \"a man in a red jacket\"")
    ids = vocab.encode(words, max_length)
    if all(i == UNK for i in ids):
        raise ImcapError(f"query {text.strip()[:80]!r}: none of its words is in the model's vocabulary")
    return ids


def pad_ids(rows: list[list[int]]) -> torch.Tensor:
    """Lists of word ids -> (N, longest) int64 tensor, 0-padded."""
    out = torch.full((len(rows), max(len(r) for r in rows)), NULL, dtype=torch.long)  # (N, T)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def trim(labels: torch.Tensor) -> torch.Tensor:
    """Drop the all-padding columns at the end of a (N, L) label batch."""
    longest = int((labels != NULL).sum(1).max()) if labels.numel() else 0
    return labels[:, :max(longest, 1)]


def load_image_uint8(path: str | Path, size: int) -> torch.Tensor:
    """Image file -> (3, size, size) uint8 tensor, exactly `image_to_tensor` times 255."""
    return image_to_tensor(load_image(path), size).mul_(255.0).round_().to(torch.uint8)


class ImageCache:
    """Loads images of a SearchData at one size and keeps them as uint8 up to a memory budget."""

    def __init__(self, data: SearchData, size: int, budget_bytes: int = 1 << 30) -> None:
        self.data, self.size = data, size
        self.capacity = budget_bytes // (3 * size * size)
        self.cache: dict[int, torch.Tensor] = {}

    def get(self, i: int) -> torch.Tensor:
        """Image `i` as (3, S, S) uint8."""
        img = self.cache.get(i)
        if img is None:
            img = load_image_uint8(self.data.image_path(i), self.size)
            if len(self.cache) < self.capacity:
                self.cache[i] = img
        return img

    def batch(self, indices) -> torch.Tensor:
        """Images as a float batch (B, 3, S, S) in [0, 1]."""
        return torch.stack([self.get(int(i)) for i in indices]).float().div_(255.0)
