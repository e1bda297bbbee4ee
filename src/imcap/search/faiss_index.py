"""FAISS structures over unit-length embeddings, searched by inner product (= cosine): flat, ivf and hnsw.

- flat: exact search (`IndexScalarQuantizer`), built in memory when an index is opened; nothing is saved.
- ivf:  inverted lists (`IndexIVFScalarQuantizer`): k-means cells, a query scans the `nprobe` nearest cells.
- hnsw: a navigable small-world graph (`IndexHNSWSQ`): a query walks the graph keeping `ef_search` candidates.

All three keep the vectors as float16 (faiss QT_fp16), what the index shards hold, so they lose nothing to them
and take half the memory of float32 (a flat search of one query also reads half the bytes: 4-6x faster here than
float32 `IndexFlatIP`, though batches of 64 are 3-4x slower, as they miss BLAS). ivf and hnsw are saved as one
file beside the shards.
faiss is optional (the `scale` extra); `require_faiss` says how to install it.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from imcap.errors import ImcapError
from imcap.files import atomic_write

KINDS = ("flat", "ivf", "hnsw")
AUTO_FLAT_BELOW = 100_000  # `--kind auto`: exact search below this many images, LARGE_KIND from here on
LARGE_KIND = "ivf"  # on 1M clustered vectors it beat hnsw on recall, speed, build time and memory (docs/search.md)
HNSW_M = 32  # graph neighbours per vector (level 0 keeps 2 M)
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 128
IVF_LISTS_PER_SQRT = 4  # nlist = 4 sqrt(N), the usual rule for million-scale sets
IVF_PROBE_SHARE = 128  # a query scans nprobe = nlist / 128 cells (at least 16): 31 of 4,000 at 1M vectors
IVF_TRAIN_PER_LIST = 64  # k-means runs on a sample of this many vectors per list
IVF_RETRAIN_GROWTH = 4  # an appended ivf index is rebuilt once it holds 4x the vectors it was trained on
BLAS_FROM_QUERIES = 20  # flat search / k-means use BLAS from this many queries (faiss 1.15's default, 128,000, is ~5x slower here)


def require_faiss() -> Any:
    """The faiss module, or a one-line ImcapError saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise ImcapError("search indexes of dual models need faiss, which is not installed: pip install 'imcap[scale]'") from None
    faiss.cvar.distance_compute_blas_threshold = BLAS_FROM_QUERIES
    return faiss


def auto_kind(count: int) -> str:
    """The kind `--kind auto` picks for an index of `count` vectors."""
    return "flat" if count < AUTO_FLAT_BELOW else LARGE_KIND


def default_params(kind: str, count: int) -> dict[str, int]:
    """Build and search parameters of a `kind` structure over `count` vectors (JSON-ready, stored in index.json)."""
    if kind == "ivf":
        nlist = max(1, min(round(IVF_LISTS_PER_SQRT * math.sqrt(count)), count))
        return {"nlist": nlist, "nprobe": min(nlist, max(16, nlist // IVF_PROBE_SHARE)), "trained_on": count}
    if kind == "hnsw":
        return {"M": HNSW_M, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH}
    return {}


def new_structure(kind: str, dim: int, params: dict[str, int]) -> Any:
    """An empty faiss index of `kind` for `dim`-d vectors, inner-product metric."""
    faiss = require_faiss()
    fp16 = faiss.ScalarQuantizer.QT_fp16
    if kind == "flat":
        return faiss.IndexScalarQuantizer(dim, fp16, faiss.METRIC_INNER_PRODUCT)
    if kind == "ivf":
        index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, params["nlist"], fp16, faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # small indexes: no warning, the sample is what it is
        index.cp.max_points_per_centroid = IVF_TRAIN_PER_LIST
    elif kind == "hnsw":
        index = faiss.IndexHNSWSQ(dim, fp16, params["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params["ef_construction"]
    else:
        raise ValueError(f"unknown structure kind {kind!r}")
    set_search_params(index, kind, params)
    return index


def set_search_params(index: Any, kind: str, params: dict[str, int]) -> None:
    """Apply the query-time parameters (ivf: nprobe, hnsw: ef_search) to a faiss index."""
    if kind == "ivf":
        index.nprobe = params["nprobe"]
    elif kind == "hnsw":
        index.hnsw.efSearch = params["ef_search"]


def build_structure(kind: str, dim: int, params: dict[str, int], chunks: Callable[[], Iterable[np.ndarray]],
                    sample: Callable[[int], np.ndarray]) -> Any:
    """A faiss index of `kind` holding every vector of `chunks()` (float32 (c, dim) arrays, in row order).

    ivf is first trained on `sample(m)`, m vectors drawn from the whole set.
    """
    index = new_structure(kind, dim, params)
    if not index.is_trained:
        index.train(np.ascontiguousarray(sample(params["nlist"] * IVF_TRAIN_PER_LIST), dtype=np.float32))
    for chunk in chunks():
        index.add(np.ascontiguousarray(chunk, dtype=np.float32))
    return index


def add_vectors(index: Any, chunks: Iterable[np.ndarray]) -> None:
    """Append the vectors of `chunks` (float32 (c, dim) arrays) to a built faiss index."""
    for chunk in chunks:
        index.add(np.ascontiguousarray(chunk, dtype=np.float32))


def write_structure(index: Any, path: Path) -> None:
    """Save a faiss index to `path` atomically."""
    faiss = require_faiss()
    atomic_write(path, lambda tmp: faiss.write_index(index, str(tmp)))


def read_structure(path: Path, kind: str, params: dict[str, int]) -> Any:
    """Load a faiss index saved by `write_structure`, with its query-time parameters set."""
    faiss = require_faiss()
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise ImcapError(f"{path}: missing or unreadable {kind} structure ({str(exc).splitlines()[0][:80]}); rebuild the index") from None
    set_search_params(index, kind, params)
    return index


def to_gpu(index: Any, kind: str, device_index: int) -> tuple[Any, Any]:
    """(index on the GPU, its resources) for flat and ivf when faiss was built with GPUs; else (index, None).

    faiss has no GPU flat float16 index, so flat becomes a float32 `GpuIndexFlatIP` of the same vectors.
    """
    faiss = require_faiss()
    if kind == "hnsw" or not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return index, None
    resources = faiss.StandardGpuResources()
    if kind == "flat":
        config = faiss.GpuIndexFlatConfig()
        config.device = device_index
        gpu = faiss.GpuIndexFlatIP(resources, index.d, config)
        gpu.add(index.reconstruct_n(0, index.ntotal))  # (N, D) float32
        return gpu, resources
    return faiss.index_cpu_to_gpu(resources, device_index, index), resources
