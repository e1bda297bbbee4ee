"""SPICE 1.0 through its jar, only when the jar and its Stanford CoreNLP 3.6.0 models are already local.

pycocoevalcap downloads CoreNLP at run time; imcap never does. The jar is looked up in an installed
pycocoevalcap (spice/spice-1.0.jar, with lib/stanford-corenlp-3.6.0*.jar beside it), in
`IMCAP_SPICE_JAR`, or given as `jar=`. Without them, `Spice()` raises MetricUnavailable.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imcap.metrics._inputs import check_pairs
from imcap.metrics.meteor import MetricUnavailable, find_java, pycocoevalcap_dir

SPICE_JAR_NAME = "spice-1.0.jar"
CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def find_spice_jar(jar: str | os.PathLike[str] | None = None) -> Path:
    """Path of spice-1.0.jar whose lib/ holds the CoreNLP jars, or MetricUnavailable."""
    if jar is None and os.environ.get("IMCAP_SPICE_JAR"):
        jar = os.environ["IMCAP_SPICE_JAR"]
    if jar is None:
        root = pycocoevalcap_dir()
        if root is None:
            raise MetricUnavailable("the SPICE jar was not found (install pycocoevalcap or set IMCAP_SPICE_JAR)")
        jar = root / "spice" / SPICE_JAR_NAME
    path = Path(jar)
    if not path.is_file():
        raise MetricUnavailable(f"{path}: SPICE jar not found")
    missing = [name for name in CORENLP_JARS if not (path.parent / "lib" / name).is_file()]
    if missing:
        raise MetricUnavailable(f"{path.parent / 'lib'}: SPICE needs {', '.join(missing)} (not downloaded at run time)")
    return path


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class Spice:
    """Drop-in for `pycocoevalcap.spice.spice.Spice`: `compute_score(gts, res)` -> (mean F, [per-image dicts]).

    Per-image results follow pycocoevalcap: sorted image ids, each a dict category -> {"pr", "re", "f", ...}.
    """

    def __init__(self, jar: str | os.PathLike[str] | None = None, java: str | os.PathLike[str] | None = None,
                 memory: str = "8G", cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.jar = find_spice_jar(jar)
        self.java = find_java(java)
        self.memory = memory
        self.cache_dir = None if cache_dir is None else Path(cache_dir)

    def compute_score(self, gts: Mapping[Hashable, Sequence[str]],
                      res: Mapping[Hashable, Sequence[str]]) -> tuple[float, list[dict[str, dict[str, float]]]]:
        """Mean SPICE F-score and per-image SPICE tuples."""
        check_pairs(gts, res, "Spice")
        ids = sorted(gts.keys())
        data = [{"image_id": i, "test": res[i][0], "refs": list(gts[i])} for i in ids]
        with tempfile.TemporaryDirectory(prefix="imcap-spice-") as tmp:
            in_file, out_file = Path(tmp) / "in.json", Path(tmp) / "out.json"
            in_file.write_text(json.dumps(data, indent=2))
            cmd = [self.java, "-jar", f"-Xmx{self.memory}", str(self.jar), str(in_file), "-out", str(out_file),
                   "-subset", "-silent"]
            if self.cache_dir is not None:
                cmd[5:5] = ["-cache", str(self.cache_dir)]
            done = subprocess.run(cmd, cwd=self.jar.parent, capture_output=True, text=True)
            if done.returncode != 0 or not out_file.is_file():
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                raise MetricUnavailable(f"SPICE failed (exit {done.returncode}): {tail[0]}")
            results = json.loads(out_file.read_text())
        by_id = {item["image_id"]: item["scores"] for item in results}
        f_scores = [_to_float(item["scores"]["All"]["f"]) for item in results]
        average = float(np.mean(np.array(f_scores))) if f_scores else math.nan
        per_image = [{cat: {k: _to_float(v) for k, v in tup.items()} for cat, tup in by_id[i].items()} for i in ids]
        return average, per_image

    def method(self) -> str:
        """Metric name, as pycocoevalcap reports it."""
        return "SPICE"
