"""Search indexes: build, append, atomic commits, the faiss kinds (flat, ivf, hnsw), precomputed vectors, queries,
HTML pages, and one-line errors."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch

from imcap.checkpoint import load_checkpoint, save_checkpoint
from imcap.errors import ImcapError
from imcap.search import faiss_index
from imcap.search import index as search_index
from imcap.search.data import encode_query, load_image_uint8, pad_ids
from imcap.search.index import SearchIndex, build_index, build_index_from_vectors, load_index, write_hits_html
from imcap.search.models import load_search_model


@pytest.fixture
def folder(tmp_path, synth_images):
    """12 scene images and two bad files."""
    out = tmp_path / "gallery"
    out.mkdir()
    for p in sorted(synth_images.glob("*.png"))[:12]:
        shutil.copy(p, out / p.name)
    (out / "broken.png").write_bytes(b"not a png at all")
    (out / "empty.jpg").write_bytes(b"")
    return out


@pytest.mark.parametrize("kind", ["gna", "dual"])
def test_index_query_ranks_like_the_model(search_runs, folder, tmp_path, kind):
    report = build_index(search_runs[kind], [str(folder)], tmp_path / "idx", batch_size=5, progress=False)
    assert (report.added, report.already, report.total, len(report.skipped)) == (12, 0, 12, 2)
    assert {f.split("/")[-1] for f, _ in report.skipped} == {"broken.png", "empty.jpg"}
    index = load_index(str(tmp_path / "idx"))
    assert isinstance(index, SearchIndex) and len(index) == 12 and index.kind == kind
    hits = index.query("a red circle", k=5)
    assert len(hits) == 5 and all(isinstance(p, str) and isinstance(s, float) for p, s in hits)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    # the same ranking straight from the model
    loaded = load_search_model(search_runs[kind])
    files = sorted(p for p in folder.glob("*.png") if p.name != "broken.png")
    with torch.no_grad():
        gallery = loaded.model.image_features(torch.stack([load_image_uint8(p, loaded.model.encoder.input_size) for p in files]).float() / 255)
        text = loaded.model.text_features(pad_ids([encode_query("a red circle", loaded.vocab, loaded.max_length)]))
        direct = loaded.model.to_probability(loaded.model.scores(text, gallery))[0]
    best = torch.argsort(direct, descending=True)[:5]
    assert [str(files[i].resolve()) for i in best] == [p for p, _ in hits]
    np.testing.assert_allclose([s for _, s in hits], direct[best].numpy(), rtol=2e-3, atol=2e-3)
    assert len(index.query("a red circle", k=100)) == 12


def test_append_adds_only_new_images(search_runs, folder, tmp_path, synth_images):
    out = tmp_path / "idx"
    build_index(search_runs["dual"], [str(p) for p in sorted(folder.glob("0*.png"))[:5]], out, progress=False)
    again = build_index(search_runs["dual"], [str(folder)], out, progress=False)
    assert (again.added, again.already, again.total) == (7, 5, 12)
    manifest = json.loads((out / "index.json").read_text())
    assert [s["count"] for s in manifest["shards"]] == [5, 7] and manifest["count"] == 12
    same = build_index(search_runs["dual"], [str(folder)], out, progress=False)
    assert (same.added, same.already, same.total) == (0, 12, 12)
    paths = load_index(str(out)).paths
    assert len(paths) == len(set(paths)) == 12


def test_shards_are_committed_one_by_one(search_runs, folder, tmp_path):
    report = build_index(search_runs["dual"], [str(folder)], tmp_path / "idx", batch_size=4, shard_rows=4, progress=False)
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert report.total == 12 and [s["count"] for s in manifest["shards"]] == [4, 4, 4]
    assert manifest["dtype"] == "float16" and manifest["dim"] == 16


def test_a_failed_append_leaves_the_index_as_it_was(search_runs, folder, tmp_path, monkeypatch):
    out = tmp_path / "idx"
    build_index(search_runs["dual"], [str(p) for p in sorted(folder.glob("0*.png"))[:5]], out, progress=False)
    before = (out / "index.json").read_bytes()
    hits_before = load_index(str(out)).query("a blue square", k=3)

    def crash(path, obj):
        raise OSError("disk full")

    monkeypatch.setattr(search_index, "atomic_write_json", crash)
    with pytest.raises(OSError):
        build_index(search_runs["dual"], [str(folder)], out, progress=False)
    monkeypatch.undo()
    assert (out / "index.json").read_bytes() == before
    assert load_index(str(out)).query("a blue square", k=3) == hits_before
    assert len(list(out.glob("shard-*.npy"))) == 2  # the uncommitted shard is still on disk ...
    build_index(search_runs["dual"], [str(folder)], out, progress=False)
    manifest = json.loads((out / "index.json").read_text())
    assert len(list(out.glob("shard-*.npy"))) == len(manifest["shards"]) == 2  # ... until the next build clears it


def test_index_errors_are_one_line(search_runs, folder, tmp_path, tiny_run):
    out = tmp_path / "idx"
    with pytest.raises(ImcapError, match="search index not found"):
        load_index(str(tmp_path / "missing"))
    build_index(search_runs["dual"], [str(folder)], out, progress=False)
    with pytest.raises(ImcapError, match="another model"):
        build_index(search_runs["gna"], [str(folder)], out, progress=False)
    with pytest.raises(ImcapError, match="another model"):
        load_index(str(out), model=search_runs["gna"])
    with pytest.raises(ImcapError, match="not a search model"):
        build_index(tiny_run, [str(folder)], tmp_path / "other", progress=False)
    with pytest.raises(ImcapError, match="not empty"):
        build_index(search_runs["dual"], [str(folder)], folder, progress=False)
    with pytest.raises(ImcapError, match="no image could be indexed"):
        build_index(search_runs["dual"], [str(folder / "broken.png")], tmp_path / "bad", progress=False)
    index = load_index(str(out))
    with pytest.raises(ImcapError, match="empty query"):
        index.query("  ", k=3)
    with pytest.raises(ImcapError, match="-k"):
        index.query("a red circle", k=0)
    (tmp_path / "notindex").mkdir()
    with pytest.raises(ImcapError, match="no index.json"):
        load_index(str(tmp_path / "notindex"))
    (out / "index.json").write_text("{")
    with pytest.raises(ImcapError, match="unreadable search index"):
        load_index(str(out))


def test_index_of_a_changed_or_missing_model_is_refused(search_runs, folder, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(search_runs["dual"], run)
    out = tmp_path / "idx"
    build_index(run, [str(folder)], out, progress=False)
    recorded = json.loads((out / "index.json").read_text())["model"]["path"]
    ckpt = load_checkpoint(recorded)
    save_checkpoint(recorded, {**ckpt, "fingerprint": "retrained:99"})
    with pytest.raises(ImcapError, match="has changed since"):
        load_index(str(out))
    shutil.rmtree(run)
    with pytest.raises(ImcapError, match="is gone"):
        load_index(str(out))


def test_html_page_of_hits(search_runs, folder, tmp_path):
    build_index(search_runs["dual"], [str(folder)], tmp_path / "idx", progress=False)
    hits = load_index(str(tmp_path / "idx")).query("a red circle", k=4)
    page = write_hits_html(tmp_path / "hits.html", "a <red> circle", hits, "dual").read_text()
    assert "a &lt;red&gt; circle" in page and "<red>" not in page
    assert page.count("data:image/png;base64,") == 4 and page.count("class='hit'") == 4
    assert all(p in page for p, _ in hits) and f"{hits[0][1]:.4f}" in page


def test_a_large_index_is_streamed_from_the_shards(search_runs, folder, tmp_path, monkeypatch):
    build_index(search_runs["gna"], [str(folder)], tmp_path / "idx", batch_size=5, shard_rows=5, progress=False)
    texts = ["a red circle", "two shapes : a blue square and a green cross"]
    resident = load_index(str(tmp_path / "idx")).query_batch(texts, k=7)
    monkeypatch.setattr(search_index, "RESIDENT_BYTES", 0)
    monkeypatch.setattr(search_index, "QUERY_CHUNK_BYTES", 3 * 4 * (16 + 4 * 16))  # blocks of 3 rows
    index = load_index(str(tmp_path / "idx"))
    assert len(list(index.blocks())) == 5  # shards of 5, 5, 2 rows read 3 rows at a time
    streamed = index.query_batch(texts, k=7)
    for a, b in zip(resident, streamed):
        assert [p for p, _ in a] == [p for p, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-5)


# ---------------------------------------------------------------- faiss kinds, precomputed vectors, appends


def clustered(n: int, dim: int, clusters: int, seed: int = 0, spread: float = 1.0) -> np.ndarray:
    """n unit vectors (n, dim) float32 around `clusters` random unit centres (the neighbourhoods real embeddings have)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim)) * spread / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_vectors(folder, vectors: np.ndarray, first: int = 0, name: str = "v"):
    """(FILE.npy, FILE.txt) holding `vectors` and the paths img/<first + row>.jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / f"{name}.npy", vectors)
    (folder / f"{name}.txt").write_text("".join(f"img/{first + i:05d}.jpg\n" for i in range(len(vectors))))
    return folder / f"{name}.npy", folder / f"{name}.txt"


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / exact.shape[1] for a, b in zip(found.tolist(), exact.tolist())]))


def manifest_of(root) -> dict:
    return json.loads((root / "index.json").read_text())


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_each_kind_builds_saves_loads_and_queries(search_runs, folder, tmp_path, kind):
    build_index(search_runs["dual"], [str(folder)], tmp_path / "exact", kind="flat", progress=False)
    report = build_index(search_runs["dual"], [str(folder)], tmp_path / kind, kind=kind, progress=False)
    assert (report.kind, report.added, report.total) == (kind, 12, 12)
    structure = manifest_of(tmp_path / kind)["structure"]
    assert (structure["kind"], structure["count"], structure["auto"]) == (kind, 12, False)
    saved = [p.name for p in (tmp_path / kind).glob("faiss-*")]
    assert saved == ([] if kind == "flat" else [structure["file"]])  # flat is built from the shards when opened
    index, exact = load_index(str(tmp_path / kind)), load_index(str(tmp_path / "exact"))
    assert index.index_kind == kind and len(index) == 12
    texts = ["a red circle", "a blue square and a green cross", "a small white triangle"]
    batch = index.query_batch(texts, k=5)
    for text, hits in zip(texts, batch):  # on 12 images ivf probes every cell and hnsw visits every node: exact
        expected = exact.query(text, k=5)
        assert [p for p, _ in hits] == [p for p, _ in expected] == [p for p, _ in index.query(text, k=5)]
        np.testing.assert_allclose([s for _, s in hits], [s for _, s in expected], atol=1e-5)
    assert len(index.query("a red circle", k=50)) == 12  # past the end: no padding rows


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_find_the_exact_neighbours_of_clustered_vectors(tmp_path, kind):
    vectors = clustered(4200, 32, clusters=40)
    gallery, queries = vectors[:4000], vectors[4000:]
    npy, txt = write_vectors(tmp_path, gallery)
    build_index_from_vectors(npy, txt, tmp_path / "flat", kind="flat", progress=False)
    build_index_from_vectors(npy, txt, tmp_path / kind, kind=kind, progress=False)
    exact = load_index(tmp_path / "flat", vectors_only=True).search_vectors(queries, 10)[1]
    index = load_index(tmp_path / kind, vectors_only=True)
    scores, rows = index.search_vectors(queries, 10)
    assert recall(rows, exact) >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    _, itself = index.search_vectors(gallery[:40], 1)
    assert itself[:, 0].tolist() == list(range(40)) and index.paths[7] == "img/00007.jpg"
    if kind == "ivf":  # fewer probed cells: faster and worse, so the parameter reaches faiss
        index.set_search_params(nprobe=1)
        assert recall(index.search_vectors(queries, 10)[1], exact) < 0.9


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_appending_vectors_extends_the_structure(tmp_path, kind):
    vectors = clustered(560, 16, clusters=8, seed=1)
    first = write_vectors(tmp_path / "in", vectors[:120], name="first")
    build_index_from_vectors(*first, tmp_path / "idx", kind=kind, progress=False)
    before = manifest_of(tmp_path / "idx")["structure"]
    second = write_vectors(tmp_path / "in", vectors[100:300], first=100, name="second")  # 20 rows overlap
    report = build_index_from_vectors(*second, tmp_path / "idx", progress=False)  # --kind auto keeps the explicit kind
    after = manifest_of(tmp_path / "idx")["structure"]
    assert (report.added, report.already, report.total, report.kind) == (180, 20, 300, kind)
    assert after["count"] == 300 and after["file"] != before["file"] and after["params"] == before["params"]
    assert [p.name for p in (tmp_path / "idx").glob("faiss-*")] == [after["file"]]  # the old structure file is gone
    index = load_index(tmp_path / "idx", vectors_only=True)
    assert index.paths == [f"img/{i:05d}.jpg" for i in range(300)]
    _, itself = index.search_vectors(vectors[:300], 1)
    assert itself[:, 0].tolist() == list(range(300))
    if kind == "ivf":  # grown past IVF_RETRAIN_GROWTH times what it was trained on: trained again
        third = write_vectors(tmp_path / "in", vectors[300:], first=300, name="third")
        build_index_from_vectors(*third, tmp_path / "idx", progress=False)
        assert manifest_of(tmp_path / "idx")["structure"]["params"]["trained_on"] == 560


def test_auto_kind_follows_the_size_and_an_explicit_kind_sticks(tmp_path, monkeypatch):
    monkeypatch.setattr(faiss_index, "AUTO_FLAT_BELOW", 250)
    vectors = clustered(400, 16, clusters=4, seed=2)
    small = write_vectors(tmp_path / "in", vectors[:200], name="small")
    more = write_vectors(tmp_path / "in", vectors[200:], first=200, name="more")
    assert build_index_from_vectors(*small, tmp_path / "auto", progress=False).kind == "flat"
    assert build_index_from_vectors(*more, tmp_path / "auto", progress=False).kind == faiss_index.LARGE_KIND
    assert manifest_of(tmp_path / "auto")["structure"]["auto"] is True
    assert build_index_from_vectors(*small, tmp_path / "explicit", kind="ivf", progress=False).kind == "ivf"
    assert build_index_from_vectors(*more, tmp_path / "explicit", progress=False).kind == "ivf"
    rebuilt = build_index_from_vectors(*more, tmp_path / "explicit", kind="flat", progress=False)  # nothing new: kind changed
    assert (rebuilt.added, rebuilt.kind) == (0, "flat") and not list((tmp_path / "explicit").glob("faiss-*"))


def test_an_index_written_before_faiss_still_loads_and_appends(search_runs, folder, tmp_path):
    out = tmp_path / "idx"
    build_index(search_runs["dual"], [str(p) for p in sorted(folder.glob("0*.png"))[:5]], out, progress=False)
    manifest = manifest_of(out)
    hits = load_index(str(out)).query("a red circle", k=3)
    del manifest["structure"]
    (out / "index.json").write_text(json.dumps({**manifest, "version": 1}))  # what imcap wrote before faiss
    old = load_index(str(out))
    assert old.index_kind == "flat" and old.query("a red circle", k=3) == hits
    report = build_index(search_runs["dual"], [str(folder)], out, progress=False)
    assert (report.added, report.total) == (7, 12)
    assert manifest_of(out)["version"] == 2 and manifest_of(out)["structure"]["count"] == 12


def test_a_structure_behind_its_shards_is_refused_until_the_build_is_rerun(tmp_path, monkeypatch):
    vectors = clustered(300, 16, clusters=4, seed=3)
    build_index_from_vectors(*write_vectors(tmp_path / "in", vectors[:200], name="a"), tmp_path / "idx", kind="hnsw", progress=False)
    more = write_vectors(tmp_path / "in", vectors[200:], first=200, name="b")

    def crash(index, path):
        raise OSError("killed")

    monkeypatch.setattr(faiss_index, "write_structure", crash)
    with pytest.raises(OSError):
        build_index_from_vectors(*more, tmp_path / "idx", progress=False)  # the shard is committed, the structure is not
    monkeypatch.undo()
    with pytest.raises(ImcapError, match="covers 200 of 300 images.*again"):
        load_index(tmp_path / "idx", vectors_only=True)
    report = build_index_from_vectors(*more, tmp_path / "idx", progress=False)
    assert (report.added, report.already, report.total) == (0, 100, 300)
    assert len(load_index(tmp_path / "idx", vectors_only=True)) == 300


def test_vectors_need_a_model_for_text_queries(search_runs, tmp_path):
    npy, txt = write_vectors(tmp_path, clustered(30, 16, clusters=3))
    build_index_from_vectors(npy, txt, tmp_path / "idx", progress=False)
    with pytest.raises(ImcapError, match="records no model.*--model"):
        load_index(tmp_path / "idx")
    hits = load_index(tmp_path / "idx", model=search_runs["dual"]).query("a red circle", k=4)
    assert len(hits) == 4 and all(p.startswith("img/") for p, _ in hits)
    with pytest.raises(ImcapError, match="dual model"):
        load_index(tmp_path / "idx", model=search_runs["gna"])
    with pytest.raises(ImcapError, match="another model"):  # vectors of no model do not mix with a model's
        build_index_from_vectors(npy, txt, tmp_path / "idx", model=search_runs["dual"], progress=False)


def test_a_gna_index_is_always_flat_and_needs_no_faiss(search_runs, folder, tmp_path, monkeypatch):
    with pytest.raises(ImcapError, match="only flat applies"):
        build_index(search_runs["gna"], [str(folder)], tmp_path / "idx", kind="hnsw", progress=False)
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now fails, as when it is not installed
    report = build_index(search_runs["gna"], [str(folder)], tmp_path / "idx", progress=False)
    index = load_index(str(tmp_path / "idx"))
    assert report.kind == index.index_kind == "flat" and len(index.query("a red circle", k=3)) == 3
    with pytest.raises(ImcapError, match="no vector search"):
        index.search_vectors(np.zeros((1, index.manifest["dim"]), np.float32))


def test_missing_faiss_is_a_one_line_error(search_runs, folder, tmp_path, monkeypatch):
    build_index(search_runs["dual"], [str(folder)], tmp_path / "idx", progress=False)
    npy, txt = write_vectors(tmp_path, clustered(10, 16, clusters=2))
    monkeypatch.setitem(sys.modules, "faiss", None)
    for attempt in (lambda: load_index(str(tmp_path / "idx")),
                    lambda: build_index(search_runs["dual"], [str(folder)], tmp_path / "other", progress=False),
                    lambda: build_index_from_vectors(npy, txt, tmp_path / "vectors", progress=False)):
        with pytest.raises(ImcapError, match=r"faiss, which is not installed: pip install 'imcap\[scale\]'"):
            attempt()
    assert not (tmp_path / "other").exists() and not (tmp_path / "vectors").exists()


def test_serve_searches_a_faiss_index(search_runs, folder, tmp_path, tiny_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from imcap.captioner import Captioner
    from imcap.serve.app import ServeSettings, create_app, load_search_index

    build_index(search_runs["dual"], [str(folder)], tmp_path / "idx", kind="hnsw", progress=False)
    index = load_search_index(str(tmp_path / "idx"))
    assert index.index_kind == "hnsw"
    with TestClient(create_app(Captioner.load(tiny_run, "cpu"), ServeSettings(), index)) as client:
        r = client.post("/v1/search", json={"query": "a red circle", "k": 3})
    assert r.status_code == 200, r.text
    assert [h["path"] for h in r.json()["results"]] == [p for p, _ in index.query("a red circle", k=3)]
