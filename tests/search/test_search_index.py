"""Search indexes: build, append, atomic commits, queries, HTML pages, and one-line errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from imcap.checkpoint import load_checkpoint, save_checkpoint
from imcap.errors import ImcapError
from imcap.search import index as search_index
from imcap.search import load_index
from imcap.search.data import encode_query, load_image_uint8, pad_ids
from imcap.search.index import SearchIndex, build_index, write_hits_html
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
    resident = load_index(str(tmp_path / "idx")).search(texts, k=7)
    monkeypatch.setattr(search_index, "RESIDENT_BYTES", 0)
    monkeypatch.setattr(search_index, "QUERY_CHUNK_BYTES", 3 * 4 * (16 + 4 * 16))  # blocks of 3 rows
    index = load_index(str(tmp_path / "idx"))
    assert len(list(index.blocks())) == 5  # shards of 5, 5, 2 rows read 3 rows at a time
    streamed = index.search(texts, k=7)
    for a, b in zip(resident, streamed):
        assert [p for p, _ in a] == [p for p, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-5)
