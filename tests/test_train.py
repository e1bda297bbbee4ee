import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from imcap_testing import tiny_train_options
from imcap.checkpoint import load_checkpoint
from imcap.errors import ImcapError
from imcap.train import Trainer, decayed_lr, train


def weights(run: Path, name: str = "last.pt") -> dict:
    return load_checkpoint(run / name)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_tiny_run_writes_everything(tiny_run):
    for name in ("last.pt", "best.pt", "history.json", "curves.png", "options.json"):
        assert (tiny_run / name).exists(), name
    ckpt = load_checkpoint(tiny_run)
    assert ckpt["iteration"] == 6
    assert {"optimizer", "cnn_optimizer", "rng", "options", "vocab", "history", "position", "epoch"} <= ckpt.keys()
    history = json.loads((tiny_run / "history.json").read_text())
    assert [v["iteration"] for v in history["val"]] == [3, 6]


def test_resume_is_exact_in_process(tiny_data, tmp_path):
    train(tiny_train_options(tiny_data, tmp_path / "full", max_iters=8))
    train(tiny_train_options(tiny_data, tmp_path / "split", max_iters=3))
    train(tiny_train_options(tiny_data, tmp_path / "split", max_iters=8, resume=True))
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "split"))
    full, split = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert full["epoch"] == split["epoch"] and full["position"] == split["position"]
    for a, b in zip(full["optimizer"]["state"].values(), split["optimizer"]["state"].values()):
        assert torch.equal(a["exp_avg"], b["exp_avg"])


def test_resume_across_epoch_boundary(tiny_data, tmp_path):
    # 48 training images / batch 4 = 12 iterations per epoch: stop inside epoch 2.
    kw = dict(save_checkpoint_every=5, batch_size=4)
    train(tiny_train_options(tiny_data, tmp_path / "full", max_iters=15, **kw))
    train(tiny_train_options(tiny_data, tmp_path / "split", max_iters=10, **kw))
    train(tiny_train_options(tiny_data, tmp_path / "split", max_iters=15, resume=True, **kw))
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "split"))
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 1


def _train_cmd(data: Path, run: Path, iters: int, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "imcap", "train", "--data", str(data), "--checkpoint-path", str(run), "--cnn-width", "4",
           "--input-encoding-size", "16", "--rnn-size", "16", "--batch-size", "4", "--seq-per-img", "2", "--max-iters", str(iters),
           "--save-checkpoint-every", "2", "--val-images-use", "2", "--learning-rate", "1e-3", "--seed", "9", "--no-progress"]
    return cmd + (["--resume"] if resume else [])


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(tiny_data, tmp_path / "full", 14), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(_train_cmd(tiny_data, tmp_path / "killed", 14), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "killed" / "last.pt").exists():
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere after the first checkpoint, possibly mid-write of the next
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = load_checkpoint(tmp_path / "killed" / "last.pt")["iteration"]
    assert stopped_at < 14, "the run finished before it could be killed; make it longer"
    subprocess.run(_train_cmd(tiny_data, tmp_path / "killed", 14, resume=True), check=True, env=env, capture_output=True)
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "killed"))


def test_refuses_to_overwrite_a_run(tiny_run, tiny_data):
    with pytest.raises(ImcapError, match="--resume"):
        Trainer(tiny_train_options(tiny_data, tiny_run))


def test_resume_without_checkpoint(tiny_data, tmp_path):
    with pytest.raises(ImcapError, match="nothing to resume"):
        Trainer(tiny_train_options(tiny_data, tmp_path / "none", resume=True))


def test_exploding_loss_stops_and_keeps_last_good_checkpoint(tiny_data, tmp_path):
    run = tmp_path / "boom"
    train(tiny_train_options(tiny_data, run, max_iters=3))
    good = weights(run)
    trainer = Trainer(tiny_train_options(tiny_data, run, max_iters=6, resume=True))
    with torch.no_grad():
        trainer.model.decoder.logit.weight.fill_(float("nan"))
    with pytest.raises(ImcapError, match="loss is nan.*last good checkpoint"):
        trainer.fit()
    assert_same_weights(good, weights(run))


def test_cnn_frozen_until_finetune_after(tiny_data, tmp_path):
    from imcap.models.encoders import build_encoder

    enc = build_encoder("small", 16, None, width=4)
    torch.save(enc.backbone.state_dict(), tmp_path / "cnn.pt")
    opts = tiny_train_options(tiny_data, tmp_path / "ft", cnn_weights=str(tmp_path / "cnn.pt"), finetune_cnn_after=3, max_iters=2)
    trainer = Trainer(opts)
    before = [p.detach().clone() for p in trainer.model.backbone_parameters()]
    trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.backbone_parameters()))
    assert not trainer.cnn_trains()
    trainer.iteration = 3
    assert trainer.cnn_trains()


def test_lr_decay_schedule():
    assert decayed_lr(1.0, 10, -1, 5) == 1.0
    assert decayed_lr(1.0, 10, 10, 5) == 1.0
    assert decayed_lr(1.0, 20, 10, 5) == pytest.approx(0.25)


class _FakeClock:
    """Stands in for the engine's `time` module: perf_counter advances one second per call."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now

    @staticmethod
    def time() -> float:
        return time.time()


def test_max_train_seconds_stops_on_training_time_and_resumes(tiny_data, tmp_path, monkeypatch):
    import imcap.engine

    monkeypatch.setattr(imcap.engine, "time", _FakeClock())
    run = tmp_path / "run"
    # one "second" per step; validating (every 3 steps) restarts the clock, so it is not counted
    train(tiny_train_options(tiny_data, run, max_iters=-1, max_train_seconds=3.5, losses_log_every=1))
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["iteration"] == 4 and ckpt["train_seconds"] == 4.0
    history = json.loads((run / "history.json").read_text())
    assert [v["iteration"] for v in history["val"]] == [3, 4]
    assert history["train_loss"][-1]["train_time"] == 4.0
    train(tiny_train_options(tiny_data, run, max_iters=-1, max_train_seconds=6.5, resume=True))
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["iteration"] == 7 and ckpt["train_seconds"] == 7.0


@pytest.mark.parametrize("value", [0.0, -2.0, float("nan"), float("inf")])
def test_max_train_seconds_rejects_bad_values(tiny_data, tmp_path, value):
    with pytest.raises(ImcapError, match="--max-train-seconds"):
        train(tiny_train_options(tiny_data, tmp_path / "run", max_train_seconds=value))
    assert not (tmp_path / "run").exists()


def test_a_run_needs_some_limit(tiny_data, tmp_path):
    with pytest.raises(ImcapError, match="--max-train-seconds"):
        train(tiny_train_options(tiny_data, tmp_path / "run", max_iters=-1))
