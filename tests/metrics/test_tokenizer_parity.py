"""imcap's pure-Python PTB tokenizer against pycocoevalcap's Java one, token for token."""
from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest

from imcap.metrics import PUNCTUATIONS, PTBTokenizer

from .hard_strings import HARD_STRINGS, LINE_BREAK_STRINGS

# Java's line breaks (besides "\n", which pycocoevalcap replaces); a caption holding one is split.
_JAVA_NEWLINES = {0x0A, 0x0B, 0x0C, 0x0D, 0x85, 0x2028, 0x2029}


def java_tokenize(captions: list[str]) -> list[str]:
    """pycocoevalcap's PTBTokenizer on captions, one image each (keys are positions)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer as JavaPTBTokenizer

    out = JavaPTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    return [out[i][0] for i in range(len(captions))]


def java_lines(text: str) -> list[str]:
    """The Java tool's raw output lines for `text` (run exactly as pycocoevalcap runs it)."""
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    jar_dir = Path(ptb.__file__).parent
    done = subprocess.run(["java", "-cp", ptb.STANFORD_CORENLP_3_4_1_JAR, "edu.stanford.nlp.process.PTBTokenizer",
                           "-preserveLines", "-lowerCase"], cwd=jar_dir, input=text.encode(), capture_output=True,
                          check=True)
    return done.stdout.decode().split("\n")


@pytest.mark.parametrize("part", ["refs", "preds", "shuffled"])
def test_flickr8k_every_caption(java_tokenized, part):
    # refs hold captions #1-#4 of every image and preds caption #0: together all 40,460 captions.
    expected = java_tokenized[part]
    got = PTBTokenizer().tokenize(java_tokenized[f"{part}_raw"])
    assert list(got) == list(expected)
    bad = [(k, i) for k in expected for i, (a, b) in enumerate(zip(expected[k], got[k])) if a != b]
    assert not bad, f"{len(bad)} captions differ, e.g. {bad[:3]}"
    assert sum(map(len, got.values())) == sum(map(len, expected.values())) == (32368 if part == "refs" else 8092)


def test_hard_strings(java):
    assert len(HARD_STRINGS) >= 200
    assert not any(c in _JAVA_NEWLINES for s in HARD_STRINGS for c in map(ord, s))
    for seed in (None, 1, 2):
        strings = HARD_STRINGS[:]
        if seed is not None:
            random.Random(seed).shuffle(strings)
        expected = java_tokenize(strings)
        got = PTBTokenizer().tokenize_captions(strings)
        bad = [(s, e, g) for s, e, g in zip(strings, expected, got) if e != g]
        assert not bad, f"{len(bad)} differ, e.g. {bad[:3]}"


def test_hard_strings_before_other_captions(java):
    # The text after a caption (the next line) decides a few abbreviation/acronym splits.
    followers = ["The end.", "the end", "5 dogs", "<b>x", "I. He", ""]
    captions = [c for s in HARD_STRINGS for f in followers for c in (s, f)]
    expected = java_tokenize(captions)
    got = PTBTokenizer().tokenize_captions(captions)
    bad = [(captions[i], captions[i + 1], expected[i], got[i]) for i in range(0, len(captions), 2)
           if expected[i] != got[i]]
    assert not bad, f"{len(bad)} differ, e.g. {bad[:3]}"


def test_every_bmp_character(java):
    # Each character inside a word, alone, between digits and after an abbreviation.
    chars = [chr(c) for c in range(1, 0x10000) if c not in _JAVA_NEWLINES and not 0xD800 <= c <= 0xDFFF]
    captions = [f"a{c}a {c} 1{c}1 etc. {c}x" for c in chars]
    expected = java_tokenize(captions)
    got = PTBTokenizer().tokenize_captions(captions)
    bad = [(hex(ord(c)), e, g) for c, e, g in zip(chars, expected, got) if e != g]
    assert not bad, f"{len(bad)} characters differ, e.g. {bad[:5]}"


@pytest.mark.parametrize("caption", LINE_BREAK_STRINGS)
def test_line_breaks_inside_a_caption(java, caption):
    # The Java tool splits such a caption over several lines (pycocoevalcap then misaligns the rest);
    # imcap keeps it one caption: the tokens of all its lines, in order.
    lines = java_lines(caption + "\nnext caption")
    assert lines[-2:] == ["next caption", ""] or lines[-1] == "next caption"
    own = [ln for ln in lines[: lines.index("next caption")]]
    expected = " ".join(w for ln in own for w in ln.rstrip().split(" ") if w and w not in PUNCTUATIONS)
    assert PTBTokenizer().tokenize_captions([caption, "next caption"])[0] == expected
