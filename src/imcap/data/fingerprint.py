"""Fingerprints of data sets: the same prepro files (or caption file) give the same string, wherever they lie."""
from __future__ import annotations

import hashlib
from pathlib import Path

PREPRO_FILES = ("vocab.json", "images.json", "labels.npy")


def data_fingerprint(path: str | Path) -> str:
    """A BLAKE2 hash of a prepro directory's files (or of a single caption file); '' when nothing is there."""
    path = Path(path)
    files = [path / name for name in PREPRO_FILES if (path / name).is_file()] if path.is_dir() else [path] if path.is_file() else []
    if not files:
        return ""
    digest = hashlib.blake2b(digest_size=16)
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
