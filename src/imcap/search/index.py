"""Search indexes: the gallery features of image folders, written in shards, appendable, always consistent.

INDEX/ (a folder)
  index.json            {"format": "imcap-search-index", "version": 1, "model": {"path", "kind", "fingerprint"},
                         "dim", "dtype", "count", "shards": [{"name", "count"}]}
  <shard>.npy           (count, dim) gallery features: unit-length embeddings (dual, float16) or visual units plus
                        the image half of the LSTM input (gna, float32)
  <shard>.paths.json    the absolute image paths of the shard's rows, in order

A shard's files are written first and index.json is replaced last (write, fsync, rename), so readers and an
interrupted build always see a complete index. Every finished shard is committed, so rerunning an interrupted
build (or indexing a folder again) adds only the images the index does not hold yet. One writer at a time.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from imcap.checkpoint import atomic_write, atomic_write_json, atomic_write_text, resolve_checkpoint
from imcap.data.images import find_images
from imcap.errors import ImcapError
from imcap.search.data import encode_query, load_image_uint8, pad_ids
from imcap.search.models import LoadedModel, SearchModel, load_search_model

log = logging.getLogger(__name__)

INDEX_FORMAT, INDEX_VERSION = "imcap-search-index", 1
MANIFEST = "index.json"
SHARD_BYTES = 256 << 20  # features per shard file (and in memory while building)
QUERY_CHUNK_BYTES = 64 << 20  # gallery rows turned into a float32 tensor at a time while querying a large index
RESIDENT_BYTES = 2 << 30  # an index whose float32 features fit in this is kept in memory after the first query


@dataclass
class IndexReport:
    """What `build_index` did."""

    path: Path
    added: int
    already: int
    total: int
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _read_manifest(root: Path) -> dict:
    file = root / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ImcapError(f"{root}: not a search index (no {MANIFEST}); build one with `imcap search index`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ImcapError(f"{file}: unreadable search index ({exc.__class__.__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise ImcapError(f"{file}: not an imcap search index (no '{INDEX_FORMAT}' marker)")
    if manifest.get("version", 0) > INDEX_VERSION:
        raise ImcapError(f"{file}: index version {manifest['version']} is newer than this imcap understands")
    if not _well_formed(manifest):
        raise ImcapError(f"{file}: malformed search index (missing or mistyped fields)")
    return manifest


def _well_formed(manifest: dict) -> bool:
    try:
        model, shards = manifest["model"], manifest["shards"]
        return (isinstance(model["path"], str) and isinstance(model["fingerprint"], str) and isinstance(manifest["dim"], int)
                and isinstance(manifest["count"], int) and manifest["dtype"] in ("float16", "float32")
                and all(isinstance(s["name"], str) and isinstance(s["count"], int) for s in shards))
    except (KeyError, TypeError):
        return False


def _shard_paths(root: Path, name: str) -> list[str]:
    try:
        return json.loads((root / f"{name}.paths.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ImcapError(f"{root / (name + '.paths.json')}: missing or unreadable index shard ({exc.__class__.__name__})") from None


def _model_record(loaded: LoadedModel) -> dict:
    return {"path": loaded.path, "kind": loaded.model.kind, "fingerprint": loaded.fingerprint}


def _check_same_model(root: Path, manifest: dict, loaded: LoadedModel) -> None:
    rec = manifest["model"]
    if rec.get("fingerprint") != loaded.fingerprint:
        raise ImcapError(f"{root}: index was built with another model ({rec.get('kind')} {rec.get('path')}), not {loaded.path}; "
                         "rebuild it into a new --out")


def _remove_orphans(root: Path, manifest: dict | None) -> None:
    """Delete shard files that an interrupted build wrote but never committed."""
    keep = {s["name"] for s in (manifest or {}).get("shards", [])}
    for file in root.glob("shard-*"):
        if file.name.split(".")[0] not in keep:
            file.unlink(missing_ok=True)


def _commit(root: Path, manifest: dict, feats: list[np.ndarray], paths: list[str]) -> None:
    """Write one shard (features + paths), then the manifest that lists it."""
    array = np.concatenate(feats)  # (n, dim)
    name = f"shard-{uuid.uuid4().hex[:12]}"

    def write_npy(tmp: Path) -> None:
        with open(tmp, "wb") as fp:
            np.save(fp, array)

    atomic_write(root / f"{name}.npy", write_npy)
    atomic_write_text(root / f"{name}.paths.json", json.dumps(paths))
    manifest["shards"].append({"name": name, "count": len(paths)})
    manifest["count"] += len(paths)
    atomic_write_json(root / MANIFEST, manifest)


@torch.no_grad()
def build_index(model: str | Path, images: list[str], out: str | Path, batch_size: int = 64, device: str = "auto",
                shard_rows: int = 0, progress: bool = True) -> IndexReport:
    """Add the images named by `images` (files, folders, globs) to the index at `out`, creating it if needed.

    Bad images are skipped and listed in the report; images the index already holds are not added again.
    """
    from imcap.captioner import pick_device

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ImcapError(f"{out}: exists and is not a folder (an index is a folder)")
    manifest = _read_manifest(out) if (out / MANIFEST).exists() else None
    if manifest is None and out.is_dir() and any(out.iterdir()):
        raise ImcapError(f"{out}: folder is not empty and holds no search index; choose a new --out")
    loaded = load_search_model(model, pick_device(device))
    if manifest is not None:
        _check_same_model(out, manifest, loaded)
    files = find_images(list(images))
    known: set[str] = set()
    if manifest is not None:
        for shard in manifest["shards"]:
            known.update(_shard_paths(out, shard["name"]))
    todo = [f for f in files if str(f.resolve()) not in known]
    already = len(files) - len(todo)
    out.mkdir(parents=True, exist_ok=True)
    _remove_orphans(out, manifest)
    size = loaded.model.encoder.input_size
    report = IndexReport(out, 0, already, manifest["count"] if manifest else 0)
    pending: list[np.ndarray] = []
    pending_paths: list[str] = []
    bar = tqdm(total=len(todo), desc="index", unit="img", disable=not progress or len(todo) < 2 * batch_size)
    for start in range(0, len(todo), batch_size):
        tensors, names = [], []
        for f in todo[start:start + batch_size]:
            try:
                tensors.append(load_image_uint8(f, size))
                names.append(str(f.resolve()))
            except ImcapError as exc:
                report.skipped.append((str(f), str(exc)))
                log.warning("skipped %s", exc)
        bar.update(len(todo[start:start + batch_size]))
        if not tensors:
            continue
        pixels = torch.stack(tensors).float().div_(255.0).to(loaded.model.encoder.mean.device)  # (B, 3, S, S)
        feats = loaded.model.image_features(pixels).float().cpu().numpy()  # (B, F)
        if manifest is None:
            dtype = "float16" if loaded.model.kind == "dual" else "float32"
            manifest = {"format": INDEX_FORMAT, "version": INDEX_VERSION, "model": _model_record(loaded),
                        "dim": int(feats.shape[1]), "dtype": dtype, "count": 0, "shards": []}
        pending.append(feats.astype(manifest["dtype"]))
        pending_paths.extend(names)
        rows = shard_rows or max(1024, SHARD_BYTES // (manifest["dim"] * np.dtype(manifest["dtype"]).itemsize))
        if len(pending_paths) >= rows:
            _commit(out, manifest, pending, pending_paths)
            report.added += len(pending_paths)
            pending, pending_paths = [], []
    bar.close()
    if pending_paths:
        _commit(out, manifest, pending, pending_paths)
        report.added += len(pending_paths)
    if manifest is None:
        first = report.skipped[0][1] if report.skipped else "no images"
        raise ImcapError(f"{out}: no image could be indexed ({len(report.skipped)} skipped; first: {first})")
    report.total = manifest["count"]
    return report


@torch.no_grad()
def top_k(model: SearchModel, text: Any, blocks: Iterable[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best scores (Q, k) and their gallery rows (Q, k) of queries `text` over gallery blocks given in row order."""
    best: torch.Tensor | None = None
    best_rows = torch.zeros(0, dtype=torch.long)
    offset = 0
    for gallery in blocks:
        scores = model.scores(text, gallery).float().cpu()  # (Q, c)
        values, rows = scores.topk(min(k, scores.size(1)), dim=1)  # the block's own best (Q, <=k)
        rows += offset
        if best is not None:
            values, rows = torch.cat([best, values], 1), torch.cat([best_rows, rows], 1)
            values, pick = values.topk(min(k, values.size(1)), dim=1)
            rows = rows.gather(1, pick)
        best, best_rows = values, rows
        offset += len(gallery)
    if best is None:
        raise ImcapError("the index is empty")
    return best, best_rows


class SearchIndex:
    """An opened index: the model that embeds queries, and the shards (memory-mapped) with their image paths."""

    def __init__(self, root: Path, manifest: dict, loaded: LoadedModel) -> None:
        self.root, self.manifest, self.loaded = root, manifest, loaded
        self.features: list[np.ndarray] = []
        self.paths: list[str] = []
        for shard in manifest["shards"]:
            try:
                array = np.load(root / f"{shard['name']}.npy", mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise ImcapError(f"{root / (shard['name'] + '.npy')}: missing or unreadable index shard ({exc.__class__.__name__})") from None
            names = _shard_paths(root, shard["name"])
            if array.shape != (shard["count"], manifest["dim"]) or len(names) != shard["count"]:
                raise ImcapError(f"{root}: shard {shard['name']} does not match index.json (damaged index; rebuild it)")
            self.features.append(array)
            self.paths.extend(names)
        self._resident: list[torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def kind(self) -> str:
        """The model kind, gna or dual."""
        return self.loaded.model.kind

    def blocks(self, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
        """The gallery features as float32 tensors, in row order: held in memory when they fit RESIDENT_BYTES,
        else read from the memory-mapped shards QUERY_CHUNK_BYTES at a time."""
        if self._resident is None and 4 * len(self) * self.manifest["dim"] <= RESIDENT_BYTES:
            self._resident = [torch.from_numpy(np.array(a, dtype=np.float32)).to(device) for a in self.features]
        if self._resident is not None:
            yield from self._resident
            return
        chunk = max(1, QUERY_CHUNK_BYTES // (4 * self.manifest["dim"]))
        for array in self.features:
            for s in range(0, len(array), chunk):
                yield torch.from_numpy(np.array(array[s:s + chunk], dtype=np.float32)).to(device)  # (c, F)

    @torch.no_grad()
    def search(self, texts: list[str], k: int = 10) -> list[list[tuple[str, float]]]:
        """The k best images for each text, best first, as (path, score) (dual: cosine; gna: affinity in (0, 1))."""
        if k < 1:
            raise ImcapError(f"-k must be at least 1, got {k}")
        model = self.loaded.model
        device = model.encoder.mean.device
        tokens = pad_ids([encode_query(t, self.loaded.vocab, self.loaded.max_length) for t in texts]).to(device)  # (Q, T)
        if len(self) == 0:
            return [[] for _ in texts]
        best, rows = top_k(model, model.text_features(tokens), self.blocks(device), k)
        shown = model.to_probability(best)
        return [[(self.paths[int(r)], float(v)) for r, v in zip(rows[q], shown[q])] for q in range(len(texts))]

    def query(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        """The k best images for one text, best first, as (path, score)."""
        return self.search([text], k)[0]


def load_index(path: str | Path, device: str = "cpu", model: str | Path | None = None) -> SearchIndex:
    """Open the index at `path` and load the model it records (or check that `model` is that model); device: cpu, cuda, auto."""
    from imcap.captioner import pick_device

    dev = pick_device(device)
    root = Path(path)
    if not root.exists():
        raise ImcapError(f"{root}: search index not found; build one with `imcap search index --model M --images DIR --out {root}`")
    if not root.is_dir():
        raise ImcapError(f"{root}: not a search index (an index is a folder)")
    manifest = _read_manifest(root)
    record, dim = manifest["model"], manifest["dim"]
    if model is not None:
        loaded = load_search_model(model, dev)
        _check_same_model(root, manifest, loaded)
    else:
        try:
            resolve_checkpoint(record["path"])
        except ImcapError:
            raise ImcapError(f"{root}: the model this index was built with is gone ({record['path']}); "
                             "restore it or rebuild the index") from None
        loaded = load_search_model(record["path"], dev)
        if loaded.fingerprint != record["fingerprint"]:
            raise ImcapError(f"{root}: {record['path']} has changed since this index was built (another model); rebuild the index")
    if dim != _feature_dim(loaded):
        raise ImcapError(f"{root}: features have {dim} values per image, the model makes {_feature_dim(loaded)}; rebuild the index")
    return SearchIndex(root, manifest, loaded)


def _feature_dim(loaded: LoadedModel) -> int:
    a = loaded.model.args
    return a.embed_size if loaded.model.kind == "dual" else a.units + 4 * a.rnn_size


# ---------------------------------------------------------------- HTML page of the hits


def _thumbnail(path: str, side: int = 160) -> str:
    """A small PNG data URI of an image file (empty when it cannot be read)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((side, side))
            buf = io.BytesIO()
            im.save(buf, format="PNG")
    except (OSError, ValueError):
        return ""
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}.grid{display:flex;flex-wrap:wrap;gap:1em}
.hit{width:180px;border:1px solid #ddd;border-radius:6px;padding:.5em;font-size:.85em;word-break:break-all}
.hit img{width:160px;height:160px;object-fit:contain;image-rendering:pixelated;display:block}.rank{font-weight:600}"""


def write_hits_html(out: str | Path, query: str, hits: list[tuple[str, float]], kind: str = "") -> Path:
    """Write a self-contained HTML page of the ranked hits of `query` (thumbnails, scores, links to the files)."""
    title = f"imcap search: {query}"
    score_name = {"dual": "cosine", "gna": "affinity"}.get(kind, "score")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{html.escape(query)}</h1><p>{len(hits)} best image(s), {html.escape(kind or 'search')} model, {score_name} shown.</p>",
             "<div class='grid'>"]
    for rank, (path, score) in enumerate(hits, 1):
        uri = Path(path).as_uri() if Path(path).is_absolute() else html.escape(path)
        parts.append(f"<div class='hit'><a href='{html.escape(uri)}'><img src='{_thumbnail(path)}' alt='{html.escape(Path(path).name)}'></a>"
                     f"<div class='rank'>#{rank} &middot; {score:.4f}</div><div>{html.escape(path)}</div></div>")
    parts.append("</div></body></html>")
    atomic_write_text(out, "\n".join(parts))
    return Path(out)
