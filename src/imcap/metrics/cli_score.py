"""`imcap score`: read references and predictions in the usual caption file formats, print and save the metrics."""
from __future__ import annotations

import json
import logging
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from imcap.errors import ImcapError

log = logging.getLogger(__name__)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file, with one-line errors for missing files, non-UTF-8 bytes and bad JSON."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ImcapError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImcapError(f"{path}: is a directory, expected a JSON file") from None
    except UnicodeDecodeError as exc:
        raise ImcapError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    except OSError as exc:
        raise ImcapError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImcapError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def _caption(value: Any, path: Path, where: str) -> str:
    if not isinstance(value, str):
        raise ImcapError(f"{path}: {where}: caption is not a string")
    return value


def load_references(path: str | Path) -> tuple[dict[str, list[str]], list[dict[str, str]]]:
    """References from COCO annotations, a Karpathy split file or {id: [captions]}.

    Returns {key: captions} plus alias tables (for Karpathy files: by cocoid, file name, file stem
    and imgid) that `match_ids` can use to find the keys predictions are written with.
    """
    path = Path(path)
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        refs: dict[str, list[str]] = {}
        for n, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
                raise ImcapError(f"{path}: annotation {n} needs 'image_id' and 'caption'")
            refs.setdefault(str(ann["image_id"]), []).append(_caption(ann["caption"], path, f"annotation {n}"))
        return refs, []
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        refs = {}
        aliases: list[dict[str, str]] = [{}, {}, {}, {}]
        for n, img in enumerate(data["images"]):
            if not isinstance(img, dict) or not isinstance(img.get("sentences"), list):
                raise ImcapError(f"{path}: image {n} has no 'sentences' list (not a Karpathy split file?)")
            caps = []
            for s in img["sentences"]:
                raw = s.get("raw") if isinstance(s, dict) else None
                if raw is None and isinstance(s, dict) and isinstance(s.get("tokens"), list):
                    raw = " ".join(s["tokens"])
                caps.append(_caption(raw, path, f"image {n}"))
            key = f"#{n}"
            refs[key] = caps
            name = str(img.get("filename", ""))
            for table, alias in zip(aliases, (img.get("cocoid"), name or None, Path(name).stem if name else None,
                                              img.get("imgid"))):
                if alias is not None:
                    table[str(alias)] = key
        return refs, [a for a in aliases if a]
    if isinstance(data, dict):
        refs = {}
        for key, caps in data.items():
            if isinstance(caps, str):
                caps = [caps]
            if not isinstance(caps, list):
                raise ImcapError(f"{path}: image {key!r}: expected a list of captions")
            refs[str(key)] = [_caption(c, path, f"image {key!r}") for c in caps]
        return refs, []
    raise ImcapError(f"{path}: expected COCO annotations, a Karpathy split file or {{image_id: [captions]}}")


def load_predictions(path: str | Path) -> dict[str, str]:
    """Predictions from COCO results ([{"image_id", "caption"}, ...]) or {image_id: caption}."""
    path = Path(path)
    data = read_json(path)
    preds: dict[str, str] = {}
    if isinstance(data, list):
        for n, item in enumerate(data):
            if not isinstance(item, dict) or "image_id" not in item or "caption" not in item:
                raise ImcapError(f"{path}: result {n} needs 'image_id' and 'caption'")
            key = str(item["image_id"])
            if key in preds:
                raise ImcapError(f"{path}: image {item['image_id']!r} has more than one prediction")
            preds[key] = _caption(item["caption"], path, f"result {n}")
        return preds
    if isinstance(data, dict):
        for key, cap in data.items():
            if isinstance(cap, list) and len(cap) == 1:
                cap = cap[0]
            preds[str(key)] = _caption(cap, path, f"image {key!r}")
        return preds
    raise ImcapError(f"{path}: expected COCO results [{{image_id, caption}}, ...] or {{image_id: caption}}")


def match_ids(refs: dict[str, list[str]], aliases: list[dict[str, str]], preds: dict[str, str],
              refs_path: str | Path, preds_path: str | Path) -> dict[Hashable, list[str]]:
    """References keyed like the predictions; a clear error when some predictions have none."""
    tables = [{k: k for k in refs}] if not aliases else aliases
    best = max(tables, key=lambda t: sum(k in t for k in preds))
    missing = [k for k in preds if k not in best]
    if missing:
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise ImcapError(f"{preds_path}: {len(missing)} of {len(preds)} image id(s) have no references in "
                         f"{refs_path} ({shown})")
    return {k: refs[best[k]] for k in preds}


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON (one-line error when the file cannot be written)."""
    path = Path(path)
    try:
        path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ImcapError(f"{path}: cannot write ({exc.strerror})") from None


def format_table(corpus: dict[str, float], n_images: int, skipped: dict[str, str]) -> str:
    """The metrics as an aligned two-column table."""
    width = max([len("metric")] + [len(m) for m in corpus])
    lines = [f"{'metric':<{width}}  score", f"{'-' * width}  ------"]
    lines += [f"{m:<{width}}  {v:.4f}" for m, v in corpus.items()]
    lines += [f"{m:<{width}}  skipped: {why}" for m, why in skipped.items()]
    lines.append(f"({n_images} images)")
    return "\n".join(lines)


def run(refs_path: str, preds_path: str, metrics: list[str] | None = None, per_image: str | None = None,
        out: str | None = None, tokenize: bool = True, meteor_jar: str | None = None, spice_jar: str | None = None,
        java: str | None = None) -> int:
    """Score the predictions, print a table, write the JSON files asked for; return the exit code."""
    from imcap.metrics.scoring import evaluate, metric_names

    names = metric_names(metrics)
    refs, aliases = load_references(refs_path)
    preds = load_predictions(preds_path)
    if not preds:
        raise ImcapError(f"{preds_path}: no predictions")
    matched = match_ids(refs, aliases, preds, refs_path, preds_path)
    result = evaluate(matched, preds, names, tokenize=tokenize, meteor_jar=meteor_jar, spice_jar=spice_jar, java=java)
    print(format_table(result.corpus, len(preds), result.skipped))
    if out:
        write_json(out, {"metrics": result.corpus, "images": len(preds), "skipped": result.skipped})
    if per_image:
        write_json(per_image, {str(k): v for k, v in result.per_image.items()})
    if metrics and result.skipped:  # named in --metrics: not computing it is an error (the default set only notes it)
        name, why = next(iter(result.skipped.items()))
        raise ImcapError(f"--metrics asked for {', '.join(result.skipped)}, which could not run ({name}: {why}); "
                         "the other scores are above" + (" and in the files written" if out or per_image else ""))
    return 0
