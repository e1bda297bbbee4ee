"""PTB tokenization exactly as pycocoevalcap 1.2 does it, in pure Python (no Java).

pycocoevalcap writes all captions, one per line, to a file, runs Stanford CoreNLP 3.4.1's
`PTBTokenizer -preserveLines -lowerCase` on it, and drops the punctuation tokens in
`PUNCTUATIONS`. `PTBTokenizer` here gives the same strings: the lexer rules live in
`_ptb_lexer`; this module adds the batching, caching and the post-processing.

One deliberate difference: a caption containing a line break other than "\\n" (\\r, \\v, \\f,
U+2028, U+2029) makes the Java tool emit an extra output line, so pycocoevalcap pairs every later
caption with the wrong tokens. Here such a caption is tokenized on its own, as if the break were
a space between tokens.
"""
from __future__ import annotations

import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

from imcap.metrics._ptb_lexer import ABBREV1, ABBREV2, ABBREV3, ACRONYM, NL_TOKEN, lex
from imcap.metrics._ptb_lexer import D as _DIGIT_CLASS

# The tokens pycocoevalcap removes after tokenizing (its list, compared after lower-casing).
PUNCTUATIONS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Captions with these can hold tokens that span a space, or whose split depends on the next word,
# or whitespace that a run of spaces would swallow; they are lexed whole. All others are lexed
# space-separated chunk by chunk, with a cache.
_WHOLE = re.compile(rf"[<(+\t\u00a0\u2000-\u200a\u3000]|{_DIGIT_CLASS}|\. \.|[A-Za-z]\. ")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_FOLLOW_CHARS = 64
_FOLLOW_LINES = 3


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


# Fast path: ASCII words separated by single spaces, maybe a final period. Such a caption
# tokenizes to its lower-cased words unless it holds a word the lexer splits (cannot -> can not)
# or ends in an abbreviation that keeps its period.
_SIMPLE = re.compile(r"[A-Za-z]+(?: [A-Za-z]+)*(?P<dot> ?\.)?")
_SPLIT_WORDS = frozenset(["cannot", "gonna", "gotta", "lemme", "gimme", "wanna"])
_ABBREV_END = re.compile(f"(?<![A-Za-z])(?:{ABBREV1}|{ABBREV2}|{ABBREV3}|{ACRONYM})$")
_ABBREV_WORD = re.compile(f"(?:{ABBREV1}|{ABBREV2}|{ABBREV3}|{ACRONYM})")


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
        lines = [c.replace("\n", " ") if isinstance(c, str) else str(c).replace("\n", " ") for c in captions]
        out = []
        n = len(lines)
        for i, line in enumerate(lines):
            m = _SIMPLE.fullmatch(line)
            if m is not None:
                dot = m.start("dot")
                body = (line if dot < 0 else line[:dot]).lower()
                if _SPLIT_WORDS.isdisjoint(body.split(" ")) and (
                    dot < 0 or line[dot] == " " or not _ABBREV_WORD.fullmatch(line, line.rfind(" ") + 1)
                ):
                    out.append(body)
                    continue
            out.append(self._line(line, _follow(lines, i)))
        return out

    def tokens(self, caption: str) -> list[str]:
        """The tokens of one caption on its own line (punctuation removed), as a list."""
        return [w for w in self.tokenize_captions([caption])[0].split(" ") if w]

    def _line(self, line: str, follow: str) -> str:
        """The tokenized line: chunk by chunk through the caches when that is exact, else whole."""
        if _WHOLE.search(line) or _ASTRAL.search(line) or _ASTRAL.search(follow):
            return _postprocess(_lex_lower(line, follow))
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
                toks = middle.get(chunk, ())
                if toks == ():
                    toks = middle[chunk] = _plain_word(chunk) or _filtered(_lex_lower(chunk, " "))
                if toks is None:
                    return _postprocess(_lex_lower(line, follow))
                words.extend(toks)
        chunk = chunks[last]
        after = follow if _ABBREV_END.search(chunk) else follow[:1]
        key = (chunk, after)
        toks = self._last.get(key, ())
        if toks == ():
            toks = self._last[key] = _plain_word(chunk) or _filtered(_lex_lower(chunk, after))
        if toks is None:
            return _postprocess(_lex_lower(line, follow))
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
