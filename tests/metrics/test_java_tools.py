"""METEOR and SPICE wrappers: protocol and plumbing with stand-in "java" programs, and the missing-tool paths."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from imcap.metrics import Meteor, MetricUnavailable, Spice

FAKE_METEOR = r'''
import sys
# Stand-in for `java -jar meteor-1.5.jar - - -stdio ...`: stats = word counts; EVAL answers each, then the total.
for line in sys.stdin:
    parts = line.rstrip("\n").split(" ||| ")
    if parts[0] == "SCORE":
        hyp, refs = parts[-1], parts[1:-1]
        print(f"{len(hyp.split())} {len(refs)}", flush=True)
    elif parts[0] == "EVAL":
        stats = [p.split() for p in parts[1:]]
        for s in stats:
            print(int(s[0]) / 10, flush=True)
        print(sum(int(s[0]) for s in stats) / 100, flush=True)
'''

FAKE_SPICE = r'''
import json, sys
# Stand-in for `java -jar spice-1.0.jar IN -out OUT -subset -silent`: F = words / 10.
args = sys.argv[1:]
data = json.load(open(args[args.index("-out") - 1]))
out = [{"image_id": d["image_id"],
        "scores": {"All": {"f": len(d["test"].split()) / 10, "pr": 0.5, "re": "NaN"},
                   "Object": {"f": 0.25}}} for d in reversed(data)]
json.dump(out, open(args[args.index("-out") + 1], "w"))
'''


def _fake_java(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "java"
    script.write_text(f"#!{sys.executable}\n" + body)
    script.chmod(0o755)
    return script


def test_meteor_protocol_streams_many_images(tmp_path):
    jar = tmp_path / "meteor-1.5.jar"
    jar.write_bytes(b"")
    gts = {i: [f"ref {i} " * 30, "another reference"] for i in range(3000)}  # enough to fill the pipes
    res = {i: ["word " * (i % 7)] for i in gts}
    with Meteor(jar=jar, java=_fake_java(tmp_path, FAKE_METEOR)) as meteor:
        score, per_image = meteor.compute_score(gts, res)
        assert per_image == [(i % 7) / 10 for i in gts]
        assert score == sum(i % 7 for i in gts) / 100
        assert meteor.compute_score({1: ["a b"]}, {1: ["a ||| b"]}) == (0.02, [0.2])  # ||| removed from hypotheses


def test_meteor_unavailable(tmp_path):
    with pytest.raises(MetricUnavailable, match="METEOR jar not found"):
        Meteor(jar=tmp_path / "missing.jar")
    jar = tmp_path / "meteor-1.5.jar"
    jar.write_bytes(b"")
    with pytest.raises(MetricUnavailable, match="Java is not installed"):
        Meteor(jar=jar, java=tmp_path / "no-java")


def test_meteor_reports_a_dead_process(tmp_path):
    jar = tmp_path / "meteor-1.5.jar"
    jar.write_bytes(b"")
    with Meteor(jar=jar, java=_fake_java(tmp_path, "import sys\nsys.exit(1)\n")) as meteor:
        with pytest.raises(MetricUnavailable):
            meteor.compute_score({1: ["a"]}, {1: ["a"]})


def _spice_jar(tmp_path: Path, models: bool = True) -> Path:
    jar = tmp_path / "spice" / "spice-1.0.jar"
    (jar.parent / "lib").mkdir(parents=True)
    jar.write_bytes(b"")
    if models:
        for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"):
            (jar.parent / "lib" / name).write_bytes(b"")
    return jar


def test_spice_plumbing(tmp_path):
    spice = Spice(jar=_spice_jar(tmp_path), java=_fake_java(tmp_path, FAKE_SPICE))
    gts = {"b": ["x"], "a": ["y"], "c": ["z"]}
    res = {"b": ["two words"], "a": ["one"], "c": ["three more words"]}
    average, per_image = spice.compute_score(gts, res)
    assert average == pytest.approx((0.2 + 0.1 + 0.3) / 3)
    assert [p["All"]["f"] for p in per_image] == [0.1, 0.2, 0.3]  # sorted ids, like pycocoevalcap
    assert per_image[0]["All"]["pr"] == 0.5 and per_image[0]["All"]["re"] != per_image[0]["All"]["re"]  # NaN


def test_spice_needs_local_models(tmp_path):
    with pytest.raises(MetricUnavailable, match="not downloaded at run time"):
        Spice(jar=_spice_jar(tmp_path, models=False), java=sys.executable)


def test_spice_failure_is_reported(tmp_path):
    spice = Spice(jar=_spice_jar(tmp_path), java=_fake_java(tmp_path, "import sys\nprint('boom', file=sys.stderr)\n"
                                                                          "sys.exit(3)\n"))
    with pytest.raises(MetricUnavailable, match="exit 3.*boom"):
        spice.compute_score({1: ["a"]}, {1: ["a"]})


def test_evaluate_uses_spice_when_available(tmp_path):
    from imcap.metrics import evaluate

    out = evaluate({"a": ["a dog"], "b": ["a cat"]}, {"a": "a big dog", "b": "cat"}, ["SPICE", "CIDEr"],
                   spice_jar=_spice_jar(tmp_path), java=_fake_java(tmp_path, FAKE_SPICE))
    assert out.corpus["SPICE"] == pytest.approx(0.2)
    assert out.per_image["a"]["SPICE"] == pytest.approx(0.3) and out.per_image["b"]["SPICE"] == pytest.approx(0.1)
    json.dumps(out.corpus)
