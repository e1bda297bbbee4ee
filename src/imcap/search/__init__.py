"""Natural-language image search: GNA-RNN person search and a dual encoder, evaluation, and searchable indexes.

`load_index(path).query("a man in a red jacket", k=10)` -> [(image path, score), ...] is the serving entry point.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from imcap.search.index import SearchIndex


def load_index(path: str, device: str = "cpu", model: str | None = None) -> SearchIndex:
    """Open a search index written by `imcap search index` and the model it records (or check it is `model`)."""
    from imcap.search.index import load_index as _load

    return _load(path, device, model)
