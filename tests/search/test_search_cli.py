"""`imcap search train|eval|index|query` through the command line: outputs, index kinds, precomputed vectors and one-line errors."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
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


def _vectors(folder, n: int = 40, dim: int = 16, seed: int = 0) -> tuple[str, str, np.ndarray]:
    """(FILE.npy, FILE.txt, vectors): n unit vectors and the paths img/<row>.jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    np.save(folder / "v.npy", v)
    (folder / "v.txt").write_text("".join(f"img/{i:03d}.jpg\n" for i in range(n)))
    return str(folder / "v.npy"), str(folder / "v.txt"), v


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_index_kinds_and_precomputed_vectors(search_runs, gallery, tmp_path, capsys, kind):
    code, out, _ = _run(["search", "index", "--model", str(search_runs["dual"]), "--images", str(gallery), "--out", str(tmp_path / "idx"),
                         "--kind", kind], capsys)
    assert code == 0 and out.strip().endswith(f"8 in total ({kind} index)")
    code, out, _ = _run(["search", "query", "--index", str(tmp_path / "idx"), "a red circle", "-k", "3"], capsys)
    assert code == 0 and len(out.strip().splitlines()) == 3
    npy, txt, _ = _vectors(tmp_path / "in")
    code, out, _ = _run(["search", "index", "--embeddings", npy, "--paths", txt, "--out", str(tmp_path / "vec"), "--kind", kind], capsys)
    assert code == 0 and "added 40 image(s)" in out and f"({kind} index)" in out
    code, out, err = _run(["search", "query", "--index", str(tmp_path / "vec"), "a red circle"], capsys)
    assert code == 2 and "records no model" in err and err.count("\n") == 1
    code, out, _ = _run(["search", "query", "--index", str(tmp_path / "vec"), "--model", str(search_runs["dual"]), "a red circle", "-k", "5"], capsys)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 5 and all(line.split()[2].startswith("img/") for line in lines)


def _bad_vectors(folder, case: str) -> list[str]:
    """The argv (after `search index`) of one bad --embeddings/--paths input, written under `folder`."""
    npy, txt, v = _vectors(folder)
    if case == "counts":
        (folder / "v.txt").write_text("".join(f"img/{i}.jpg\n" for i in range(39)))
    elif case == "nan":
        v[5, 3] = np.nan
        np.save(npy, v)
    elif case == "length":
        np.save(npy, v * 2)
    elif case == "dtype":
        np.save(npy, (v * 100).astype(np.int32))
    elif case == "1-d":
        np.save(npy, v[0])
    elif case == "not npy":
        (folder / "v.npy").write_text("1 2 3")
    elif case == "empty line":
        (folder / "v.txt").write_text("a.jpg\nb.jpg\n\n" + "".join(f"img/{i}.jpg\n" for i in range(37)))
    elif case == "repeat":
        (folder / "v.txt").write_text("".join(f"img/{i % 39}.jpg\n" for i in range(40)))
    return ["--embeddings", npy, "--paths", txt]


@pytest.mark.parametrize("case, argv, problem", [
    ("counts", [], "40 vectors, but --paths names 39 images"),
    ("nan", [], "row 5 holds NaN or infinity"),
    ("length", [], "row 0 has length 2; the index needs unit-length"),
    ("dtype", [], "dtype int32"),
    ("1-d", [], "expected a 2-d (N, D) array"),
    ("not npy", [], "not a NumPy .npy array"),
    ("empty line", [], "line 3 is empty"),
    ("repeat", [], "line 40 repeats line 1"),
    ("good", ["--model", "{gna}"], "need a dual model"),
    ("good", ["--images", "{gallery}"], "give one of them"),
    ("good", ["--kind", "lsh"], "--kind must be one of"),
    ("none", ["--model", "{dual}", "--paths", "{txt}"], "--paths goes with --embeddings"),
    ("none", ["--embeddings", "{npy}"], "needs --paths"),
    ("none", ["--model", "{dual}"], "needs --model RUN and --images"),
    ("none", ["--embeddings", "{tmp}/missing.npy", "--paths", "{txt}"], "missing.npy: file not found"),
])
def test_bad_vectors_are_one_line_errors_and_write_nothing(search_runs, gallery, tmp_path, capsys, case, argv, problem):
    inputs = tmp_path / "in"
    given = _bad_vectors(inputs, case) if case != "none" else []
    names = {"gna": search_runs["gna"], "dual": search_runs["dual"], "gallery": gallery, "tmp": tmp_path,
             "npy": inputs / "v.npy", "txt": inputs / "v.txt"}
    if case == "none":
        _vectors(inputs)
    code, out, err = _run(["search", "index", "--out", str(tmp_path / "idx"), *given, *[a.format(**names) for a in argv]], capsys)
    assert code == 2 and out == ""
    assert err.startswith("imcap: error: ") and err.count("\n") == 1 and problem in err, err
    assert not (tmp_path / "idx").exists()


def test_vectors_of_another_size_do_not_join_an_index(search_runs, tmp_path, capsys):
    npy, txt, _ = _vectors(tmp_path / "a", dim=16)
    assert _run(["search", "index", "--embeddings", npy, "--paths", txt, "--out", str(tmp_path / "idx")], capsys)[0] == 0
    npy8, txt8, _ = _vectors(tmp_path / "b", dim=8)
    for extra, problem in ([["--out", str(tmp_path / "idx")], "8-d vectors, but the index"],
                           [["--out", str(tmp_path / "new"), "--model", str(search_runs["dual"])], "8-d vectors, but --model"]):
        code, out, err = _run(["search", "index", "--embeddings", npy8, "--paths", txt8, *extra], capsys)
        assert code == 2 and problem in err and err.count("\n") == 1


def test_without_faiss_index_and_query_say_how_to_install_it(search_runs, gallery, tmp_path, capsys, monkeypatch):
    assert _run(["search", "index", "--model", str(search_runs["dual"]), "--images", str(gallery), "--out", str(tmp_path / "idx")], capsys)[0] == 0
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` fails, as when it is not installed
    npy, txt, _ = _vectors(tmp_path / "in")
    for argv in (["query", "--index", str(tmp_path / "idx"), "a red circle"],
                 ["index", "--model", str(search_runs["dual"]), "--images", str(gallery), "--out", str(tmp_path / "new")],
                 ["index", "--embeddings", npy, "--paths", txt, "--out", str(tmp_path / "new")]):
        code, out, err = _run(["search", *argv], capsys)
        assert code == 2 and out == "" and err.count("\n") == 1 and "pip install 'imcap[scale]'" in err
