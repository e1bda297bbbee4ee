"""Precomputed features: `imcap features`, region features, and training with --features-dir."""
import json

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
    return extract_features(FeatureOptions(data=str(tiny_data), out=str(out), model=str(tiny_run), progress=False))


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
