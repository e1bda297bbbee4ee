"""Vocabulary and tokenisation shared by every model (cs231n token convention)."""
from __future__ import annotations

import json
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imcap.errors import ImcapError

NULL, START, END, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ("<NULL>", "<START>", "<END>", "<UNK>")

_PUNCT = re.compile("[" + re.escape(string.punctuation) + "]")


class _PunctuationToSpace(dict):
    """A `str.translate` table, filled on demand: Unicode punctuation and symbols (categories P*, S*) -> space."""

    def __missing__(self, code: int) -> str | int:
        value: str | int = " " if unicodedata.category(chr(code))[0] in "PS" else code
        self[code] = value
        return value


_UNICODE_PUNCT = _PunctuationToSpace()


def tokenize(caption: str) -> list[str]:
    """Return the words of a caption: lower-cased, punctuation removed, split on whitespace (neuraltalk2's rule).

    Punctuation is every Unicode punctuation or symbol character (em dash, ellipsis, curly quotes, ...),
    which for ASCII text is exactly `string.punctuation`; `don't` and `don’t` both give `don`, `t`.
    """
    text = caption.lower()
    if text.isascii():
        return _PUNCT.sub(" ", text).split()
    return text.translate(_UNICODE_PUNCT).split()


@dataclass
class Vocab:
    """Index <-> word table; indices 0..3 are <NULL> (padding), <START>, <END>, <UNK>."""

    idx_to_word: list[str]
    word_counts: dict[str, int] = field(default_factory=dict)
    word_to_idx: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if tuple(self.idx_to_word[:4]) != SPECIAL_TOKENS:
            raise ImcapError(f"vocabulary must start with {', '.join(SPECIAL_TOKENS)}")
        self.word_to_idx = {w: i for i, w in enumerate(self.idx_to_word)}

    def __len__(self) -> int:
        return len(self.idx_to_word)

    @property
    def vocab_size(self) -> int:
        """Tokens a model reads or writes besides <NULL>: the `vocab_size` of ShowTell (its tables have +1 rows)."""
        return len(self.idx_to_word) - 1

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], word_count_threshold: int = 5) -> Vocab:
        """Return a vocabulary of the words seen more than `word_count_threshold` times."""
        counts = Counter(w for tokens in token_lists for w in tokens)
        words = sorted((w for w, c in counts.items() if c > word_count_threshold), key=lambda w: (-counts[w], w))
        return cls(list(SPECIAL_TOKENS) + words, dict(counts))

    def encode(self, tokens: Sequence[str], max_length: int | None = None) -> list[int]:
        """Return word ids (unknown words -> <UNK>), cut at `max_length`; no <START>/<END>."""
        ids = [self.word_to_idx.get(w, UNK) for w in tokens]
        return ids[:max_length] if max_length is not None else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Return the words of `ids` up to the first <END> or <NULL>, skipping <START>."""
        words = []
        for i in ids:
            i = int(i)
            if i in (END, NULL):
                break
            if i == START:
                continue
            words.append(self.idx_to_word[i])
        return " ".join(words)

    def to_json(self) -> str:
        """Return the JSON text `save` writes: `{"idx_to_word": [...], "word_counts": {...}}`."""
        return json.dumps({"idx_to_word": self.idx_to_word, "word_counts": self.word_counts})

    def save(self, path: str | Path) -> None:
        """Write `to_json()` to `path`."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Read a vocabulary written by `save`."""
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
            return cls(list(raw["idx_to_word"]), dict(raw.get("word_counts", {})))
        except FileNotFoundError:
            raise ImcapError(f"{path}: vocabulary file not found") from None
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise ImcapError(f"{path}: not an imcap vocabulary ({exc.__class__.__name__})") from None

    def to_dict(self) -> dict:
        """Return the JSON-ready form stored inside checkpoints."""
        return {"idx_to_word": self.idx_to_word}

    @classmethod
    def from_dict(cls, raw: dict) -> Vocab:
        """Inverse of `to_dict`."""
        return cls(list(raw["idx_to_word"]))
