"""Search indexes: gallery features in appendable shards, always consistent, searched through FAISS (dual) or by
scoring every image (GNA).

INDEX/ (a folder)
  index.json            {"format": "imcap-search-index", "version": 2, "model": {"path", "kind", "fingerprint"},
                         "dim", "dtype", "count", "shards": [{"name", "count"}],
                         "structure": {"kind": "flat"|"ivf"|"hnsw", "auto", "count", "file", "params"}}
  <shard>.npy           (count, dim) gallery features: unit-length embeddings (dual, float16) or visual units plus
                        the image half of the LSTM input (gna, float32)
  <shard>.paths.json    the image paths of the shard's rows, in order (absolute for images, as given for --paths)
  faiss-<id>.index      the ivf or hnsw structure over the first structure.count rows (`imcap.search.faiss_index`);
                        a flat structure is built from the shards when the index is opened, and gna is always flat

A shard's files are written first and index.json is replaced last (write, fsync, rename), so readers and an
interrupted build always see a complete index. Every finished shard is committed, so rerunning an interrupted
build (or indexing a folder again) adds only the images the index does not hold yet; the structure is brought
up to date once at the end of a build. One writer at a time.
An index built from precomputed vectors without --model records {"path": "", "kind": "dual", "fingerprint": ""}.
Version 1 indexes (no "structure") open as flat; appending to one upgrades it to version 2.
"""
from __future__ import annotations

import html
import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imcap.checkpoint import resolve_checkpoint
from imcap.data.images import find_images
from imcap.errors import ImcapError
from imcap.files import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temporaries,
    thumbnail_data_uri,
)
from imcap.search import faiss_index
from imcap.search.data import encode_query, load_image_uint8, pad_ids
from imcap.search.models import LoadedModel, SearchModel, load_search_model
from imcap.progress import progress_bar

log = logging.getLogger(__name__)

INDEX_FORMAT, INDEX_VERSION = "imcap-search-index", 2
MANIFEST = "index.json"
KINDS = ("auto", *faiss_index.KINDS)
SHARD_BYTES = 256 << 20  # features per shard file (and in memory while building)
CHUNK_ROWS = 65536  # rows read from the shards (or an --embeddings file) at a time
QUERY_CHUNK_BYTES = 64 << 20  # gna: gallery rows turned into a float32 tensor at a time while querying a large index
RESIDENT_BYTES = 2 << 30  # gna: an index whose float32 features fit in this is kept in memory after the first query
NO_MODEL = {"path": "", "kind": "dual", "fingerprint": ""}  # the model record of vectors indexed without --model
UNIT_TOLERANCE = 1e-2  # --embeddings rows must have an L2 norm within this of 1


@dataclass
class IndexReport:
    """What a build did: rows added, already held, in total, the bad images skipped and the structure kind."""

    path: Path
    added: int
    already: int
    total: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    kind: str = "flat"


# ---------------------------------------------------------------- the manifest and the shards


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
        raise ImcapError(f"{file}: malformed search index (missing or mistyped fields); rebuild it")
    return manifest


def _well_formed(manifest: dict) -> bool:
    try:
        model, shards, structure = manifest["model"], manifest["shards"], manifest.get("structure")
        return (isinstance(model["path"], str) and isinstance(model["fingerprint"], str) and model["kind"] in ("gna", "dual")
                and isinstance(manifest["dim"], int) and isinstance(manifest["count"], int) and manifest["dtype"] in ("float16", "float32")
                and all(isinstance(s["name"], str) and isinstance(s["count"], int) for s in shards)
                and (structure is None or (structure["kind"] in faiss_index.KINDS and isinstance(structure["count"], int)
                                           and isinstance(structure["params"], dict) and (structure["file"] is None or isinstance(structure["file"], str)))))
    except (KeyError, TypeError):
        return False


def _new_manifest(model: dict, dim: int) -> dict:
    dtype = "float16" if model["kind"] == "dual" else "float32"
    return {"format": INDEX_FORMAT, "version": INDEX_VERSION, "model": model, "dim": dim, "dtype": dtype, "count": 0, "shards": []}


def _shard_paths(root: Path, name: str) -> list[str]:
    try:
        return json.loads((root / f"{name}.paths.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ImcapError(f"{root / (name + '.paths.json')}: missing or unreadable index shard ({exc.__class__.__name__})") from None


def _known_paths(root: Path, manifest: dict | None) -> set[str]:
    known: set[str] = set()
    for shard in (manifest or {}).get("shards", []):
        known.update(_shard_paths(root, shard["name"]))
    return known


def _model_record(loaded: LoadedModel) -> dict:
    return {"path": loaded.path, "kind": loaded.model.kind, "fingerprint": loaded.fingerprint}


def _describe(record: dict) -> str:
    return f"{record.get('kind')} {record['path']}" if record.get("path") else "precomputed vectors with no --model"


def _check_same_model(root: Path, built: dict, record: dict) -> None:
    """Refuse `record`'s model (or no model) for the index at `root` built with model record `built`."""
    if built.get("fingerprint") != record["fingerprint"]:
        raise ImcapError(f"{root}: index was built with another model ({_describe(built)}), not {_describe(record)}; "
                         "rebuild it into a new --out")


def _open_for_writing(out: Path) -> dict | None:
    """The manifest of the index at `out`, None for a new index (after checking `out` may become one)."""
    if out.exists() and not out.is_dir():
        raise ImcapError(f"{out}: exists and is not a folder (an index is a folder)")
    manifest = _read_manifest(out) if (out / MANIFEST).exists() else None
    if manifest is None and out.is_dir() and any(out.iterdir()):
        raise ImcapError(f"{out}: folder is not empty and holds no search index; choose a new --out")
    return manifest


def _check_kind(kind: str, model_kind: str) -> None:
    if kind not in KINDS:
        raise ImcapError(f"--kind {kind}: choose one of {', '.join(KINDS)}")
    if model_kind == "gna" and kind not in ("auto", "flat"):
        raise ImcapError(f"--kind {kind}: a gna index scores every (sentence, image) pair with its LSTM; only flat applies")


def _remove_orphans(root: Path, manifest: dict | None) -> None:
    """Delete the shard and structure files (and temporaries) that an interrupted build wrote but never committed."""
    remove_stale_temporaries(root)
    keep = {s["name"] for s in (manifest or {}).get("shards", [])}
    structure = (manifest or {}).get("structure") or {}
    for file in [*root.glob("shard-*"), *root.glob("faiss-*")]:
        if file.name.split(".")[0] not in keep and file.name != structure.get("file"):
            file.unlink(missing_ok=True)


class _ShardWriter:
    """Collects (features, paths) batches and commits them as shards of at most `rows` rows each."""

    def __init__(self, root: Path, manifest: dict, shard_rows: int = 0) -> None:
        self.root, self.manifest, self.added = root, manifest, 0
        itemsize = np.dtype(manifest["dtype"]).itemsize
        self.rows = shard_rows or max(1024, SHARD_BYTES // (manifest["dim"] * itemsize))
        self.feats: list[np.ndarray] = []
        self.paths: list[str] = []

    def add(self, feats: np.ndarray, paths: list[str]) -> None:
        """Queue rows `feats` (n, dim) named by `paths`; commit a shard whenever `rows` are queued."""
        self.feats.append(feats.astype(self.manifest["dtype"]))
        self.paths.extend(paths)
        if len(self.paths) >= self.rows:
            self.flush()

    def flush(self) -> None:
        """Write the queued rows as one shard (features, then paths), then the manifest that lists it."""
        if not self.paths:
            return
        array = np.concatenate(self.feats)  # (n, dim)
        name = f"shard-{uuid.uuid4().hex[:12]}"

        def write_npy(tmp: Path) -> None:
            with open(tmp, "wb") as fp:
                np.save(fp, array)

        atomic_write(self.root / f"{name}.npy", write_npy, needed_bytes=array.nbytes)
        atomic_write_text(self.root / f"{name}.paths.json", json.dumps(self.paths))
        self.manifest["shards"].append({"name": name, "count": len(self.paths)})
        self.manifest["count"] += len(self.paths)
        self.manifest["version"] = INDEX_VERSION
        atomic_write_json(self.root / MANIFEST, self.manifest)
        self.added += len(self.paths)
        self.feats, self.paths = [], []


def _open_shards(root: Path, manifest: dict) -> tuple[list[np.ndarray], list[str]]:
    """The shards' features (memory-mapped) and the image paths of all rows, checked against the manifest."""
    features: list[np.ndarray] = []
    paths: list[str] = []
    for shard in manifest["shards"]:
        try:
            array = np.load(root / f"{shard['name']}.npy", mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise ImcapError(f"{root / (shard['name'] + '.npy')}: missing or unreadable index shard ({exc.__class__.__name__})") from None
        names = _shard_paths(root, shard["name"])
        if array.shape != (shard["count"], manifest["dim"]) or len(names) != shard["count"]:
            raise ImcapError(f"{root}: shard {shard['name']} does not match index.json (damaged index; rebuild it)")
        features.append(array)
        paths.extend(names)
    return features, paths


def _chunks(features: list[np.ndarray], start: int = 0) -> Iterator[np.ndarray]:
    """The rows from `start` on of the shards `features`, as float32 arrays of up to CHUNK_ROWS rows."""
    offset = 0
    for array in features:
        for s in range(max(0, start - offset), len(array), CHUNK_ROWS):
            yield np.asarray(array[s:s + CHUNK_ROWS], dtype=np.float32)  # (c, dim)
        offset += len(array)


def _sample(features: list[np.ndarray], count: int, seed: int = 0) -> np.ndarray:
    """`count` rows (all when fewer) drawn without replacement from the shards, float32 (m, dim)."""
    total = sum(len(a) for a in features)
    rows = np.sort(np.random.default_rng(seed).choice(total, min(count, total), replace=False))
    parts, offset = [], 0
    for array in features:
        mine = rows[(rows >= offset) & (rows < offset + len(array))] - offset
        parts.append(np.asarray(array[mine], dtype=np.float32))
        offset += len(array)
    return np.concatenate(parts)


# ---------------------------------------------------------------- the faiss structure


def _choose_kind(kind: str, old: dict | None, manifest: dict) -> tuple[str, bool]:
    """(structure kind, whether it was chosen by --kind auto) for the index after this build."""
    if manifest["model"]["kind"] == "gna":
        return "flat", kind == "auto"
    if kind != "auto":
        return kind, False
    if old is not None and not old.get("auto", True):
        return old["kind"], False  # an index built with an explicit --kind keeps it
    return faiss_index.auto_kind(manifest["count"]), True


def _sync_structure(root: Path, manifest: dict, kind: str, progress: bool) -> str:
    """Bring the structure up to date with every row of the shards (extend, or build anew), commit it; return its kind."""
    old = manifest.get("structure")
    total = manifest["count"]
    chosen, auto = _choose_kind(kind, old, manifest)
    if old and old["kind"] == chosen and old["count"] == total:
        if old.get("auto", True) != auto:
            old["auto"] = auto
            atomic_write_json(root / MANIFEST, manifest)
        return chosen
    record: dict[str, Any] = {"kind": chosen, "auto": auto, "count": total, "file": None, "params": {}}
    if chosen != "flat":
        features, _ = _open_shards(root, manifest)
        extendable = (old is not None and old["kind"] == chosen and old["file"] and (root / old["file"]).is_file()
                      and old["count"] <= total
                      and (chosen != "ivf" or total <= faiss_index.IVF_RETRAIN_GROWTH * old["params"]["trained_on"]))
        bar = progress_bar(total=total - (old["count"] if extendable else 0), desc=f"{chosen} structure", unit="vec",
                   disable=not progress or total < 2 * CHUNK_ROWS)

        def counted(start: int) -> Iterator[np.ndarray]:
            for chunk in _chunks(features, start):
                yield chunk
                bar.update(len(chunk))

        if extendable:
            record["params"] = old["params"]
            structure = faiss_index.read_structure(root / old["file"], chosen, old["params"])
            faiss_index.add_vectors(structure, counted(old["count"]))
        else:
            record["params"] = faiss_index.default_params(chosen, total)
            structure = faiss_index.build_structure(chosen, manifest["dim"], record["params"], lambda: counted(0),
                                                    lambda m: _sample(features, m))
        bar.close()
        record["file"] = f"faiss-{uuid.uuid4().hex[:12]}.index"
        faiss_index.write_structure(structure, root / record["file"])
    manifest["structure"] = record
    manifest["version"] = INDEX_VERSION
    atomic_write_json(root / MANIFEST, manifest)
    if old and old.get("file") and old["file"] != record["file"]:
        (root / old["file"]).unlink(missing_ok=True)
    return chosen


# ---------------------------------------------------------------- building


@torch.no_grad()
def build_index(model: str | Path, images: list[str], out: str | Path, batch_size: int = 64, device: str = "auto",
                shard_rows: int = 0, progress: bool = True, kind: str = "auto") -> IndexReport:
    """Add the images named by `images` (files, folders, globs) to the index at `out`, creating it if needed.

    Bad images are skipped and listed in the report; images the index already holds are not added again.
    `kind` (auto, flat, ivf, hnsw) is the search structure; auto is flat below 100k images.
    """
    from imcap.devices import pick_device

    out = Path(out)
    manifest = _open_for_writing(out)
    loaded = load_search_model(model, pick_device(device))
    _check_kind(kind, loaded.model.kind)
    if loaded.model.kind == "dual":
        faiss_index.require_faiss()
    record = _model_record(loaded)
    if manifest is not None:
        _check_same_model(out, manifest["model"], record)
    files = find_images(list(images))
    known = _known_paths(out, manifest)
    todo = [f for f in files if str(f.resolve()) not in known]
    manifest = manifest or _new_manifest(record, _feature_dim(loaded))
    out.mkdir(parents=True, exist_ok=True)
    _remove_orphans(out, manifest)
    writer = _ShardWriter(out, manifest, shard_rows)
    report = IndexReport(out, 0, len(files) - len(todo), manifest["count"])
    size = loaded.model.encoder.input_size
    bar = progress_bar(total=len(todo), desc="index", unit="img", disable=not progress or len(todo) < 2 * batch_size)
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
        if tensors:
            pixels = torch.stack(tensors).float().div_(255.0).to(loaded.model.encoder.mean.device)  # (B, 3, S, S)
            writer.add(loaded.model.image_features(pixels).float().cpu().numpy(), names)  # (B, F)
    bar.close()
    writer.flush()
    if not manifest["shards"]:
        first = report.skipped[0][1] if report.skipped else "no images"
        raise ImcapError(f"{out}: no image could be indexed ({len(report.skipped)} skipped; first: {first})")
    report.kind = _sync_structure(out, manifest, kind, progress)
    report.added, report.total = writer.added, manifest["count"]
    return report


def read_path_list(file: str | Path) -> list[str]:
    """The lines of a --paths file (one image path per line, in row order), checked: none empty, none repeated."""
    file = Path(file)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ImcapError(f"--paths {file}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ImcapError(f"--paths {file}: unreadable ({exc.__class__.__name__}); expected UTF-8 text, one path per line") from None
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise ImcapError(f"--paths {file}: line {number} is empty (one image path per line)")
        if line in seen:
            raise ImcapError(f"--paths {file}: line {number} repeats line {seen[line]} ({line})")
        seen[line] = number
    return lines


def open_vectors(file: str | Path, rows: int, dim: int | None, dim_source: str) -> np.ndarray:
    """The (rows, dim) float array of an --embeddings .npy file, memory-mapped, checked: shape, dtype, finite, unit length."""
    file = Path(file)
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise ImcapError(f"--embeddings {file}: file not found") from None
    except (OSError, ValueError) as exc:
        raise ImcapError(f"--embeddings {file}: not a NumPy .npy array ({exc.__class__.__name__})") from None
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        raise ImcapError(f"--embeddings {file}: expected a 2-d (N, D) array of vectors, got shape {getattr(array, 'shape', '?')}")
    if array.dtype not in (np.float16, np.float32, np.float64):
        raise ImcapError(f"--embeddings {file}: dtype {array.dtype}; expected float16, float32 or float64")
    if len(array) != rows:
        raise ImcapError(f"--embeddings {file}: {len(array)} vectors, but --paths names {rows} images (one path per row)")
    if dim is not None and array.shape[1] != dim:
        raise ImcapError(f"--embeddings {file}: {array.shape[1]}-d vectors, but {dim_source} {dim}-d")
    for start in range(0, len(array), CHUNK_ROWS):
        chunk = np.asarray(array[start:start + CHUNK_ROWS], dtype=np.float32)  # (c, D)
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():
            raise ImcapError(f"--embeddings {file}: row {start + int(np.argmin(finite))} holds NaN or infinity")
        norms = np.linalg.norm(chunk, axis=1)
        bad = np.abs(norms - 1) > UNIT_TOLERANCE
        if bad.any():
            row = int(np.argmax(bad))
            raise ImcapError(f"--embeddings {file}: row {start + row} has length {norms[row]:.4g}; "
                             "the index needs unit-length (L2-normalised) vectors")
    return array


def build_index_from_vectors(embeddings: str | Path, paths: str | Path, out: str | Path, model: str | Path | None = None,
                             kind: str = "auto", shard_rows: int = 0, progress: bool = True) -> IndexReport:
    """Add precomputed unit-length vectors (an (N, D) .npy file) named by `paths` (a text file, one path per line) to
    the index at `out`, creating it if needed; no model runs. `model`, a dual run, is recorded so text queries can use it.

    Paths the index already holds are not added again. Bad inputs are one-line ImcapErrors before anything is written.
    """
    out = Path(out)
    manifest = _open_for_writing(out)
    faiss_index.require_faiss()
    loaded = load_search_model(model, "cpu") if model else None
    if loaded is not None and loaded.model.kind != "dual":
        raise ImcapError(f"--model {model}: a gna model; precomputed --embeddings need a dual model (gna scores pairs with its LSTM)")
    _check_kind(kind, "dual")
    record = _model_record(loaded) if loaded is not None else dict(NO_MODEL)
    if manifest is not None:
        _check_same_model(out, manifest["model"], record)
    names = read_path_list(paths)
    if not names:
        raise ImcapError(f"--paths {paths}: no paths (the file is empty)")
    dim, source = ((manifest["dim"], f"the index {out} holds") if manifest is not None
                   else (_feature_dim(loaded), f"--model {model} makes") if loaded is not None else (None, ""))
    array = open_vectors(embeddings, len(names), dim, source)
    known = _known_paths(out, manifest)
    keep = np.array([i for i, p in enumerate(names) if p not in known], dtype=np.int64)
    manifest = manifest or _new_manifest(record, int(array.shape[1]))
    out.mkdir(parents=True, exist_ok=True)
    _remove_orphans(out, manifest)
    writer = _ShardWriter(out, manifest, shard_rows)
    everything = len(keep) == len(names)
    bar = progress_bar(total=len(keep), desc="index", unit="vec", disable=not progress or len(keep) < 2 * CHUNK_ROWS)
    for start in range(0, len(keep), CHUNK_ROWS):
        rows = keep[start:start + CHUNK_ROWS]
        feats = array[start:start + len(rows)] if everything else array[rows]  # (c, D): a slice reads the file in order
        writer.add(np.asarray(feats), [names[i] for i in rows])
        bar.update(len(rows))
    bar.close()
    writer.flush()
    kind_built = _sync_structure(out, manifest, kind, progress)
    return IndexReport(out, writer.added, len(names) - len(keep), manifest["count"], kind=kind_built)


# ---------------------------------------------------------------- querying


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
    """An opened index: the model that embeds queries (None for vectors indexed without one), the image paths,
    and the search structure (dual: a faiss index; gna: the memory-mapped shards, every pair scored)."""

    def __init__(self, root: Path, manifest: dict, loaded: LoadedModel | None, device: torch.device | None = None) -> None:
        self.root, self.manifest, self.loaded = root, manifest, loaded
        self.device = device or torch.device("cpu")
        self.features, self.paths = _open_shards(root, manifest)
        record = manifest.get("structure") or {"kind": "flat", "count": manifest["count"], "file": None, "params": {}}
        self.index_kind: str = record["kind"]
        self._structure: Any = None
        self._gpu_resources: Any = None
        if self.kind == "dual":
            self._structure = self._open_structure(record)
        self._resident: list[torch.Tensor] | None = None

    def _open_structure(self, record: dict) -> Any:
        if record["kind"] == "flat":
            structure = faiss_index.new_structure("flat", self.manifest["dim"], {})
            faiss_index.add_vectors(structure, _chunks(self.features))
        else:
            if record["count"] != len(self):
                raise ImcapError(f"{self.root}: its {record['kind']} structure covers {record['count']} of {len(self)} images "
                                 "(an interrupted build?); run `imcap search index` on it again to finish it")
            structure = faiss_index.read_structure(self.root / record["file"], record["kind"], record["params"])
        if self.device.type == "cuda":
            structure, self._gpu_resources = faiss_index.to_gpu(structure, record["kind"], self.device.index or 0)
        return structure

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def kind(self) -> str:
        """The model kind, gna or dual."""
        return self.manifest["model"]["kind"]

    def blocks(self, device: torch.device | str = "cpu") -> Iterator[torch.Tensor]:
        """gna: the gallery features as float32 tensors, in row order: held in memory when they fit RESIDENT_BYTES,
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

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> None:
        """Trade speed for recall at query time: ivf scans `nprobe` cells, hnsw keeps `ef_search` candidates (more: slower, closer to exact)."""
        params = {key: value for key, value in (("nprobe", nprobe), ("ef_search", ef_search)) if value is not None}
        if any(value < 1 for value in params.values()):
            raise ImcapError(f"search parameters must be at least 1, got {params}")
        if self._structure is not None and self.index_kind in ("ivf", "hnsw"):
            faiss_index.set_search_params(self._structure, self.index_kind, {**self.manifest["structure"]["params"], **params})

    def search_vectors(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Dual: the cosines (Q, k) and gallery rows (Q, k) of the k best images for unit-length queries (Q, D), best
        first; rows are -1 past the end of a small index (or of what ivf's probed cells hold)."""
        if self._structure is None:
            raise ImcapError(f"{self.root}: a gna index scores (sentence, image) pairs; it has no vector search")
        if k < 1:
            raise ImcapError(f"-k must be at least 1, got {k}")
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.manifest["dim"]:
            raise ImcapError(f"query vectors must have shape (Q, {self.manifest['dim']}), got {queries.shape}")
        return self._structure.search(queries, k)

    @torch.no_grad()
    def query_batch(self, texts: list[str], k: int = 10) -> list[list[tuple[str, float]]]:
        """The k best images for each text, best first, as (path, score) (dual: cosine; gna: affinity in (0, 1))."""
        if k < 1:
            raise ImcapError(f"-k must be at least 1, got {k}")
        if self.loaded is None:
            raise ImcapError(f"{self.root}: the index records no model (precomputed vectors); pass --model RUN to query it by text")
        if not texts:
            return []
        model = self.loaded.model
        device = model.encoder.mean.device
        tokens = pad_ids([encode_query(t, self.loaded.vocab, self.loaded.max_length) for t in texts]).to(device)  # (Q, T)
        if len(self) == 0:
            return [[] for _ in texts]
        text = model.text_features(tokens)
        if self._structure is None:
            best, found = top_k(model, text, self.blocks(device), k)  # (Q, k), (Q, k)
            scores, rows = model.to_probability(best).numpy(), found.numpy()
        else:
            scores, rows = self.search_vectors(text.float().cpu().numpy(), k)  # (Q, k), (Q, k)
        return [[(self.paths[int(r)], float(s)) for r, s in zip(rows[q], scores[q]) if r >= 0] for q in range(len(texts))]

    def query(self, text: str, k: int = 10) -> list[tuple[str, float]]:
        """The k best images for one text, best first, as (path, score)."""
        return self.query_batch([text], k)[0]


def load_index(path: str | Path, device: str = "cpu", model: str | Path | None = None, vectors_only: bool = False) -> SearchIndex:
    """Open the index at `path` and load the model it records (or check that `model` is that model); device: cpu, cuda, auto.

    An index of precomputed vectors with no recorded model needs `model` (a dual run making vectors of its size) to
    answer text queries; `vectors_only=True` opens it for `search_vectors` alone.
    """
    from imcap.devices import pick_device

    dev = pick_device(device)
    root = Path(path)
    if not root.exists():
        raise ImcapError(f"{root}: search index not found; build one with `imcap search index --model M --images DIR --out {root}`")
    if not root.is_dir():
        raise ImcapError(f"{root}: not a search index (an index is a folder)")
    manifest = _read_manifest(root)
    record = manifest["model"]
    if record["kind"] == "dual":
        faiss_index.require_faiss()
    loaded = _model_of(root, record, model, dev, vectors_only)
    if loaded is not None and manifest["dim"] != _feature_dim(loaded):
        raise ImcapError(f"{root}: features have {manifest['dim']} values per image, the model makes {_feature_dim(loaded)}; rebuild the index")
    return SearchIndex(root, manifest, loaded, dev)


def _model_of(root: Path, record: dict, model: str | Path | None, device: torch.device, vectors_only: bool) -> LoadedModel | None:
    """The model that embeds the queries of the index at `root` (built with `record`), checked; None when not needed."""
    if model is not None:
        loaded = load_search_model(model, device)
        if record["fingerprint"]:
            _check_same_model(root, record, _model_record(loaded))
        elif loaded.model.kind != "dual":
            raise ImcapError(f"--model {model}: a gna model; an index of precomputed vectors is queried with a dual model")
        return loaded
    if not record["path"]:
        if vectors_only:
            return None
        raise ImcapError(f"{root}: the index records no model (precomputed vectors); pass --model RUN (the dual model that made them)")
    try:
        resolve_checkpoint(record["path"])
    except ImcapError:
        raise ImcapError(f"{root}: the model this index was built with is gone ({record['path']}); restore it or rebuild the index") from None
    loaded = load_search_model(record["path"], device)
    if loaded.fingerprint != record["fingerprint"]:
        raise ImcapError(f"{root}: {record['path']} has changed since this index was built (another model); rebuild the index")
    return loaded


def _feature_dim(loaded: LoadedModel) -> int:
    a = loaded.model.args
    return a.embed_size if loaded.model.kind == "dual" else a.units + 4 * a.rnn_size


# ---------------------------------------------------------------- HTML page of the hits


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
        parts.append(f"<div class='hit'><a href='{html.escape(uri)}'><img src='{thumbnail_data_uri(path, 160)}' alt='{html.escape(Path(path).name)}'></a>"
                     f"<div class='rank'>#{rank} &middot; {score:.4f}</div><div>{html.escape(path)}</div></div>")
    parts.append("</div></body></html>")
    atomic_write_text(out, "\n".join(parts))
    return Path(out)
