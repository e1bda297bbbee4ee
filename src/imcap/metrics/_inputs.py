"""Checks of the pycocoevalcap-style inputs `gts = {id: [ref, ...]}`, `res = {id: [hypothesis]}`."""
from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from imcap.errors import ImcapError


def _examples(keys: set[Any]) -> str:
    shown = sorted(map(repr, keys))[:3]
    return ", ".join(shown) + (", ..." if len(keys) > 3 else "")


def check_pairs(gts: Mapping[Hashable, Sequence[str]], res: Mapping[Hashable, Sequence[str]],
                where: str = "compute_score") -> list[Hashable]:
    """Validate the inputs and return the image ids in the order of `gts` (pycocoevalcap's order)."""
    if gts.keys() != res.keys():
        only_gts = set(gts) - set(res)
        only_res = set(res) - set(gts)
        parts = []
        if only_gts:
            parts.append(f"{len(only_gts)} image id(s) only in the references ({_examples(only_gts)})")
        if only_res:
            parts.append(f"{len(only_res)} image id(s) only in the predictions ({_examples(only_res)})")
        raise ImcapError(f"{where}: references and predictions have different image ids: {'; '.join(parts)}")
    ids = list(gts)
    for key in ids:
        refs, hyp = gts[key], res[key]
        if (type(refs) is list and refs and type(hyp) is list and len(hyp) == 1 and type(hyp[0]) is str
                and all(type(r) is str for r in refs)):
            continue
        _check_one(key, refs, hyp, where)
    return ids


def _check_one(key: Hashable, refs: Any, hyp: Any, where: str) -> None:
    """Raise a precise error for one image's entries (or accept other sequence types)."""
    if isinstance(refs, str) or not isinstance(refs, Sequence) or len(refs) == 0:
        raise ImcapError(f"{where}: image {key!r} needs a non-empty list of reference captions")
    if isinstance(hyp, str) or not isinstance(hyp, Sequence) or len(hyp) != 1:
        raise ImcapError(f"{where}: image {key!r} needs a list with exactly one predicted caption")
    if not isinstance(hyp[0], str) or not all(isinstance(r, str) for r in refs):
        raise ImcapError(f"{where}: image {key!r} has a caption that is not a string")
