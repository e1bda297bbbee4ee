"""Caption-file readers: Karpathy splits, neuraltalk2 raw lists, Flickr8k, COCO, CSV/JSONL, `imcap synth` folders.

Every reader returns `ImageRecord`s with a split in {"train", "val", "test"} and non-empty captions.
Split rules: Karpathy "restval" counts as train; "dev"/"validation" count as val; files without a split get a
deterministic 90/5/5 split from a hash of the image name (`hash_split`).

Ids are normalised (`1`, `1.0` and `"1"` are all "1"); an id listed twice is an error naming both places.
An image file listed under two ids or in two splits is an error too, or with `dedupe` kept at its first listing.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import posixpath
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
MAX_EXTRA_DEPTH = 32  # extra per-image fields (kept in images.json) may nest this many lists/objects deep


@dataclass
class ImageRecord:
    """One image: its id, path (relative to the image root, or absolute), split, captions and extra fields."""

    image_id: str
    file_path: str
    split: str
    captions: list[str]
    extra: dict = field(default_factory=dict)
    where: str = field(default="", repr=False, compare=False)  # where the file lists it, for error messages


@dataclass
class CaptionSet:
    """What a reader found: the records, the absolute image root, the format and counts of what was dropped."""

    records: list[ImageRecord]
    image_root: str
    format: str
    dropped: dict[str, int] = field(default_factory=dict)


def read_captions(path: str | Path, format: str | None = None, image_root: str | None = None,
                  dedupe: bool = False) -> tuple[list[ImageRecord], str]:
    """Return the image records of a caption file (format detected unless given) and the image root."""
    found = load_captions(path, format, image_root, dedupe)
    return found.records, found.image_root


def load_captions(path: str | Path, format: str | None = None, image_root: str | None = None,
                  dedupe: bool = False) -> CaptionSet:
    """Return a `CaptionSet` for `path`: records with empty captions and caption-less images removed.

    An image file listed more than once (under two ids or in two splits) is an error, or with `dedupe` only its
    first listing is kept (the count of dropped listings is `dropped["duplicate_images"]`).
    """
    path = Path(path)
    if not path.exists():
        raise ImcapError(f"{path}: file not found")
    if format is not None and format not in FORMATS:
        raise ImcapError(f"{path}: unknown format {format!r} (choose from {', '.join(FORMATS)})")
    data: Any = None
    if format is None:
        format, data = _detect(path)
    dropped: dict[str, int] = {}
    shared_images = False  # whether one image may have several records (ids) in one split
    if format in ("karpathy", "synth"):
        json_path = _synth_captions(path) if format == "synth" or path.is_dir() else path
        data = _load_json(json_path) if data is None else data
        records = _from_karpathy(data, json_path)
        default_root = json_path.parent
        # A task other than captions (`imcap synth --task vqa`) has one record per question about an image.
        shared_images = isinstance(data, dict) and data.get("task", "captions") != "captions"
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
    records, duplicates = _check_duplicates(records, path, root.resolve(), dedupe, shared_images)
    if dedupe:
        dropped["duplicate_images"] = duplicates
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


class _NonFinite(ValueError):
    """Raised while parsing by a JSON number that is NaN, Infinity or too large for a float."""


def _non_finite(token: str) -> float:
    raise _NonFinite(token)


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _NonFinite(token)
    return value


def _parse_json(text: str, where: str) -> Any:
    """Return the parsed JSON `text`; NaN/Infinity, overflowing numbers and runaway nesting are one-line errors."""
    try:
        return json.loads(text, object_hook=_drop_tokens, parse_constant=_non_finite, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise ImcapError(f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except _NonFinite as exc:
        raise ImcapError(f"{where}: invalid JSON{_line_of(text, str(exc))}: {exc} is not a finite number") from None
    except RecursionError:
        raise ImcapError(f"{where}: invalid JSON: lists/objects nested too deeply to read") from None


def _line_of(text: str, token: str) -> str:
    """Return " at line N" for the first `token` standing as a JSON value in `text` ("" when not found)."""
    match = re.search(r"[\[:,]\s*" + re.escape(token) + r"\s*[,\]}]", text)
    return f" at line {text.count(chr(10), 0, match.end()) + 1}" if match else ""


def _load_json(path: Path) -> Any:
    """Return the parsed JSON of a file or raise a one-line ImcapError."""
    return _parse_json(_read_text(path), str(path))


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


def _image_id(value: Any, where: str, key: str) -> str:
    """Return the normalised id in `value`: whole numbers as integers (`1`, `1.0`, `"1"` -> "1"), strings stripped."""
    image_id = _normal_id(value)
    if image_id is None:
        raise _id_error(value, where, key)
    return image_id


def _normal_id(value: Any) -> str | None:
    """Return the normalised id in `value`, or None when it is not one (a list, an object, true, null, "").

    Parsing has already turned NaN, Infinity and overflowing numbers into errors, so a float here is finite.
    """
    if type(value) is int:  # the common case first: COCO ids
        return str(value)
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _id_error(value: Any, where: str, key: str) -> ImcapError:
    got = "an empty string" if isinstance(value, str) else _type_name(value)
    return ImcapError(f"{where}: {key!r} must be a string or a number, got {got}")


def _type_name(value: Any) -> str:
    """Return how JSON spells the type of `value` ("a list", "an object", "true", "null")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return {list: "a list", dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _file_name(value: Any, where: str, key: str) -> str:
    """Return `value` when it is a non-empty string (an image path), else raise a one-line error."""
    if isinstance(value, str) and value.strip():
        return value
    raise _path_error(value, where, key)


def _path_error(value: Any, where: str, key: str) -> ImcapError:
    got = "an empty string" if isinstance(value, str) else _type_name(value)
    return ImcapError(f"{where}: {key!r} must be a non-empty string, got {got}")


def _depth(value: Any, limit: int) -> int:
    """Return how many lists/objects deep `value` nests, counting no further than `limit` + 1."""
    if limit < 0 or not isinstance(value, (list, dict)):
        return 0
    items = value.values() if isinstance(value, dict) else value
    return 1 + max((_depth(v, limit - 1) for v in items), default=0)


def _extra(item: dict, known: set[str], where: str) -> dict:
    """Return the fields of `item` outside `known`, checking that none nests deeper than MAX_EXTRA_DEPTH."""
    extra = {k: v for k, v in item.items() if k not in known}
    for key, value in extra.items():
        if _depth(value, MAX_EXTRA_DEPTH) > MAX_EXTRA_DEPTH:
            raise ImcapError(f"{where}: field {key!r} nests lists/objects more than {MAX_EXTRA_DEPTH} levels deep")
    return extra


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


def _duplicate_id(path: Path, first: ImageRecord, rec: ImageRecord) -> ImcapError:
    return ImcapError(f"{path}: image id {rec.image_id!r} appears twice: {first.where} and {rec.where}")


def _file_key(folder: str, file_path: str) -> str:
    """Return the normalised absolute path of `file_path` under `folder` (an absolute, normalised path)."""
    if "\\" in file_path or file_path.startswith(("/", "./", "../")) or "/." in file_path or "//" in file_path \
            or file_path.endswith("/") or file_path in (".", ".."):
        return posixpath.normpath(posixpath.join(folder, file_path.replace("\\", "/")))
    return f"{folder.rstrip('/')}/{file_path}"  # already normal: skip normpath, most of this check's time


def _check_duplicates(records: list[ImageRecord], path: Path, root: Path, dedupe: bool,
                      shared_images: bool = False) -> tuple[list[ImageRecord], int]:
    """Return the records without repeated image files (only with `dedupe`) and how many listings were dropped.

    An id listed twice is always an error. A file listed under two ids or in two splits is an error, or with
    `dedupe` only its first listing (in file order) is kept. With `shared_images` (records are questions about
    images) one file may have several ids within one split.
    """
    by_id: dict[str, tuple[ImageRecord, str]] = {}
    by_file: dict[str, ImageRecord] = {}
    kept: list[ImageRecord] = []
    repeated: set[str] = set()
    first_drop = ""
    folder = root.as_posix()
    for rec in records:
        key = _file_key(folder, rec.file_path)
        same_id = by_id.setdefault(rec.image_id, (rec, key))
        if same_id[0] is not rec and same_id[1] != key:
            raise _duplicate_id(path, same_id[0], rec)
        first = by_file.setdefault(key, rec)
        if first is rec:
            kept.append(rec)
            continue
        if first.image_id == rec.image_id and first.split == rec.split:
            raise _duplicate_id(path, first, rec)
        if shared_images and first.split == rec.split:
            kept.append(rec)
            continue
        if not dedupe:
            what = f"in two splits ({first.split} and {rec.split})" if first.split != rec.split else "under two ids"
            raise ImcapError(f"{path}: image {rec.file_path} is listed {what}: {first.where} and {rec.where} "
                             "(--dedupe keeps the first listing)")
        repeated.add(key)
        first_drop = first_drop or f"{rec.file_path} at {rec.where}"
    dropped = len(records) - len(kept)
    if dropped:
        log.warning("%s: %d image file(s) are listed more than once; kept the first listing of each and dropped "
                    "%d later listing(s) with their captions (first: %s)", path, len(repeated), dropped, first_drop)
    return kept, dropped


def _clean(records: Iterable[ImageRecord], path: Path) -> tuple[list[ImageRecord], dict[str, int]]:
    """Drop empty captions, then images left without captions; fail when nothing is left."""
    kept: list[ImageRecord] = []
    empty = no_caption = 0
    for rec in records:
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
        filename = _file_name(img["filename"], where, "filename")
        folder = img.get("filepath") or ""
        if not isinstance(folder, str):
            raise ImcapError(f"{where}: 'filepath' must be a string, got {_type_name(folder)}")
        file_path = str(PurePosixPath(folder, filename))
        key = "cocoid" if img.get("cocoid") is not None else "id"
        raw_id = img.get(key)
        if raw_id is None:
            image_id, located = _stem(filename), f"image #{i} ({file_path})"
        else:
            image_id, located = _image_id(raw_id, where, key), f"image #{i} ({key} {raw_id!r})"
        sentences = img["sentences"]
        if not isinstance(sentences, list):
            raise ImcapError(f"{where}: 'sentences' must be a list")
        captions = []
        for s in sentences:
            if isinstance(s, str):
                captions.append(s)
            elif isinstance(s, dict) and isinstance(s.get("raw"), str):
                captions.append(s["raw"])
            elif isinstance(s, dict) and isinstance(s.get("tokens"), list) \
                    and all(isinstance(t, str) for t in s["tokens"]):
                captions.append(" ".join(s["tokens"]))
            else:
                raise ImcapError(f"{where}: a sentence has neither 'raw' nor 'tokens'")
        records.append(ImageRecord(
            image_id=image_id,
            file_path=file_path,
            split=_split(img["split"], where),
            captions=captions,
            extra=_extra(img, _KARPATHY_KEYS, where),
            where=located,
        ))
    return records


def _from_raw(data: Any, path: Path) -> list[ImageRecord]:
    """neuraltalk2's raw list: [{"file_path": ..., "captions": [...]}, ...] (optional "id", "split")."""
    if not isinstance(data, list):
        raise ImcapError(f"{path}: not a neuraltalk2 raw list (expected [{{file_path, captions}}, ...])")
    records = []
    for i, item in enumerate(data):
        where = f"{path}: item #{i}"
        if not isinstance(item, dict) or "file_path" not in item or "captions" not in item:
            raise ImcapError(f"{where}: needs 'file_path' (a string) and 'captions'")
        file_path = _file_name(item["file_path"], where, "file_path")
        if "id" in item:
            image_id, located = _image_id(item["id"], where, "id"), f"item #{i} (id {item['id']!r})"
        else:
            image_id, located = file_path, f"item #{i} ({file_path})"  # the path as written: a.jpg, a.png differ
        records.append(ImageRecord(
            image_id=image_id,
            file_path=file_path,
            split=_split(item["split"], where) if "split" in item else hash_split(file_path),
            captions=_captions(item["captions"], where),
            extra=_extra(item, _RAW_KEYS, where),
            where=located,
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
        prefix = f"{file.name} " if path.is_dir() else ""
        records.extend(_from_coco_file(file, data if file == path and data is not None else _load_json(file), prefix))
    root = folder.parent if folder.name == "annotations" else folder
    return records, root


def _from_coco_file(path: Path, data: Any, prefix: str = "") -> list[ImageRecord]:
    """One COCO caption file; `prefix` (the file name when reading a folder) starts each record's `where`."""
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
            or not isinstance(data.get("annotations"), list):
        raise ImcapError(f"{path}: not a COCO caption file (expected {{\"images\": [...], \"annotations\": [...]}})")
    match = _COCO_NAME.search(path.name)
    split = match.group(1).lower() if match else None
    subdir = f"{match.group(1)}{match.group(2)}" if match else ""
    by_id: dict[str, ImageRecord] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise ImcapError(f"{path}: images[{i}] needs 'id' and 'file_name'")
        name, image_id = img["file_name"], _normal_id(img["id"])
        if not isinstance(name, str) or not name.strip():
            raise _path_error(name, f"{path}: images[{i}]", "file_name")
        if image_id is None:
            raise _id_error(img["id"], f"{path}: images[{i}]", "id")
        file_path = str(PurePosixPath(subdir, name)) if subdir else name
        rec = ImageRecord(image_id, file_path, split or hash_split(file_path), [], {},
                          where=f"{prefix}images[{i}] (id {img['id']!r})")
        first = by_id.setdefault(image_id, rec)
        if first is not rec:
            raise _duplicate_id(path, first, rec)
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or "image_id" not in ann or not isinstance(ann.get("caption"), str):
            raise ImcapError(f"{path}: annotations[{i}] needs 'image_id' and 'caption' (a string)")
        raw_id = ann["image_id"]
        image_id = str(raw_id) if type(raw_id) is int else _normal_id(raw_id)  # inline the common case
        if image_id is None:
            raise _id_error(raw_id, f"{path}: annotations[{i}]", "image_id")
        found = by_id.get(image_id)
        if found is None:
            raise ImcapError(f"{path}: annotations[{i}] refers to unknown image id {raw_id!r}")
        found.captions.append(ann["caption"])
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
    records = [ImageRecord(_stem(name), name, split_of[name], caps, {}, where=name)
               for name, caps in captions.items() if name in split_of]
    root = next((d / sub for d in (folder, folder.parent) for sub in _FLICKR8K_IMAGE_DIRS if (d / sub).is_dir()),
                folder)
    return records, root, dropped


def _group_rows(rows: Iterable[tuple[int, dict[str, Any]]], path: Path) -> list[ImageRecord]:
    """Group (line number, row) pairs with keys image, caption[s], split by image and split, in first-seen order.

    The id is the image path as written, extension included; an image in two splits gives two records with one id
    (reported by `_check_duplicates`).
    """
    records: dict[tuple[str, str], ImageRecord] = {}
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        if row.get("image") in (None, ""):
            raise ImcapError(f"{where}: missing image name")
        image = _file_name(row["image"], where, "image").strip()
        captions = row.get("captions", row.get("caption"))
        if captions is None:
            raise ImcapError(f"{where}: missing caption")
        split_value = row.get("split")
        split = _split(split_value, where) if split_value not in (None, "") else hash_split(image)
        rec = records.get((image, split))
        if rec is None:
            rec = records[image, split] = ImageRecord(image, image, split, [], {}, where=f"line {lineno} ({image})")
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
                row = json.loads(line, parse_constant=_non_finite, parse_float=_finite_float)
            except json.JSONDecodeError as exc:
                raise ImcapError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
            except _NonFinite as exc:
                raise ImcapError(f"{path}:{lineno}: invalid JSON ({exc} is not a finite number)") from None
            except RecursionError:
                raise ImcapError(f"{path}:{lineno}: invalid JSON (lists/objects nested too deeply to read)") from None
            if not isinstance(row, dict):
                raise ImcapError(f"{path}:{lineno}: expected an object with image and caption")
            yield lineno, row

    return _group_rows(rows(), path)
