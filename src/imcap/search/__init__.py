"""Natural-language image search: GNA-RNN person search and a dual encoder, evaluation, and searchable indexes.

`load_index(path).query("a man in a red jacket", k=10)` -> [(image path, score), ...] is the serving entry point.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imcap.search.index import SearchIndex


def load_index(path: str, device: str = "cpu", model: str | None = None, vectors_only: bool = False) -> SearchIndex:
    """Open a search index written by `imcap search index` and the model it records (or check it is `model`).

    `vectors_only`: an index of precomputed vectors, queried with vectors (no model needed).
    """
    from imcap.search import index

    return index.load_index(path, device, model, vectors_only=vectors_only)
