"""Precomputed features: `imcap features`, region features, and training with --features-dir."""
import json
import re

import numpy as np
import pytest
import torch

from imcap_testing import tiny_train_options
from imcap.checkpoint import load_checkpoint
from imcap.cli import main
from imcap.data.features import FeatureStore
from imcap.errors import ImcapError
from imcap.config import FeatureOptions
from imcap.features import extract_features
from imcap.train import train


@pytest.fixture(scope="module")
def feats_from_run(tiny_run, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("feats")
    return extract_features(FeatureOptions(data=str(tiny_data), out=str(out), model=str(tiny_run), store="both", progress=False))


def test_features_match_the_cnn(feats_from_run, tiny_run, tiny_data):
    from imcap.captioner import Captioner
    from imcap.data.loader import PreproData

    store = FeatureStore(feats_from_run)
    meta = json.loads((feats_from_run / "meta.json").read_text())
    assert meta["kinds"] == ["pooled", "spatial"] and np.load(feats_from_run / "pooled.npy", mmap_mode="r").dtype == np.float16
    cap = Captioner.load(tiny_run, "cpu")
    data = PreproData.load(tiny_data)
    image = cap.to_tensor(data.image_path(5))[None]
    with torch.no_grad():
        grid = cap.model.encoder.grid(image)
        pooled = cap.model.encoder.pool(grid)[0]
    torch.testing.assert_close(store.get(data.images[5]["id"], "pooled"), pooled, rtol=2e-3, atol=2e-3)
    assert store.get(data.images[5]["id"], "spatial").shape == (grid.size(2) * grid.size(3), grid.size(1))


def test_training_on_features_uses_the_same_cnn(feats_from_run, tiny_data, tiny_run, tmp_path):
    run = train(tiny_train_options(tiny_data, tmp_path / "f", features_dir=str(feats_from_run), max_iters=4, save_checkpoint_every=2))
    new, old = load_checkpoint(run)["model"], load_checkpoint(tiny_run)["model"]
    for k in old:
        if k.startswith("encoder.backbone."):
            assert torch.equal(new[k], old[k]), k  # frozen and copied from the extracting model
    from imcap.captioner import Captioner

    assert isinstance(Captioner.load(run, "cpu").caption(torch.rand(3, 64, 64)), str)


def test_region_features_without_cnn(tiny_data, tmp_path):
    from imcap.data.loader import PreproData

    data = PreproData.load(tiny_data)
    regions = tmp_path / "regions"
    regions.mkdir()
    rng = np.random.default_rng(0)
    for i, im in enumerate(data.images):
        if i % 2:
            np.save(regions / f"{im['id']}.npy", rng.standard_normal((6, 10)).astype(np.float32))
        else:
            np.savez(regions / f"{im['id']}.npz", features=rng.standard_normal((6, 10)).astype(np.float32))
    run = train(tiny_train_options(tiny_data, tmp_path / "r", features_dir=str(regions), max_iters=3))
    args = load_checkpoint(run)["model_args"]
    assert args["cnn"] == "none" and args["feature_dim"] == 10
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "regions.h5", "w") as f:
        for im in data.images:
            f[im["id"]] = rng.standard_normal((4, 10)).astype(np.float32)
    store = FeatureStore(tmp_path / "regions.h5")
    assert store.get(data.images[0]["id"], "spatial").shape == (4, 10)
    assert store.get(data.images[0]["id"], "pooled").shape == (10,)


def test_feature_errors(tmp_path, capsys):
    with pytest.raises(ImcapError, match="not found"):
        FeatureStore(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImcapError, match="no features for image 'x'"):
        FeatureStore(empty).get("x", "spatial")
    with pytest.raises(SystemExit) as exc:
        main(["features", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--cnn", "small", "--cnn-weights", "none"])
    assert exc.value.code == 2 and "images.json" in capsys.readouterr().err


# ---------------------------------------------------------------- what is stored, its size, resuming


def _attention_checkpoint(tiny_run, tmp_path):
    """tiny_run's checkpoint relabelled as an attention model (features only read its CNN and model_args)."""
    from imcap.checkpoint import save_checkpoint

    ckpt = load_checkpoint(tiny_run)
    ckpt["model_args"] = {**ckpt["model_args"], "model": "show_attend_tell"}
    save_checkpoint(tmp_path / "att.pt", {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    return tmp_path / "att.pt"


def test_default_store_follows_the_decoder(tiny_run, tiny_data, tmp_path, caplog):
    import logging

    def stored(**kw):
        out = extract_features(FeatureOptions(data=str(tiny_data), out=str(tmp_path / "f"), progress=False, **kw))
        return json.loads((out / "meta.json").read_text())["kinds"], sorted(p.name for p in out.iterdir())

    with caplog.at_level(logging.INFO):
        assert stored(model=str(tiny_run)) == (["pooled"], ["meta.json", "pooled.npy"])  # show_tell
    size_line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("features: 60 images -> pooled ("))
    assert re.fullmatch(r"features: 60 images -> pooled \(256\) 31 KB, float16; [0-9.]+ [KMG]B free in \S+", size_line), size_line
    assert stored(model=str(_attention_checkpoint(tiny_run, tmp_path))) == (["spatial"], ["meta.json", "spatial.npy"])  # pooled.npy removed
    assert stored(cnn="small", cnn_weights="none") == (["pooled"], ["meta.json", "pooled.npy"])
    assert stored(cnn="small", cnn_weights="none", store="both")[0] == ["pooled", "spatial"]
    assert stored(cnn="small", cnn_weights="none", kinds="spatial,pooled")[0] == ["pooled", "spatial"]  # the old flag
    with pytest.raises(ImcapError, match="--store or its old name --kinds"):
        stored(cnn="small", kinds="pooled", store="pooled")


def test_sizes_match_the_files(tiny_data, tmp_path):
    from imcap.features import ArrayFile

    out = extract_features(FeatureOptions(data=str(tiny_data), out=str(tmp_path / "f"), cnn="small", cnn_weights="none", store="both", progress=False))
    for kind in ("pooled", "spatial"):
        arr = np.load(out / f"{kind}.npy")
        assert (out / f"{kind}.npy").stat().st_size == ArrayFile(out, kind, arr.shape).size and arr.dtype == np.float16
        assert np.isfinite(arr).all() and np.abs(arr).sum() > 0


@pytest.mark.slow
def test_a_killed_run_continues_where_it_stopped(tiny_data, tmp_path):
    """SIGKILL after the 3rd batch (12 images): the rerun continues at image 12 and matches an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys

    argv = [sys.executable, "-m", "imcap", "features", "--data", str(tiny_data), "--out", str(tmp_path / "f"), "--cnn", "small",
            "--cnn-weights", "none", "--store", "both", "--batch-size", "4", "--commit-every", "4", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "IMCAP_KILL_AT": "renamed:.progress.json:3"}
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert json.loads((tmp_path / "f" / ".progress.json").read_text())["rows"] == 12
    assert not (tmp_path / "f" / "meta.json").exists()
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert "continuing an unfinished run at image 12 of 60" in rerun.stderr
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["meta.json", "pooled.npy", "spatial.npy"]
    whole = extract_features(FeatureOptions(data=str(tiny_data), out=str(tmp_path / "g"), cnn="small", cnn_weights="none", store="both",
                                            batch_size=4, progress=False, device="cpu"))
    for kind in ("pooled", "spatial"):
        np.testing.assert_array_equal(np.load(tmp_path / "f" / f"{kind}.npy"), np.load(whole / f"{kind}.npy"))


def test_an_unfinished_run_with_other_options_is_started_over(tiny_data, tmp_path, caplog):
    import logging

    out = tmp_path / "f"
    out.mkdir()
    (out / ".progress.json").write_text(json.dumps({"key": {"data": "elsewhere"}, "rows": 40}))
    (out / ".pooled.npy.partial").write_bytes(b"\1" * 100)
    opts = FeatureOptions(data=str(tiny_data), out=str(out), cnn="small", cnn_weights="none", progress=False)
    with caplog.at_level(logging.INFO):
        extract_features(opts)
    assert any("an unfinished earlier run used other data or options; starting over" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "pooled.npy"]
    again = extract_features(FeatureOptions(**{**opts.__dict__, "out": str(tmp_path / "g")}))
    np.testing.assert_array_equal(np.load(out / "pooled.npy"), np.load(again / "pooled.npy"))


def test_preallocation_finds_a_full_disk_before_any_write(tiny_data, small_disk, monkeypatch):
    """Even past the free-space check (a race, or a disk that lies), posix_fallocate fails before the first batch."""
    import imcap.features

    disk, _ = small_disk
    monkeypatch.setattr(imcap.features, "check_free_space", lambda *a, **k: None)
    encoded = []
    monkeypatch.setattr(imcap.features.ArrayFile, "write_rows", lambda self, start, rows: encoded.append(start))
    opts = FeatureOptions(data=str(tiny_data), out=str(disk / "f"), cnn="small", cnn_weights="none", image_size=224, store="spatial", progress=False)
    with pytest.raises(ImcapError, match=r"/f/spatial.npy: no space left on device \(needs [0-9.]+ MB, [0-9.]+ [KM]B free\)$"):
        extract_features(opts)
    assert encoded == [] and sorted(p.name for p in (disk / "f").iterdir()) == []
