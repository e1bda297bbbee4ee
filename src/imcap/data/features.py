"""Precomputed image features: what `imcap features` writes, and region features from other tools.

A features directory is one of:
- written by `imcap features`: meta.json + pooled.npy (N, D) and/or spatial.npy (N, K, C), fp16,
  read through a memory map, rows in the order of meta["ids"];
- per-image region features: `<image_id>.npy` (K, D) or `<image_id>.npz` (array "features" or the first one);
- an HDF5 file (or a folder holding exactly one `*.h5`/`*.hdf5`) with one (K, D) dataset per image id.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from imcap.errors import ImcapError

FORMAT = "imcap-features"


class FeatureStore:
    """Look up an image's features by id: `get(id, kind)` with kind "pooled" (D,) or "spatial" (K, C)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta: dict = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.row: dict[str, int] = {}
        self.h5 = None
        if not self.path.exists():
            raise ImcapError(f"{self.path}: features not found")
        h5_files = [self.path] if self.path.is_file() else sorted([*self.path.glob("*.h5"), *self.path.glob("*.hdf5")])
        if (self.path / "meta.json").is_file():
            self._open_imcap()
        elif h5_files:
            if len(h5_files) > 1:
                raise ImcapError(f"{self.path}: holds several HDF5 files; pass the one to use")
            self._open_h5(h5_files[0])
        elif self.path.is_dir():
            self.kind = "regions"
        else:
            raise ImcapError(f"{self.path}: not a features directory, .npy/.npz folder or HDF5 file")

    def _open_imcap(self) -> None:
        try:
            self.meta = json.loads((self.path / "meta.json").read_text(encoding="utf-8"))
            if self.meta.get("format") != FORMAT:
                raise KeyError("format")
            self.row = {str(i): r for r, i in enumerate(self.meta["ids"])}
            for kind in self.meta["kinds"]:
                self.arrays[kind] = np.load(self.path / f"{kind}.npy", mmap_mode="r")
        except (json.JSONDecodeError, KeyError, TypeError, OSError, ValueError) as exc:
            raise ImcapError(f"{self.path}: malformed imcap features ({exc.__class__.__name__}: {exc})") from None
        self.kind = "imcap"

    def _open_h5(self, file: Path) -> None:
        try:
            import h5py
        except ImportError:
            raise ImcapError(f"{file}: reading HDF5 needs h5py (pip install 'imcap[hdf5]')") from None
        try:
            self.h5 = h5py.File(file, "r")
        except OSError as exc:
            raise ImcapError(f"{file}: not a readable HDF5 file ({exc})") from None
        self.kind = "regions"

    @property
    def kinds(self) -> tuple[str, ...]:
        """Which features are available: ("pooled", "spatial") for imcap's, ("spatial",) for regions."""
        return tuple(self.arrays) if self.kind == "imcap" else ("spatial",)

    @property
    def cnn(self) -> str:
        """The CNN that produced them ("none" for region features)."""
        return self.meta.get("cnn", "none")

    def _region(self, image_id: str) -> np.ndarray:
        if self.h5 is not None:
            if image_id not in self.h5:
                raise ImcapError(f"{self.h5.filename}: no features for image {image_id!r}")
            return np.asarray(self.h5[image_id])
        for ext in (".npy", ".npz"):
            file = self.path / f"{image_id}{ext}"
            if file.is_file():
                try:
                    if ext == ".npy":
                        return np.load(file, allow_pickle=False)
                    with np.load(file, allow_pickle=False) as z:
                        return z["features"] if "features" in z.files else z[z.files[0]]
                except (OSError, ValueError, IndexError) as exc:
                    raise ImcapError(f"{file}: unreadable features ({exc.__class__.__name__})") from None
        raise ImcapError(f"{self.path}: no features for image {image_id!r} ({image_id}.npy or .npz)")

    def get(self, image_id: str, kind: str) -> torch.Tensor:
        """Float32 features of one image: (D,) for "pooled", (K, C) for "spatial"."""
        if self.kind == "imcap":
            if kind not in self.arrays:
                raise ImcapError(f"{self.path}: has no {kind} features (it has {', '.join(self.arrays)}); rerun `imcap features` with --store {kind} (or both)")
            if image_id not in self.row:
                raise ImcapError(f"{self.path}: no features for image {image_id!r}; were they extracted from this data set?")
            return torch.from_numpy(np.asarray(self.arrays[kind][self.row[image_id]], dtype=np.float32))
        regions = self._region(image_id)
        if regions.ndim != 2:
            raise ImcapError(f"{self.path}: features of {image_id!r} have shape {regions.shape}, expected (K, D)")
        feats = torch.from_numpy(regions.astype(np.float32))
        return feats.mean(0) if kind == "pooled" else feats

    def dim(self, kind: str, probe_id: str) -> int:
        """Feature size D (pooled) or C (spatial)."""
        return int(self.get(probe_id, kind).shape[-1])
