"""The prepared image store: build, resume, kill safety, reading back, and the automatic loader settings."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imcap.data.images import load_image
from imcap.data.store import STORE_DIR, ImageStore, build_image_store, resize_shorter
from imcap.errors import ImcapError
from imcap.files import KILL_ENV


def write_images(root: Path, n: int, start: int = 0) -> list[str]:
    """`n` textured JPEGs of assorted sizes (landscape and portrait) under root/img; their relative paths."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(start, start + n):
        rng = np.random.default_rng(i)
        w, h = (80, 60) if i % 2 else (50, 70)
        base = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        base.save(root / "img" / f"{i:03d}.jpg", quality=95)
        names.append(f"img/{i:03d}.jpg")
    return names


def stored(store: ImageStore) -> dict[str, bytes]:
    return {p: store.read_bytes(p) for p in store.row}


def test_build_reads_back_the_resized_images(tmp_path):
    names = write_images(tmp_path, 10)
    (tmp_path / "img" / "bad.jpg").write_bytes(b"not an image")
    stats = build_image_store(tmp_path / "store", tmp_path, [*names, "img/bad.jpg"], 32, workers=2, shard_bytes=4096, progress=False)
    assert (stats.written, stats.reused, stats.bad) == (10, 0, 1)
    assert stats.shards >= 3 and stats.bytes > 0 and stats.images_per_s > 0
    store = ImageStore(tmp_path / "store")
    assert len(store) == 10 and store.size == 32
    for name in names:
        raw = resize_shorter(load_image(tmp_path / name), 32)
        img = store.load(name)
        assert img.size == raw.size and min(img.size) == 32
        diff = np.abs(np.asarray(img, dtype=np.float32) - np.asarray(raw, dtype=np.float32))
        assert diff.mean() < 3.0  # JPEG quality 90 of the same pixels
        small = store.load(name, min_side=8)  # decoded at a reduced JPEG scale, still >= 8 pixels a side
        assert 8 <= min(small.size) < 32
    with pytest.raises(ImcapError, match="bad.jpg"):
        store.load("img/bad.jpg")
    with pytest.raises(ImcapError, match="not in the image store"):
        store.load("img/other.jpg")


def test_shards_are_plain_tar_files_with_the_indexed_bytes(tmp_path):
    names = write_images(tmp_path, 6)
    build_image_store(tmp_path / "store", tmp_path, names, 24, workers=1, shard_bytes=4096, progress=False)
    store = ImageStore(tmp_path / "store")
    for index in sorted((tmp_path / "store").glob("shard-*.json")):
        meta = json.loads(index.read_text())
        with tarfile.open(tmp_path / "store" / meta["shard"]) as tar:
            members = tar.getmembers()
            assert [m.name.endswith(".jpg") for m in members] == [True] * len(meta["images"])
            for m, (path, offset, length, _, _) in zip(members, meta["images"]):
                assert (m.offset_data, m.size) == (offset, length)
                assert tar.extractfile(m).read() == store.read_bytes(path)


def test_a_rerun_keeps_finished_shards_and_adds_new_images(tmp_path):
    names = write_images(tmp_path, 6)
    build_image_store(tmp_path / "store", tmp_path, names, 24, workers=1, shard_bytes=4096, progress=False)
    before = stored(ImageStore(tmp_path / "store"))
    again = build_image_store(tmp_path / "store", tmp_path, names, 24, workers=1, shard_bytes=4096, progress=False)
    assert (again.written, again.reused) == (0, 6)
    more = write_images(tmp_path, 3, start=6)
    grown = build_image_store(tmp_path / "store", tmp_path, names + more, 24, workers=1, shard_bytes=4096, progress=False)
    assert (grown.written, grown.reused) == (3, 6)
    after = stored(ImageStore(tmp_path / "store"))
    assert {k: after[k] for k in before} == before and len(after) == 9
    other = build_image_store(tmp_path / "store", tmp_path, names, 16, workers=1, progress=False)  # another size: rebuilt
    assert (other.written, other.reused) == (6, 0) and ImageStore(tmp_path / "store").size == 16


@pytest.mark.parametrize("step", ["written", "renamed"])
def test_a_killed_build_leaves_no_shard_that_passes_for_whole(tmp_path, step):
    """SIGKILL while shard 1 is written (temporary file complete) or just after its rename (index not yet
    written): the store then holds shard 0 only, and a rerun ends with what an uninterrupted build writes."""
    names = write_images(tmp_path, 12)
    code = (f"from imcap.data.store import build_image_store; "
            f"build_image_store({str(tmp_path / 'store')!r}, {str(tmp_path)!r}, {names!r}, 24, workers=1, shard_bytes=4096, progress=False)")
    env = {**os.environ, KILL_ENV: f"{step}:shard-000001.tar:1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    left = sorted(p.name for p in (tmp_path / "store").iterdir())
    assert "shard-000001.json" not in left
    assert ("shard-000001.tar" in left) == (step == "renamed")
    partial = ImageStore(tmp_path / "store")
    first = json.loads((tmp_path / "store" / "shard-000000.json").read_text())
    assert sorted(partial.row) == sorted(e[0] for e in first["images"])
    resumed = build_image_store(tmp_path / "store", tmp_path, names, 24, workers=1, shard_bytes=4096, progress=False)
    assert resumed.reused == len(first["images"]) and resumed.written == 12 - resumed.reused
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".")]
    build_image_store(tmp_path / "clean", tmp_path, names, 24, workers=1, shard_bytes=4096, progress=False)
    assert stored(ImageStore(tmp_path / "store")) == stored(ImageStore(tmp_path / "clean"))


def test_training_data_reads_from_the_store(tmp_path):
    from imcap.data.loader import CaptionDataset, PreproData
    from imcap.data.prepro import PreproOptions, prepro
    from imcap.data.synth import generate_scenes

    generate_scenes(tmp_path / "synth", num_images=12, seed=3, progress=False)
    prepro(PreproOptions(input=str(tmp_path / "synth"), output_dir=str(tmp_path / "data"), word_count_threshold=0, image_store=48))
    data = PreproData.load(tmp_path / "data")
    assert data.store is not None and len(data.store) == 12
    from_store = CaptionDataset(data, [0, 5], 32, 2)[1][0]  # (3, 32, 32)
    data.store = None
    from_files = CaptionDataset(data, [0, 5], 32, 2)[1][0]
    assert from_store.shape == (3, 32, 32)
    assert float((from_store - from_files).abs().mean()) < 0.03
    images = json.loads((tmp_path / "data" / "images.json").read_text())
    images["images"][0]["file_path"] = "images/elsewhere.png"
    (tmp_path / "data" / "images.json").write_text(json.dumps(images))
    with pytest.raises(ImcapError, match=f"1 of 12 images are not in the image store.*{STORE_DIR}"):
        PreproData.load(tmp_path / "data")


def test_automatic_loader_settings():
    from imcap.data.loader import AUTO_WORKERS, MIN_ITEMS_FOR_WORKERS, loader_settings

    assert loader_settings(3, 10, cuda=False).num_workers == 3  # given: used as is
    assert loader_settings(AUTO_WORKERS, 10, cuda=False).num_workers == 0  # too few items to pay for workers
    assert loader_settings(AUTO_WORKERS, 10**6, reads_images=False, cuda=False).num_workers == 0  # memory-mapped features
    many = loader_settings(AUTO_WORKERS, MIN_ITEMS_FOR_WORKERS, cuda=True)
    assert 1 <= many.num_workers <= 8 and many.pin_memory and many.prefetch_factor == 4
