"""The export folder: weights in safetensors, everything else in JSON, so loading it runs no pickle.

    config.json        {"format": "imcap-export", "version", "model_args", "image_size", "files": {name: {bytes, sha256}},
                        "training": {iteration, epoch, best_score, best_iteration, metrics, options},
                        "data": {path, fingerprint, splits}, "onnx": {...} (with --onnx), "created", "imcap_version"}
    model.safetensors  the model's state dict
    vocab.json         {"idx_to_word": [...]}
    README.md          a model card for people
    encoder.onnx, decoder_step.onnx   with --onnx (see onnx_graphs.py)

The folder is built in a temporary folder beside the target and renamed into place, so a crash leaves
either no export or a whole one. Every file's size and SHA-256 are in config.json and checked on load.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from imcap import __version__
from imcap.data.fingerprint import data_fingerprint
from imcap.data.vocab import Vocab
from imcap.errors import ImcapError
from imcap.export.card import model_card
from imcap.files import fsync_dir, reporting_disk_errors
from imcap.models.caption_model import CaptionModel, build_model, model_args_from_dict

FORMAT = "imcap-export"
VERSION = 1
CONFIG, WEIGHTS, VOCAB, CARD = "config.json", "model.safetensors", "vocab.json", "README.md"
INFO_KEYS = ("iteration", "epoch", "best_score", "best_iteration", "metrics", "options")


def is_export_folder(path: str | Path) -> bool:
    """Whether `path` is a folder that looks like an export (config.json or model.safetensors, and no run checkpoint)."""
    path = Path(path)
    if not path.is_dir() or (path / "best.pt").exists() or (path / "last.pt").exists():
        return False
    return (path / CONFIG).exists() or (path / WEIGHTS).exists()


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _finite(obj: Any) -> Any:
    """`obj` with NaN/inf floats as None, so that config.json is strict JSON."""
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def describe_data(path: str, fingerprint: str = "") -> dict:
    """{"path", "fingerprint", "splits"} of the training data; fingerprint and splits from the folder when it is still there."""
    info: dict = {"path": path, "fingerprint": fingerprint or "", "splits": None}
    if not path or not Path(path).is_dir():
        return info
    if not info["fingerprint"]:
        info["fingerprint"] = data_fingerprint(path)
    try:
        images = json.loads((Path(path) / "images.json").read_text(encoding="utf-8"))["images"]
        splits: dict[str, int] = {}
        for im in images:
            splits[str(im["split"])] = splits.get(str(im["split"]), 0) + 1
        info["splits"] = splits
    except (OSError, ValueError, KeyError, TypeError):
        pass  # the card says "unknown"
    return info


def export_config(model: CaptionModel, vocab: Vocab, info: dict, source: str) -> dict:
    """The config.json of an export (without "files", which `write_export` adds)."""
    options = info.get("options") or {}
    return _finite({
        "format": FORMAT,
        "version": VERSION,
        "imcap_version": __version__,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model_args": asdict(model.args),
        "image_size": model.encoder.input_size,
        "feature_kind": model.feature_kind,
        "conditioned": model.conditioned,
        "has_attention": bool(model.decoder.has_attention),
        "vocab_size": len(vocab),
        "parameters": sum(p.numel() for p in model.parameters()),
        "source": source,
        "training": {k: info.get(k) for k in INFO_KEYS},
        "data": describe_data(str(options.get("data") or ""), str(info.get("data_fingerprint") or "")),
    })


def write_weights(model: CaptionModel, path: Path) -> None:
    """The model's state dict as safetensors (every tensor a contiguous CPU copy)."""
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": FORMAT})


def write_export(out: str | Path, model: CaptionModel, vocab: Vocab, info: dict, source: str, overwrite: bool = False,
                 extra: Callable[[CaptionModel, Path], dict] | None = None) -> Path:
    """Write the export folder `out` atomically; `extra(model, tmp)` may add files (ONNX) and returns config entries."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ImcapError(f"--out {out}: exists and is a file")
    replacing = out.is_dir() and any(out.iterdir())
    if replacing and not overwrite:
        raise ImcapError(f"--out {out}: folder exists and is not empty (pass --overwrite to replace an earlier export)")
    if replacing and not (out / CONFIG).is_file():
        raise ImcapError(f"--out {out}: not an imcap export folder (no {CONFIG}); refusing to replace it")
    if replacing:
        foreign = _not_exported(out)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ImcapError(f"--out {out}: holds files the export did not write ({shown}); move them out of the folder, "
                             "then --overwrite replaces the export")

    def fill(tmp: Path) -> None:
        write_weights(model, tmp / WEIGHTS)
        (tmp / VOCAB).write_text(json.dumps(vocab.to_dict()), encoding="utf-8")
        config = export_config(model, vocab, info, source)
        if extra is not None:
            config.update(extra(model, tmp))
        config["files"] = {f.name: {"bytes": f.stat().st_size, "sha256": sha256_of(f)} for f in sorted(tmp.iterdir())}
        (tmp / CARD).write_text(model_card(config, out.name), encoding="utf-8")
        (tmp / CONFIG).write_text(json.dumps(config, indent=2), encoding="utf-8")

    with reporting_disk_errors(out):
        _replace_folder(out, fill)
    return out


def _not_exported(out: Path) -> list[str]:
    """Entries of an export folder that the export did not write (e.g. `imcap eval`'s eval-test/): names, folders with a slash."""
    try:
        written = set(json.loads((out / CONFIG).read_text(encoding="utf-8")).get("files", {}))
    except (OSError, ValueError, AttributeError):
        written = set()
    written |= {CONFIG, CARD}
    return sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir() if p.name not in written)


def _replace_folder(out: Path, fill: Callable[[Path], None]) -> None:
    """Build a folder with `fill(tmp)` beside `out`, fsync it, and rename it to `out` (an old `out` is removed after)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.*.tmp"):  # left by a killed export
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old: Path | None = None
    try:
        fill(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give the folder the usual permissions
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(tmp)
        if out.is_dir() and any(out.iterdir()):
            old = out.parent / f".{out.name}.old.tmp"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
        os.replace(tmp, out)  # also replaces an empty folder
        fsync_dir(out.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def read_config(folder: str | Path) -> dict:
    """config.json of an export folder, checked for format and version; one-line ImcapError otherwise."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise ImcapError(f"{folder}: not a complete imcap export (no {CONFIG})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImcapError(f"{path}: unreadable or truncated JSON ({exc.__class__.__name__})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ImcapError(f"{path}: not an imcap export config (no '{FORMAT}' format marker)")
    if not isinstance(config.get("version"), int) or config["version"] > VERSION:
        raise ImcapError(f"{path}: export version {config.get('version')!r} is newer than this imcap understands")
    for key in ("model_args", "files"):
        if not isinstance(config.get(key), dict):
            raise ImcapError(f"{path}: '{key}' is missing or malformed")
    return config


def check_file(folder: Path, config: dict, name: str) -> Path:
    """The path of export file `name`, after checking it exists with the size and SHA-256 that config.json lists."""
    path = folder / name
    expected = config["files"].get(name)
    if not isinstance(expected, dict):
        raise ImcapError(f"{folder / CONFIG}: lists no {name}")
    if not path.is_file():
        raise ImcapError(f"{path}: missing from the export")
    size = path.stat().st_size
    if size != expected.get("bytes"):
        raise ImcapError(f"{path}: {size} bytes, but the export wrote {expected.get('bytes')} (truncated or replaced)")
    if sha256_of(path) != expected.get("sha256"):
        raise ImcapError(f"{path}: contents differ from the export (SHA-256 mismatch)")
    return path


def read_vocab(folder: Path, config: dict) -> Vocab:
    """The vocabulary of an export folder."""
    path = check_file(folder, config, VOCAB)
    try:
        return Vocab.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as exc:
        raise ImcapError(f"{path}: not an imcap vocabulary ({exc.__class__.__name__})") from None


def read_export(folder: str | Path) -> tuple[CaptionModel, Vocab, dict]:
    """Rebuild (model on the CPU in eval mode, vocabulary, info) from an export folder; safetensors and JSON only."""
    folder = Path(folder)
    config = read_config(folder)
    weights = check_file(folder, config, WEIGHTS)
    vocab = read_vocab(folder, config)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ImcapError(f"{weights}: not a readable safetensors file ({str(exc).splitlines()[0][:120]})") from None
    try:
        args = model_args_from_dict(config["model_args"])
        model = build_model(args, cnn_weights=None)
        model.load_state_dict(state)
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise ImcapError(f"{weights}: weights do not match the model in {CONFIG} ({str(exc).splitlines()[0][:120]})") from None
    if args.vocab_size != vocab.vocab_size:
        raise ImcapError(f"{folder / VOCAB}: {vocab.vocab_size} words, but the model has {args.vocab_size}")
    training = config.get("training") or {}
    info = {k: training.get(k) for k in INFO_KEYS}
    info["data_fingerprint"] = (config.get("data") or {}).get("fingerprint")
    info["export"] = {"path": str(folder), "created": config.get("created"), "source": config.get("source")}
    return model.eval(), vocab, info

