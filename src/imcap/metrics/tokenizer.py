"""PTB tokenization exactly as pycocoevalcap 1.2 does it, in pure Python (no Java).

pycocoevalcap writes all captions, one per line, to a file, runs Stanford CoreNLP 3.4.1's
`PTBTokenizer -preserveLines -lowerCase` on it, and drops the punctuation tokens in
`PUNCTUATIONS`. `PTBTokenizer` here gives the same strings: the lexer rules live in
`_ptb_lexer`; this module adds the fast paths, caching and the post-processing.

One deliberate difference: a caption containing a line break other than "\\n" (\\r, \\v, \\f,
U+2028, U+2029) makes the Java tool emit an extra output line, so pycocoevalcap pairs every later
caption with the wrong tokens. Here such a caption is tokenized on its own, as if the break were
a space between tokens.
"""
from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from imcap.metrics._ptb_lexer import ABBREV1, ABBREV2, ABBREV3, ACRONYM, NL_TOKEN, lex
from imcap.metrics._ptb_lexer import D as _DIGIT_CLASS

# The tokens pycocoevalcap removes after tokenizing (its list, compared after lower-casing).
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Captions with these can hold tokens that span a space (numbers such as "3 1/2" or "555 1234", SGML,
# spaced dots), or whose split depends on the next word (abbreviations), or whitespace that a run of
# spaces would swallow; they are lexed whole. All others are lexed space-separated chunk by chunk,
# with a cache.
_WHOLE = re.compile(rf"[<(+\t\u00a0\u2000-\u200a\u3000]|{_DIGIT_CLASS} {_DIGIT_CLASS}|\. \.|[A-Za-z]\. ")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_FOLLOW_CHARS = 64
_FOLLOW_LINES = 3
_MISSING = object()  # cache lookups: not seen yet (an empty tuple is a valid entry)
# From _BATCH_LINES captions on, the plain ones are found for the whole batch at once, _BLOCK_LINES
# at a time (small arrays, whose memory is reused from block to block).
_BATCH_LINES = 64
_BLOCK_LINES = 2048


def _surrogate_pair(match: re.Match[str]) -> str:
    code = ord(match.group()) - 0x10000
    return chr(0xD800 + (code >> 10)) + chr(0xDC00 + (code & 0x3FF))


def _to_utf16_units(text: str) -> str:
    """Spell astral characters as surrogate pairs, since the Java lexer works on UTF-16 units."""
    return _ASTRAL.sub(_surrogate_pair, text)


def _from_utf16_units(token: str) -> str:
    """Join surrogate pairs back; an unpaired surrogate prints as '?' (Java's UTF-8 writer does that)."""
    joined = token.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return _LONE_SURROGATE.sub("?", joined)


# Plain captions: ASCII words (letters, maybe joined by hyphens: "t-shirt") separated by single spaces,
# maybe commas after a word or as a word, maybe a final period (" ." or "."). Such a caption tokenizes to
# its lower-cased words without the commas and the period, unless it holds a word the lexer splits
# (cannot -> can not) or ends in an abbreviation that keeps its period. They are found for a whole
# batch at once by classifying the bytes of the joined captions: a line is plain iff no adjacent pair
# of byte classes is one a plain line cannot hold.
_SPLIT_WORDS = ("cannot", "gonna", "gotta", "lemme", "gimme", "wanna")  # each doubles its 3rd letter
_ABBREV_END = re.compile(f"(?<![A-Za-z])(?:{ABBREV1}|{ABBREV2}|{ABBREV3}|{ACRONYM})$")
_ABBREV_WORD = re.compile(f"(?:{ABBREV1}|{ABBREV2}|{ABBREV3}|{ACRONYM})")
_INNER_WORD_END = re.compile(r"[^A-Za-z][A-Za-z]+\.$")  # a last word the lexer may start inside the chunk
_DOUBLED = tuple(sorted({ord(w[2]) for w in _SPLIT_WORDS}))


class PTBTokenizer:
    """Drop-in for `pycocoevalcap.tokenizer.ptbtokenizer.PTBTokenizer`, without Java.

    `tokenize({image_id: [{"caption": str}, ...]})` returns `{image_id: [tokenized str, ...]}`;
    plain strings are accepted in place of the `{"caption": ...}` dicts. Lexed chunks are cached
    on the instance, so reusing one tokenizer makes later calls faster.
    """

    def __init__(self) -> None:
        # chunk followed by a space -> its tokens after punctuation removal (None: needs the exact path)
        self._middle: dict[str, tuple[str, ...] | None] = {}
        # (last chunk, text after it) -> same
        self._last: dict[tuple[str, str], tuple[str, ...] | None] = {}

    def tokenize(self, captions_for_image: Mapping[Hashable, Sequence[Any]]) -> dict[Hashable, list[str]]:
        """Tokenize every caption of every image, in the input order, like pycocoevalcap."""
        keys: list[Hashable] = []
        captions: list[str] = []
        for key, caps in captions_for_image.items():
            for cap in caps:
                keys.append(key)
                captions.append(cap["caption"] if isinstance(cap, Mapping) else cap)
        out: dict[Hashable, list[str]] = {}
        for key, tokenized in zip(keys, self.tokenize_captions(captions)):
            out.setdefault(key, []).append(tokenized)
        return out

    def tokenize_captions(self, captions: Iterable[str]) -> list[str]:
        """Tokenize a list of captions as consecutive lines of one file; return space-joined tokens."""
        lines = captions if type(captions) is list else list(captions)
        if not lines:
            return []
        try:
            text = "\n".join(lines)
        except TypeError:  # not all strings
            lines = [c if isinstance(c, str) else str(c) for c in lines]
            text = "\n".join(lines)
        if text.count("\n") != len(lines) - 1:  # a caption holds "\n": pycocoevalcap makes it a space
            lines = [c.replace("\n", " ") for c in lines]
            text = "\n".join(lines)
        out: list[str] = []
        hard: list[int] = []
        for first in range(0, len(lines), _BLOCK_LINES):
            block = lines[first:first + _BLOCK_LINES]
            if len(block) >= _BATCH_LINES:
                tokenized, others = _plain_lines("\n".join(block).encode("utf-8", "surrogatepass"), block)
                out.extend(tokenized)
                hard.extend((others + first).tolist())
            else:  # for a few lines, the classification of the batch costs more than it saves
                out.extend([""] * len(block))
                hard.extend(range(first, first + len(block)))
        astral = not text.isascii() and bool(_ASTRAL.search(text))
        for i in hard:
            out[i] = self._line(lines, i, astral)
        return out

    def tokens(self, caption: str) -> list[str]:
        """The tokens of one caption on its own line (punctuation removed), as a list."""
        return [w for w in self.tokenize_captions([caption])[0].split(" ") if w]

    def _line(self, lines: list[str], i: int, astral: bool) -> str:
        """Tokenized line i: chunk by chunk through the caches when that is exact, else whole."""
        line = lines[i]
        if _WHOLE.search(line) or astral and (_ASTRAL.search(line) or _ASTRAL.search(_follow(lines, i))):
            return _postprocess(_lex_lower(line, _follow(lines, i)))
        chunks = line.split(" ")
        last = len(chunks) - 1
        while last >= 0 and not chunks[last]:
            last -= 1
        if last < 0:
            return ""
        words: list[str] = []
        middle = self._middle
        for chunk in chunks[:last]:
            if chunk:
                toks = middle.get(chunk, _MISSING)
                if toks is _MISSING:
                    toks = middle[chunk] = _plain_word(chunk) or _filtered(_lex_lower(chunk, " "))
                if toks is None:
                    return _postprocess(_lex_lower(line, _follow(lines, i)))
                words.extend(toks)
        chunk = chunks[last]
        if _ABBREV_END.search(chunk) or _INNER_WORD_END.search(chunk):
            after = _follow(lines, i)
        else:
            after = "\n" if i + 1 < len(lines) else ""
        key = (chunk, after)
        toks = self._last.get(key, _MISSING)
        if toks is _MISSING:
            toks = self._last[key] = _plain_word(chunk) or _filtered(_lex_lower(chunk, after))
        if toks is None:
            return _postprocess(_lex_lower(line, _follow(lines, i)))
        words.extend(toks)
        return " ".join(words)


def _plain_word(chunk: str) -> tuple[str] | None:
    """An ASCII word lexes to itself, lower-cased (unless it is one the lexer splits); else None."""
    if chunk.isascii() and chunk.isalpha():
        lower = chunk.lower()
        if lower not in _SPLIT_WORDS:
            return (lower,)
    return None


def _follow(lines: list[str], i: int) -> str:
    """The text after line i as the lexer sees it (a few lines suffice for its lookahead)."""
    nxt = lines[i + 1:i + 1 + _FOLLOW_LINES]
    text = "".join("\n" + line for line in nxt)
    if i + 1 + _FOLLOW_LINES < len(lines):
        text += "\n"
    return text[:_FOLLOW_CHARS]


def _postprocess(tokens: list[str]) -> str:
    """pycocoevalcap's treatment of one output line: rstrip, split on spaces, drop punctuation."""
    return " ".join(w for w in " ".join(tokens).rstrip().split(" ") if w not in PUNCTUATIONS)


def _filtered(tokens: list[str]) -> tuple[str, ...] | None:
    """Tokens minus punctuation, or None when a token would be changed by the line's rstrip()."""
    if tokens and (tokens[-1][-1:].isspace() or any(" " in t or not t for t in tokens)):
        return None
    return tuple(t for t in tokens if t not in PUNCTUATIONS)


def _lex_lower(text: str, follow: str) -> list[str]:
    """Lex `text` (followed by `follow`) and return its lower-cased tokens without line breaks."""
    if _ASTRAL.search(text) or _ASTRAL.search(follow):
        units, follow_units = _to_utf16_units(text), _to_utf16_units(follow)
        raw = lex(units + follow_units, len(units))
        return [_from_utf16_units(t).lower() for t in raw if t != NL_TOKEN]
    return [t.lower() for t in lex(text + follow, len(text)) if t != NL_TOKEN]


def _plain_lines(data: bytes, lines: list[str]) -> tuple[list[str], np.ndarray]:
    """Tokenized lines, right for the plain ones, and the indices of the others (which need the lexer).

    `data` is the UTF-8 text of `lines` joined by "\\n" (none of them holding one).
    """
    b = np.frombuffer(b"\n" + data + b"\n", np.uint8)
    upper = b - np.uint8(ord("A")) < 26
    lower = b + (upper * np.uint8(32))
    letter = upper | (b - np.uint8(ord("a")) < 26)
    space, dot, nl, comma, hyphen = (b == ord(c) for c in " .\n,-")
    # Byte pairs a plain line can hold: a letter before a letter, space, period, comma, hyphen or line
    # end; a space before a letter, period or comma; a comma before a space or line end; a hyphen
    # between letters; a period only at the end.
    a, z = slice(None, -1), slice(1, None)
    plain = letter[a] & (letter | space | dot | nl | comma | hyphen)[z]
    plain |= (nl | hyphen)[a] & letter[z]
    plain |= space[a] & (letter | dot | comma)[z]
    plain |= dot[a] & nl[z]
    plain |= comma[a] & (space | nl)[z]
    newline = np.flatnonzero(nl)  # line j lies between newline[j] and newline[j + 1]
    hard = np.zeros(len(lines), bool)
    hard[np.searchsorted(newline, np.flatnonzero(~plain), "right") - 1] = True
    # Split words: a doubled letter two bytes into a word, then the whole word compared.
    at = np.flatnonzero(lower[1:] == lower[:-1])
    at = at[np.isin(lower[at], _DOUBLED) & (at >= 3)] - 2
    if len(at):
        # (K, 8): the byte before the word, then 7 bytes (past the end: the final newline)
        window = lower[np.minimum(at[:, None] + np.arange(-1, 7), len(b) - 1)]
        starts_word = (window[:, 0] == ord(" ")) | (window[:, 0] == ord("\n"))
        for word in _SPLIT_WORDS:
            n = len(word)
            found = (starts_word & (window[:, 1:n + 1] == np.frombuffer(word.encode(), np.uint8)).all(axis=1)
                     & ~letter[np.minimum(at + n, len(b) - 1)])
            hard[np.searchsorted(newline, at[found], "right") - 1] = True
    # A plain line ending in "<word>." may end in an abbreviation (or a hyphenated word: left to the lexer).
    end = newline[1:]
    ends_dot = dot[end - 1]
    for i in np.flatnonzero(ends_dot & letter[end - 2] & ~hard).tolist():
        line = lines[i]
        start = line.rfind(" ") + 1
        if _ABBREV_WORD.fullmatch(line, start) or "-" in line[start:]:
            hard[i] = True
    # What remains: lower-cased bytes without the commas, the final period and a space before either.
    drop = np.concatenate((np.flatnonzero(comma), end[ends_dot] - 1))
    keep = np.ones(len(b), bool)
    keep[[0, -1]] = False
    keep[drop] = False
    keep[drop[space[drop - 1]] - 1] = False
    return lower[keep].tobytes().decode("utf-8", "surrogatepass").split("\n"), np.flatnonzero(hard)
