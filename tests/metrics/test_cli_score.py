"""`imcap score`: input formats, outputs and one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from imcap.cli import main
from imcap.metrics import score

REFS = {
    "1000268201_693b08cb0e.jpg": ["A child in a pink dress is climbing up stairs .", "A girl going into a building ."],
    "1001773457_577c3a7d70.jpg": ["A black dog and a spotted dog are fighting", "Two dogs on pavement ."],
    "1002674143_1b742ab4b8.jpg": ["A little girl covered in paint sits in front of a rainbow .", "A small girl paints ."],
}
PREDS = {
    "1000268201_693b08cb0e.jpg": "A girl in a pink dress climbs stairs .",
    "1001773457_577c3a7d70.jpg": "Two dogs fight .",
    "1002674143_1b742ab4b8.jpg": "",
}


def run(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(["score", *args])
    return int(exit_info.value.code or 0)


def write(path: Path, obj: object) -> str:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return str(path)


def expected() -> dict[str, float]:
    return score(REFS, PREDS, ["Bleu", "ROUGE_L", "CIDEr"])


@pytest.mark.parametrize("ref_format", ["mapping", "coco", "karpathy"])
@pytest.mark.parametrize("pred_format", ["mapping", "results"])
def test_formats(tmp_path, capsys, ref_format, pred_format):
    ids = list(REFS)
    if ref_format == "mapping":
        refs = write(tmp_path / "refs.json", REFS)
        keys = ids
    elif ref_format == "coco":
        refs = write(tmp_path / "refs.json", {"images": [{"id": n} for n in range(3)], "annotations": [
            {"image_id": n, "id": 10 * n + j, "caption": c} for n, k in enumerate(ids) for j, c in enumerate(REFS[k])]})
        keys = [0, 1, 2]
    else:
        refs = write(tmp_path / "refs.json", {"dataset": "flickr8k", "images": [
            {"filename": k, "imgid": n, "split": "test", "sentences": [{"raw": c, "tokens": c.split()} for c in REFS[k]]}
            for n, k in enumerate(ids)]})
        keys = [k.removesuffix(".jpg") for k in ids]  # matched by file stem
    if pred_format == "mapping":
        preds = write(tmp_path / "preds.json", {str(k): PREDS[i] for k, i in zip(keys, ids)})
    else:
        preds = write(tmp_path / "preds.json", [{"image_id": k, "caption": PREDS[i]} for k, i in zip(keys, ids)])
    code = run("--refs", refs, "--preds", preds, "--metrics", "Bleu", "ROUGE_L", "CIDEr",
               "--per-image", str(tmp_path / "per.json"), "--out", str(tmp_path / "out.json"))
    assert code == 0
    table = capsys.readouterr().out
    want = expected()
    for name, value in want.items():
        assert f"{name}" in table and f"{value:.4f}" in table
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["metrics"] == pytest.approx(want) and saved["images"] == 3
    per_image = json.loads((tmp_path / "per.json").read_text())
    assert list(per_image) == [str(k) for k in keys]
    empty = per_image[str(keys[2])]
    assert empty["CIDEr"] == 0 and empty["ROUGE_L"] == 0  # an empty prediction scores 0


def test_errors(tmp_path, capsys):
    good_refs = write(tmp_path / "refs.json", REFS)
    good_preds = write(tmp_path / "preds.json", PREDS)
    (tmp_path / "latin1.json").write_bytes('{"a": ["caf\xe9"]}'.encode("latin-1"))
    (tmp_path / "broken.json").write_text('{"a": ["x"', encoding="utf-8")
    cases = [
        (["--refs", str(tmp_path / "missing.json"), "--preds", good_preds], "no such file"),
        (["--refs", str(tmp_path / "latin1.json"), "--preds", good_preds], "not UTF-8"),
        (["--refs", str(tmp_path / "broken.json"), "--preds", good_preds], "invalid JSON"),
        (["--refs", good_refs, "--preds", write(tmp_path / "p1.json", {"other.jpg": "a dog"})], "have no references"),
        (["--refs", good_refs, "--preds", write(tmp_path / "p2.json", [{"image_id": "x", "caption": "a"},
                                                                     {"image_id": "x", "caption": "b"}])],
         "more than one prediction"),
        (["--refs", good_refs, "--preds", write(tmp_path / "p3.json", {"1000268201_693b08cb0e.jpg": 7})],
         "not a string"),
        (["--refs", write(tmp_path / "r2.json", [1, 2]), "--preds", good_preds], "expected COCO annotations"),
        (["--refs", good_refs, "--preds", good_preds, "--metrics", "WER"], "unknown metric"),
        (["--refs", good_refs, "--preds", write(tmp_path / "p4.json", [])], "no predictions"),
    ]
    for args, message in cases:
        assert run(*args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("imcap: error: ") and message in err and err.count("\n") == 1, err


def test_a_named_metric_that_cannot_run_is_an_error_after_the_other_scores(tmp_path, capsys):
    refs, preds = write(tmp_path / "refs.json", REFS), write(tmp_path / "preds.json", PREDS)
    missing = str(tmp_path / "none.jar")
    code = run("--refs", refs, "--preds", preds, "--metrics", "CIDEr", "METEOR", "--meteor-jar", missing, "--out", str(tmp_path / "out.json"))
    out, err = capsys.readouterr()
    assert code == 2 and "CIDEr" in out
    assert err.count("imcap: error:") == 1 and "asked for METEOR" in err and "none.jar" in err
    assert json.loads((tmp_path / "out.json").read_text())["metrics"]["CIDEr"] == pytest.approx(expected()["CIDEr"])
    assert run("--refs", refs, "--preds", preds, "--meteor-jar", missing, "--spice-jar", missing) == 0  # the default set only notes it
