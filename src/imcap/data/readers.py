"""Caption-file readers: Karpathy splits, neuraltalk2 raw lists, Flickr8k, COCO, CSV/JSONL, `imcap synth` folders.

Every reader returns `ImageRecord`s with a split in {"train", "val", "test"} and non-empty captions.
Split rules: Karpathy "restval" counts as train; "dev"/"validation" count as val; files without a split get a
deterministic 90/5/5 split from a hash of the image name (`hash_split`).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from imcap.data.vocab import tokenize
from imcap.errors import ImcapError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
FORMATS = ("karpathy", "raw", "flickr8k", "coco", "csv", "jsonl", "synth")
_SPLIT_NAMES = {"train": "train", "restval": "train", "val": "val", "dev": "val", "validation": "val", "test": "test"}
_KARPATHY_KEYS = {"filepath", "filename", "split", "sentences", "sentids", "imgid", "cocoid", "id"}
_RAW_KEYS = {"file_path", "captions", "split", "id"}
_FLICKR8K_TOKENS = "Flickr8k.token.txt"
_FLICKR8K_LISTS = {"train": "Flickr_8k.trainImages.txt", "val": "Flickr_8k.devImages.txt",
                   "test": "Flickr_8k.testImages.txt"}
_FLICKR8K_IMAGE_DIRS = ("Flicker8k_Dataset", "Flickr8k_Dataset")
_FLICKR8K_STRAY = re.compile(r"^(.+\.jpe?g)\.\d+$", re.IGNORECASE)  # "x.jpg.1" -> "x.jpg"
_PUNCT_SPACE = string.punctuation + string.whitespace
_COCO_NAME = re.compile(r"captions_(train|val|test)(\d*)", re.IGNORECASE)


@dataclass
class ImageRecord:
    """One image: its id, path (relative to the image root, or absolute), split, captions and extra fields."""

    image_id: str
    file_path: str
    split: str
    captions: list[str]
    extra: dict = field(default_factory=dict)


@dataclass
class CaptionSet:
    """What a reader found: the records, the absolute image root, the format and counts of what was dropped."""

    records: list[ImageRecord]
    image_root: str
    format: str
    dropped: dict[str, int] = field(default_factory=dict)


def read_captions(path: str | Path, format: str | None = None,
                  image_root: str | None = None) -> tuple[list[ImageRecord], str]:
    """Return the image records of a caption file (format detected unless given) and the image root."""
    found = load_captions(path, format, image_root)
    return found.records, found.image_root


def load_captions(path: str | Path, format: str | None = None, image_root: str | None = None) -> CaptionSet:
    """Return a `CaptionSet` for `path`: records with empty captions and caption-less images removed."""
    path = Path(path)
    if not path.exists():
        raise ImcapError(f"{path}: file not found")
    if format is not None and format not in FORMATS:
        raise ImcapError(f"{path}: unknown format {format!r} (choose from {', '.join(FORMATS)})")
    data: Any = None
    if format is None:
        format, data = _detect(path)
    dropped: dict[str, int] = {}
    if format in ("karpathy", "synth"):
        json_path = _synth_captions(path) if format == "synth" or path.is_dir() else path
        records = _from_karpathy(_load_json(json_path) if data is None else data, json_path)
        default_root = json_path.parent
    elif format == "raw":
        _require_file(path)
        records = _from_raw(_load_json(path) if data is None else data, path)
        default_root = path.parent
    elif format == "coco":
        records, default_root = _from_coco(path, data)
    elif format == "flickr8k":
        records, default_root, dropped = _from_flickr8k(path)
    else:
        _require_file(path)
        records = _from_csv(path) if format == "csv" else _from_jsonl(path)
        default_root = path.parent
    root = Path(image_root) if image_root is not None else default_root
    records, cleaned = _clean(records, path)
    dropped.update(cleaned)
    return CaptionSet(records, str(root.resolve()), format, dropped)


def detect_format(path: str | Path) -> str:
    """Return the format name of a caption file or folder, judged from its name and contents."""
    return _detect(Path(path))[0]


def hash_split(name: str) -> str:
    """Return a deterministic split for an image name: 90% train, 5% val, 5% test (stable across runs)."""
    bucket = int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[:4], "big") % 100
    return "train" if bucket < 90 else "val" if bucket < 95 else "test"


def read_flickr8k_tokens(path: str | Path) -> dict[str, list[str]]:
    """Return {image file name: captions} from a Flickr8k token file, with stray ids like `x.jpg.1` fixed."""
    path = Path(path)
    captions: dict[str, list[str]] = {}
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        key, tab, caption = line.partition("\t")
        name, hash_, number = key.strip().rpartition("#")
        if not tab or not hash_ or not name or not number.isdigit():
            raise ImcapError(f"{path}:{lineno}: expected '<image>#<n><TAB><caption>', got {line[:60]!r}")
        stray = _FLICKR8K_STRAY.match(name)
        captions.setdefault(stray.group(1) if stray else name, []).append(caption)
    return captions


# ---------------------------------------------------------------- detection and file helpers


def _detect(path: Path) -> tuple[str, Any]:
    """Return (format, parsed JSON or None); JSON files are parsed once here and handed to the reader."""
    if path.is_dir():
        if (path / "captions.json").is_file():
            return "synth", None
        if (path / _FLICKR8K_TOKENS).is_file():
            return "flickr8k", None
        if any(path.glob("captions_*.json")):
            return "coco", None
        raise ImcapError(f"{path}: folder holds no captions.json, {_FLICKR8K_TOKENS} or captions_*.json")
    name = path.name.lower()
    if name.endswith(".token.txt"):
        return "flickr8k", None
    if name.endswith((".csv", ".tsv")):
        return "csv", None
    if name.endswith(".jsonl"):
        return "jsonl", None
    if name.endswith(".json"):
        data = _load_json(path)
        return _json_kind(data, path), data
    if name.endswith(".txt"):
        first = _read_text(path).lstrip().split("\n", 1)[0]
        if re.match(r"^\S+#\d+\t", first):
            return "flickr8k", None
    raise ImcapError(f"{path}: cannot tell the caption format; give --format ({', '.join(FORMATS)})")


def _json_kind(data: Any, path: Path) -> str:
    """Tell Karpathy, COCO and raw JSON apart by their structure."""
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        if "annotations" in data:
            return "coco"
        if all(isinstance(img, dict) and "sentences" in img for img in data["images"][:10]):
            return "karpathy"
    if isinstance(data, list) and all(isinstance(item, dict) and "file_path" in item for item in data[:10]):
        return "raw"
    raise ImcapError(f"{path}: JSON is neither Karpathy ({{images: [{{sentences}}]}}), COCO ({{images, annotations}}) "
                     "nor a neuraltalk2 list ([{file_path, captions}])")


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise ImcapError(f"{path}: not a file")


def _read_text(path: Path) -> str:
    """Return the UTF-8 text of a file, with one-line errors for the usual problems."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ImcapError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImcapError(f"{path}: is a folder, expected a file") from None
    except OSError as exc:
        raise ImcapError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not raw.strip():
        raise ImcapError(f"{path}: empty file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ImcapError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def _load_json(path: Path) -> Any:
    """Return the parsed JSON of a file or raise a one-line ImcapError."""
    text = _read_text(path)
    try:
        return json.loads(text, object_hook=_drop_tokens)
    except json.JSONDecodeError as exc:
        raise ImcapError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def _drop_tokens(obj: dict) -> dict:
    """Forget Karpathy's pre-split "tokens" where "raw" is present while parsing (about half of the memory)."""
    if "raw" in obj and "tokens" in obj:
        del obj["tokens"]
    return obj


def _synth_captions(path: Path) -> Path:
    json_path = path / "captions.json" if path.is_dir() else path
    if not json_path.is_file():
        raise ImcapError(f"{path}: no captions.json (expected a folder written by `imcap synth`)")
    return json_path


def _split(value: Any, where: str) -> str:
    """Map a split name to train/val/test (restval -> train, dev -> val)."""
    split = _SPLIT_NAMES.get(str(value).strip().lower())
    if split is None:
        raise ImcapError(f"{where}: unknown split {value!r} (expected train, val, test, restval or dev)")
    return split


def _stem(file_path: str) -> str:
    """Return a file path without its extension, as an image id."""
    p = PurePosixPath(file_path.replace("\\", "/"))
    return str(p.with_suffix("")) if p.suffix else str(p)


def _captions(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise ImcapError(f"{where}: captions must be a list of strings")
    return value


def _has_words(caption: str) -> bool:
    """Return whether `tokenize(caption)` is non-empty (a fast path avoids the regex for ordinary captions)."""
    rest = caption.strip(_PUNCT_SPACE)
    return bool(rest) and (rest[0].isalnum() or bool(tokenize(rest)))


def _clean(records: Iterable[ImageRecord], path: Path) -> tuple[list[ImageRecord], dict[str, int]]:
    """Drop empty captions, then images left without captions; fail on duplicate ids or nothing left."""
    kept: list[ImageRecord] = []
    empty = no_caption = 0
    seen: set[str] = set()
    for rec in records:
        if rec.image_id in seen:
            raise ImcapError(f"{path}: image id {rec.image_id!r} appears twice")
        seen.add(rec.image_id)
        captions = [c.strip() for c in rec.captions if _has_words(c)]
        empty += len(rec.captions) - len(captions)
        if not captions:
            no_caption += 1
            continue
        rec.captions = captions
        kept.append(rec)
    if empty:
        log.warning("%s: skipped %d empty caption(s)", path, empty)
    if no_caption:
        log.warning("%s: dropped %d image(s) left without captions", path, no_caption)
    if not kept:
        raise ImcapError(f"{path}: no images with a non-empty caption")
    return kept, {"empty_captions": empty, "images_without_captions": no_caption}


# ---------------------------------------------------------------- the readers


def _from_karpathy(data: Any, path: Path) -> list[ImageRecord]:
    """Karpathy split file (dataset_coco.json, dataset_flickr8k.json) or `imcap synth` captions.json."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ImcapError(f"{path}: not a Karpathy split file (expected {{\"images\": [...]}})")
    records = []
    for i, img in enumerate(data["images"]):
        where = f"{path}: image #{i}"
        if not isinstance(img, dict) or "filename" not in img or "sentences" not in img:
            raise ImcapError(f"{where}: needs 'filename' and 'sentences'")
        if "split" not in img:
            raise ImcapError(f"{where}: has no 'split'")
        file_path = str(PurePosixPath(img.get("filepath") or "", str(img["filename"])))
        sentences = img["sentences"]
        if not isinstance(sentences, list):
            raise ImcapError(f"{where}: 'sentences' must be a list")
        captions = []
        for s in sentences:
            if isinstance(s, str):
                captions.append(s)
            elif isinstance(s, dict) and isinstance(s.get("raw"), str):
                captions.append(s["raw"])
            elif isinstance(s, dict) and isinstance(s.get("tokens"), list):
                captions.append(" ".join(map(str, s["tokens"])))
            else:
                raise ImcapError(f"{where}: a sentence has neither 'raw' nor 'tokens'")
        image_id = img.get("cocoid", img.get("id"))
        records.append(ImageRecord(
            image_id=str(image_id) if image_id is not None else _stem(str(img["filename"])),
            file_path=file_path,
            split=_split(img["split"], where),
            captions=captions,
            extra={k: v for k, v in img.items() if k not in _KARPATHY_KEYS},
        ))
    return records


def _from_raw(data: Any, path: Path) -> list[ImageRecord]:
    """neuraltalk2's raw list: [{"file_path": ..., "captions": [...]}, ...] (optional "id", "split")."""
    if not isinstance(data, list):
        raise ImcapError(f"{path}: not a neuraltalk2 raw list (expected [{{file_path, captions}}, ...])")
    records = []
    for i, item in enumerate(data):
        where = f"{path}: item #{i}"
        if not isinstance(item, dict) or not isinstance(item.get("file_path"), str) or "captions" not in item:
            raise ImcapError(f"{where}: needs 'file_path' (a string) and 'captions'")
        file_path = item["file_path"]
        records.append(ImageRecord(
            image_id=str(item["id"]) if "id" in item else _stem(file_path),
            file_path=file_path,
            split=_split(item["split"], where) if "split" in item else hash_split(file_path),
            captions=_captions(item["captions"], where),
            extra={k: v for k, v in item.items() if k not in _RAW_KEYS},
        ))
    return records


def _from_coco(path: Path, data: Any) -> tuple[list[ImageRecord], Path]:
    """COCO captions_<split><year>.json, or a folder of them; paths are `<split><year>/<file_name>`."""
    files = sorted(path.glob("captions_*.json")) if path.is_dir() else [path]
    folder = path if path.is_dir() else path.parent
    records: list[ImageRecord] = []
    if not files:
        raise ImcapError(f"{path}: no captions_*.json files in this folder")
    for file in files:
        records.extend(_from_coco_file(file, data if file == path and data is not None else _load_json(file)))
    root = folder.parent if folder.name == "annotations" else folder
    return records, root


def _from_coco_file(path: Path, data: Any) -> list[ImageRecord]:
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ImcapError(f"{path}: not a COCO caption file (expected {{\"images\": [...], \"annotations\": [...]}})")
    match = _COCO_NAME.search(path.name)
    split = match.group(1).lower() if match else None
    subdir = f"{match.group(1)}{match.group(2)}" if match else ""
    by_id: dict[Any, ImageRecord] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
            raise ImcapError(f"{path}: images[{i}] needs 'id' and 'file_name'")
        file_path = str(PurePosixPath(subdir, img["file_name"])) if subdir else img["file_name"]
        by_id[img["id"]] = ImageRecord(str(img["id"]), file_path, split or hash_split(file_path), [], {})
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise ImcapError(f"{path}: annotations[{i}] needs 'image_id' and 'caption' (a string)")
        rec = by_id.get(ann["image_id"])
        if rec is None:
            raise ImcapError(f"{path}: annotations[{i}] refers to unknown image id {ann['image_id']!r}")
        rec.captions.append(ann["caption"])
    return list(by_id.values())


def _from_flickr8k(path: Path) -> tuple[list[ImageRecord], Path, dict[str, int]]:
    """Flickr8k.token.txt plus the Flickr_8k.{train,dev,test}Images.txt lists beside it.

    Images in no split list are dropped (as in the standard 6000/1000/1000 split); without any list file the
    split comes from `hash_split`.
    """
    token_file = path / _FLICKR8K_TOKENS if path.is_dir() else path
    folder = token_file.parent
    captions = read_flickr8k_tokens(token_file)
    present = {split: folder / name for split, name in _FLICKR8K_LISTS.items() if (folder / name).is_file()}
    dropped: dict[str, int] = {}
    if present and len(present) < len(_FLICKR8K_LISTS):
        missing = sorted(set(_FLICKR8K_LISTS.values()) - {p.name for p in present.values()})
        raise ImcapError(f"{folder}: split list {missing[0]} is missing (found only some of the three)")
    if present:
        split_of: dict[str, str] = {}
        for split, list_file in present.items():
            for name in _read_text(list_file).split():
                if split_of.setdefault(name, split) != split:
                    raise ImcapError(f"{list_file}: {name} is also in the {split_of[name]} list")
        unlisted = sum(1 for name in captions if name not in split_of)
        if unlisted:
            log.warning("%s: dropped %d image(s) that are in no split list", token_file, unlisted)
        dropped["images_not_in_split_lists"] = unlisted
    else:
        log.warning("%s: no Flickr_8k.*Images.txt split lists; using a 90/5/5 hash split", folder)
        split_of = {name: hash_split(name) for name in captions}
    records = [ImageRecord(_stem(name), name, split_of[name], caps, {})
               for name, caps in captions.items() if name in split_of]
    root = next((d / sub for d in (folder, folder.parent) for sub in _FLICKR8K_IMAGE_DIRS if (d / sub).is_dir()),
                folder)
    return records, root, dropped


def _group_rows(rows: Iterable[tuple[int, dict[str, Any]]], path: Path) -> list[ImageRecord]:
    """Group (line number, row) pairs with keys image, caption[s], split by image, keeping first-seen order."""
    records: dict[str, ImageRecord] = {}
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        image = row.get("image")
        if not isinstance(image, str) or not image.strip():
            raise ImcapError(f"{where}: missing image name")
        image = image.strip()
        captions = row.get("captions", row.get("caption"))
        if captions is None:
            raise ImcapError(f"{where}: missing caption")
        split_value = row.get("split")
        split = _split(split_value, where) if split_value not in (None, "") else hash_split(image)
        rec = records.get(image)
        if rec is None:
            rec = records[image] = ImageRecord(_stem(image), image, split, [], {})
        elif rec.split != split:
            raise ImcapError(f"{where}: {image} is in split {split} here but {rec.split} before")
        rec.captions.extend(_captions(captions, where))
    return list(records.values())


def _from_csv(path: Path) -> list[ImageRecord]:
    """CSV (or .tsv) with a header row holding columns image, caption and optionally split."""
    text = _read_text(path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header = [h.strip() for h in reader.fieldnames or []]
    if "image" not in header or "caption" not in header:
        raise ImcapError(f"{path}: needs a header with columns image,caption[,split] (found: {','.join(header)})")
    reader.fieldnames = header

    def rows() -> Iterable[tuple[int, dict[str, Any]]]:
        try:
            for row in reader:
                if None in row or any(row.get(k) is None for k in ("image", "caption")):
                    raise ImcapError(f"{path}:{reader.line_num}: wrong number of columns")
                yield reader.line_num, row
        except csv.Error as exc:
            raise ImcapError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None

    return _group_rows(rows(), path)


def _from_jsonl(path: Path) -> list[ImageRecord]:
    """JSON Lines: one object per line with keys image, caption (or captions: [...]) and optionally split."""

    def rows() -> Iterable[tuple[int, dict[str, Any]]]:
        for lineno, line in enumerate(_read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ImcapError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ImcapError(f"{path}:{lineno}: expected an object with image and caption")
            yield lineno, row

    return _group_rows(rows(), path)
