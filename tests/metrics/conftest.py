"""Shared fixtures: the Flickr8k captions, Java and pycocoevalcap (tests skip cleanly without them)."""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"
FLICKR8K_TOKENS = SHARED / "data" / "flickr8k" / "Flickr8k.token.txt"


def load_flickr8k(path: Path = FLICKR8K_TOKENS) -> dict[str, list[str]]:
    """{image file name: [5 captions]} from Flickr8k.token.txt (one stray id ends in '.1')."""
    refs: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        key, caption = line.split("\t", 1)
        image = key.split("#")[0]
        if image.endswith(".1"):
            image = image[:-2]
        refs.setdefault(image, []).append(caption)
    return refs


@pytest.fixture(scope="session")
def flickr8k() -> dict[str, list[str]]:
    """All Flickr8k captions by image."""
    if not FLICKR8K_TOKENS.is_file():
        pytest.skip(f"Flickr8k captions not found at {FLICKR8K_TOKENS}")
    return load_flickr8k()


@pytest.fixture(scope="session")
def leave_one_out(flickr8k: dict[str, list[str]]) -> tuple[dict, dict, dict]:
    """(refs {id: captions #1-#4}, preds {id: caption #0}, preds shuffled across images)."""
    ids = list(flickr8k)
    refs = {i: flickr8k[i][1:] for i in ids}
    preds = {i: flickr8k[i][0] for i in ids}
    perm = ids[:]
    random.Random(0).shuffle(perm)
    shuffled = {i: flickr8k[j][0] for i, j in zip(ids, perm)}
    return refs, preds, shuffled


@pytest.fixture(scope="session")
def pycoco():
    """The pycocoevalcap package (the dev dependency the parity tests compare against)."""
    return pytest.importorskip("pycocoevalcap")


@pytest.fixture(scope="session")
def java(pycoco) -> str:
    """Path of `java`; parity tests that run the Java tools skip without it."""
    path = shutil.which("java")
    if path is None:
        pytest.skip("Java is not installed: pycocoevalcap's Java tools cannot run")
    return path


@pytest.fixture(scope="session")
def java_tokenized(leave_one_out, java) -> dict[str, dict]:
    """pycocoevalcap's (Java) tokenization of the leave-one-out inputs, each dict tokenized as pycocoevalcap does.

    Keys: "refs_raw"/"refs" ({id: [caption dicts]} / tokenized), and likewise "preds" and "shuffled".
    """
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer as JavaPTBTokenizer

    refs, preds, shuffled = leave_one_out
    raw = {
        "refs": {k: [{"caption": c} for c in v] for k, v in refs.items()},
        "preds": {k: [{"caption": v}] for k, v in preds.items()},
        "shuffled": {k: [{"caption": v}] for k, v in shuffled.items()},
    }
    tok = JavaPTBTokenizer()
    out: dict[str, dict] = {}
    for name, captions in raw.items():
        out[f"{name}_raw"] = captions
        out[name] = tok.tokenize(captions)
    return out
