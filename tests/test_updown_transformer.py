"""`--model updown` and `--model transformer` end to end through the CLI: train (cross-entropy, Noam warm-up,
label smoothing, SCST), exact resume in the middle of SCST, eval with its report, caption --attention, region
features with boxes, and the web service."""
import json

import numpy as np
import pytest
import torch

from imcap.checkpoint import load_checkpoint
from imcap.cli import main

SMALL = ["--cnn", "small", "--cnn-width", "4", "--batch-size", "4", "--seq-per-img", "2", "--val-images-use", "4", "--no-progress", "--seed", "5"]
MODELS = {
    "updown": ["--model", "updown", "--input-encoding-size", "16", "--rnn-size", "16", "--learning-rate", "1e-3"],
    "transformer": ["--model", "transformer", "--d-model", "16", "--num-heads", "2", "--ff-size", "32", "--num-layers", "1",
                    "--learning-rate", "1e-3", "--lr-schedule", "noam", "--warmup-steps", "2", "--label-smoothing", "0.1"],
}


def run(capsys, *argv) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def train(capsys, data, run_dir, model: str, *extra) -> None:
    code, _, err = run(capsys, "train", "--data", data, "--checkpoint-path", run_dir, *SMALL, *MODELS[model], *extra)
    assert code == 0, err


@pytest.mark.slow
@pytest.mark.parametrize("model", ["updown", "transformer"])
def test_train_eval_caption_and_exact_resume_mid_scst(capsys, tiny_data, tmp_path, model):
    flags = ["--self-critical-after", "2", "--sc-sample-n", "2", "--sc-learning-rate", "1e-3", "--save-checkpoint-every", "3"]
    train(capsys, tiny_data, tmp_path / "full", model, "--max-iters", "5", *flags)
    train(capsys, tiny_data, tmp_path / "split", model, "--max-iters", "3", *flags)
    code, _, err = run(capsys, "train", "--checkpoint-path", tmp_path / "split", "--resume", "--max-iters", "5", "--no-progress")
    assert code == 0, err
    full, split = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert full["model_args"]["model"] == model and full["iteration"] == split["iteration"] == 5
    for k in full["model"]:
        assert torch.equal(full["model"][k], split["model"][k]), k
    logged = full["history"]["train_loss"]
    assert all(np.isfinite(e["loss"]) for e in logged)

    code, out, err = run(capsys, "eval", "--model", tmp_path / "full", "--split", "test", "--max-images", "3", "--beam-size", "2", "--no-progress")
    assert code == 0, err
    metrics = json.loads((tmp_path / "full" / "eval-test" / "metrics.json").read_text())
    assert metrics["images"] == 3 and "CIDEr" in metrics
    assert "attention of each word" in (tmp_path / "full" / "eval-test" / "report.html").read_text()

    image = sorted((tiny_data.parent / "synth" / "images").glob("*.png"))[0]
    code, out, err = run(capsys, "caption", "--model", tmp_path / "full", image, "--attention", tmp_path / "maps", "--json", "--beam-size", "3")
    assert code == 0, err
    assert json.loads(out)["results"][0]["file"] == str(image)
    assert (tmp_path / "maps" / f"{image.stem}.png").is_file()


@pytest.mark.parametrize("model", ["updown", "transformer"])
def test_region_features_with_boxes(capsys, tiny_data, tmp_path, model):
    """36-region-style features (here 6 regions of 8 values plus a box) read from <id>.npy files."""
    regions = tmp_path / "regions"
    regions.mkdir()
    rng = np.random.default_rng(0)
    for im in json.loads((tiny_data / "images.json").read_text())["images"]:
        corner = rng.random((6, 2)) * 0.5
        boxes = np.concatenate([corner, corner + 0.5], axis=1)  # x0, y0, x1, y1 in [0, 1]
        np.save(regions / f"{im['id']}.npy", np.concatenate([rng.standard_normal((6, 8)), boxes], axis=1).astype(np.float32))
    extra = ["--position-encoding", "boxes"] if model == "transformer" else []
    train(capsys, tiny_data, tmp_path / "run", model, "--features-dir", regions, "--max-iters", "3", "--save-checkpoint-every", "3", *extra)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["model_args"]["cnn"] == "none" and ckpt["model_args"]["feature_dim"] == 12
    if model == "transformer":
        assert ckpt["model"]["decoder.feat_proj.0.weight"].shape[1] == 8  # the box columns go to the box encoding
    code, _, err = run(capsys, "eval", "--model", tmp_path / "run", "--split", "val", "--max-images", "3", "--no-progress")
    assert code == 0, err


@pytest.mark.parametrize("model", ["updown", "transformer"])
def test_the_web_service_returns_attention_maps(tiny_data, tmp_path, model):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")
    from fastapi.testclient import TestClient
    from imcap_testing import tiny_train_options

    from imcap.captioner import Captioner
    from imcap.serve.app import create_app
    from imcap.serve.settings import ServeSettings
    from imcap.train import train as train_run

    sizes = dict(d_model=16, num_heads=2, ff_size=32) if model == "transformer" else {}
    captioner = Captioner.load(train_run(tiny_train_options(tiny_data, tmp_path / model, model=model, max_iters=2, save_checkpoint_every=2, **sizes)), "cpu")
    png = sorted((tiny_data.parent / "synth" / "images").glob("*.png"))[0].read_bytes()
    with TestClient(create_app(captioner, ServeSettings())) as client:
        assert client.get("/v1/model").json()["serving"]["has_attention"] is True
        r = client.post("/v1/caption?attention=true&beam_size=2", files=[("image", ("a.png", png, "application/octet-stream"))])
    assert r.status_code == 200, r.text
    cap = r.json()["results"][0]["captions"][0]
    assert cap["attention"]["words"] == cap["caption"].split()
    assert all(len(m) == 8 and len(m[0]) == 8 for m in cap["attention"]["maps"])  # the small CNN's 8 x 8 grid at 64 px
