"""Progress output that suits where it goes: a tqdm bar on a terminal, plain lines in logs.

When stderr is not a terminal (CI, `nohup`, a log file), a bar's redraws would fill the log; instead a
plain line (`train: 300/1500 (20%) 12.3 it/s, ETA 1m37s, loss=2.41`) is written every tenth of the work
(or every `every` updates), and once at the end.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class PlainProgress:
    """The part of tqdm's interface imcap uses, printing a plain line every `every` updates."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, disable: bool = False, every: int | None = None, **_: Any) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.disable = total, desc, unit, bool(disable)
        self.n = self.start_n = self.last_printed = initial
        self.every = every or max(1, (total or 100) // 10)
        self.start = time.monotonic()
        self.postfix = ""

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def set_postfix(self, **values: Any) -> None:
        """Values shown at the end of the next line (loss, epoch, ...)."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        """Advance by `n`; print a line when `every` updates have passed since the last one."""
        self.n += n
        if self.n - self.last_printed >= self.every or (self.total is not None and self.n >= self.total and self.last_printed < self.n):
            self._print()

    def write(self, message: str) -> None:
        """A message on its own line."""
        if not self.disable:
            print(message, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Print the final line if the last update was not printed."""
        if self.n != self.last_printed and self.n > self.start_n:
            self._print()

    def _print(self) -> None:
        self.last_printed = self.n
        if self.disable:
            return
        elapsed = time.monotonic() - self.start
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        parts.append(f"{rate:.1f} {self.unit}/s")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}")
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(parts), file=sys.stderr, flush=True)


def progress_bar(iterable: Iterable | None = None, **kwargs: Any):
    """tqdm(iterable, **kwargs) on a terminal; a `PlainProgress` printing a line every tenth otherwise."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        kwargs.pop("every", None)
        return tqdm(iterable, dynamic_ncols=True, **kwargs)
    return PlainProgress(iterable, **kwargs)
