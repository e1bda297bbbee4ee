"""METEOR 1.5 through the official jar, run as one persistent `-stdio` process (as pycocoevalcap does).

The jar and its paraphrase table come from an installed pycocoevalcap (`pip install imcap[meteor]`),
from `IMCAP_METEOR_JAR`, or from the `jar=` argument; Java from `java=`, `IMCAP_JAVA` or PATH.
pycocoevalcap waits for the answer to every SCORE line before sending the next; here a writer thread
streams all of them while the caller reads the answers, which gives the same numbers sooner.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import threading
import weakref
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

from imcap.errors import ImcapError
from imcap.metrics._inputs import check_pairs

METEOR_JAR_NAME = "meteor-1.5.jar"


class MetricUnavailable(ImcapError):
    """A metric needs a tool (Java, a jar, model files) that is not installed here."""


def find_java(java: str | os.PathLike[str] | None = None) -> str:
    """Path of the Java executable, or MetricUnavailable."""
    candidate = str(java) if java is not None else os.environ.get("IMCAP_JAVA") or shutil.which("java")
    if not candidate or not (Path(candidate).is_file() or shutil.which(candidate)):
        raise MetricUnavailable("Java is not installed (set IMCAP_JAVA or put `java` on PATH)")
    return candidate


def pycocoevalcap_dir() -> Path | None:
    """Directory of an installed pycocoevalcap package, without importing it."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def find_meteor_jar(jar: str | os.PathLike[str] | None = None) -> Path:
    """Path of meteor-1.5.jar (its paraphrase data must sit in data/ beside it), or MetricUnavailable."""
    if jar is None and os.environ.get("IMCAP_METEOR_JAR"):
        jar = os.environ["IMCAP_METEOR_JAR"]
    if jar is None:
        root = pycocoevalcap_dir()
        if root is None:
            raise MetricUnavailable("the METEOR jar was not found (pip install 'imcap[meteor]' or set IMCAP_METEOR_JAR)")
        jar = root / "meteor" / METEOR_JAR_NAME
    path = Path(jar)
    if not path.is_file():
        raise MetricUnavailable(f"{path}: METEOR jar not found")
    return path


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


class Meteor:
    """Drop-in for `pycocoevalcap.meteor.meteor.Meteor`: `compute_score(gts, res)` -> (score, [per image]).

    Starts `java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm` once; `close()` (or `with`) stops it.
    Raises MetricUnavailable when Java or the jar is missing.
    """

    def __init__(self, jar: str | os.PathLike[str] | None = None, java: str | os.PathLike[str] | None = None,
                 memory: str = "2G") -> None:
        self.jar = find_meteor_jar(jar)
        cmd = [find_java(java), "-jar", f"-Xmx{memory}", self.jar.name, "-", "-", "-stdio", "-l", "en", "-norm"]
        try:
            self._proc = subprocess.Popen(cmd, cwd=self.jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL)
        except OSError as exc:
            raise MetricUnavailable(f"could not start METEOR: {exc}") from exc
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _stop, self._proc)

    def __enter__(self) -> Meteor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the Java process."""
        self._finalizer()

    def _readline(self) -> str:
        line = self._proc.stdout.readline()
        if not line:
            raise MetricUnavailable(f"the METEOR process ({self.jar}) stopped unexpectedly")
        return line.decode().strip()

    def _write(self, lines: list[str], error: list[BaseException]) -> None:
        try:
            for line in lines:
                self._proc.stdin.write(line.encode())
            self._proc.stdin.flush()
        except OSError as exc:
            error.append(exc)

    @staticmethod
    def _score_line(hypothesis: str, references: Sequence[str]) -> str:
        # pycocoevalcap's cleaning of the hypothesis (references are sent as they are)
        hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
        return " ||| ".join(("SCORE", " ||| ".join(references), hypothesis)).replace("\n", " ") + "\n"

    def compute_score(self, gts: Mapping[Hashable, Sequence[str]],
                      res: Mapping[Hashable, Sequence[str]]) -> tuple[float, list[float]]:
        """Corpus METEOR (the jar's aggregate, not a mean) and per-image METEOR, in the order of `gts`."""
        ids = check_pairs(gts, res, "Meteor")
        if not ids:
            return 0.0, []
        with self._lock:
            if self._proc.poll() is not None:
                raise MetricUnavailable(f"the METEOR process ({self.jar}) is not running")
            error: list[BaseException] = []
            writer = threading.Thread(target=self._write, args=([self._score_line(res[i][0], gts[i]) for i in ids],
                                                                 error), daemon=True)
            writer.start()
            stats = [self._readline() for _ in ids]
            writer.join()
            if error:
                raise MetricUnavailable(f"could not talk to METEOR: {error[0]}")
            self._proc.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
            self._proc.stdin.flush()
            scores = [float(self._readline()) for _ in ids]
            score = float(self._readline())
        return score, scores

    def method(self) -> str:
        """Metric name, as pycocoevalcap reports it."""
        return "METEOR"
