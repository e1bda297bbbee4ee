"""`imcap search train|eval|index|query` through the command line: outputs and one-line errors."""
from __future__ import annotations

import json
import shutil

import pytest

from imcap.cli import main


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture
def gallery(tmp_path, synth_images):
    out = tmp_path / "gallery"
    out.mkdir()
    for p in sorted(synth_images.glob("*.png"))[:8]:
        shutil.copy(p, out / p.name)
    (out / "broken.png").write_text("no image")
    return out


def test_train_eval_index_query(tiny_data, tmp_path, gallery, capsys):
    run = tmp_path / "run"
    code, out, _ = _run(["search", "train", "--data", str(tiny_data), "--checkpoint-path", str(run), "--model", "dual",
                         "--cnn-width", "4", "--image-size", "32", "--input-encoding-size", "16", "--rnn-size", "16",
                         "--embed-size", "16", "--batch-size", "8", "--max-iters", "3", "--save-checkpoint-every", "3",
                         "--no-progress"], capsys)
    assert code == 0 and "best.pt" in out
    code, out, _ = _run(["search", "eval", "--model", str(run), "--json"], capsys)
    metrics = json.loads(out)
    assert code == 0 and metrics["kind"] == "dual" and metrics["gallery"] == 6 and 0 <= metrics["top1"] <= 1
    code, out, err = _run(["search", "index", "--model", str(run), "--images", str(gallery), "--out", str(tmp_path / "idx")], capsys)
    assert code == 0 and "added 8 image(s)" in out and "skipped 1 bad image(s)" in err
    html = tmp_path / "hits.html"
    code, out, err = _run(["search", "query", "--index", str(tmp_path / "idx"), "a", "green", "square", "-k", "3", "--html", str(html)], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3 and lines[0].split()[0] == "1" and lines[0].split()[2].endswith(".png")
    assert html.is_file() and "a green square" in html.read_text()
    code, out, _ = _run(["search", "query", "--index", str(tmp_path / "idx"), "a green square", "-k", "2", "--json"], capsys)
    result = json.loads(out)
    assert result["query"] == "a green square" and len(result["hits"]) == 2


@pytest.mark.parametrize("argv, problem", [
    (["search", "query", "--index", "{tmp}/missing", "a man"], "search index not found"),
    (["search", "query", "--index", "{idx}", ""], "empty query"),
    (["search", "query", "--index", "{idx}", "--model", "{gna}", "a red circle"], "another model"),
    (["search", "index", "--model", "{gna}", "--images", "{gallery}", "--out", "{idx}"], "another model"),
    (["search", "eval", "--model", "{caption}"], "not a search model"),
    (["search", "eval", "--model", "{tmp}/nothing"], "not found"),
    (["search", "train", "--data", "{tmp}/nothing", "--max-iters", "1", "--checkpoint-path", "{tmp}/r"], "not found"),
])
def test_errors_are_one_line(search_runs, tiny_run, gallery, tmp_path, capsys, argv, problem):
    idx = tmp_path / "idx"
    _run(["search", "index", "--model", str(search_runs["dual"]), "--images", str(gallery), "--out", str(idx)], capsys)
    names = {"tmp": tmp_path, "idx": idx, "gna": search_runs["gna"], "gallery": gallery, "caption": tiny_run}
    code, out, err = _run([a.format(**names) for a in argv], capsys)
    assert code == 2 and out == ""
    assert err.startswith("imcap: error: ") and err.count("\n") == 1 and problem in err
