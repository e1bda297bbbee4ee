import logging

import pytest
import torch

from imcap_testing import tiny_train_options
from imcap.checkpoint import load_checkpoint
from imcap.errors import ImcapError
from imcap.models.caption_model import ModelArgs, build_model
from imcap.speed import Precision, amp_dtype, channels_last_input, compile_model, use_channels_last
from imcap.train import train

CPU = torch.device("cpu")


def test_precision_disabled_is_a_pass_through():
    p = Precision(CPU, enabled=False)
    assert p.dtype == torch.float32 and not p.scaler.is_enabled() and p.state_dict() == {}
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=1.0)
    with p.autocast():
        loss = (w * 3).sum()
    p.backward(loss)
    p.unscale(opt)
    p.step(opt)
    p.update()
    assert torch.equal(w.detach(), torch.tensor([-2.0, -2.0]))


def test_amp_on_cpu_autocasts_to_bf16_without_a_scaler():
    p = Precision(CPU, enabled=True)
    assert p.dtype == torch.bfloat16 and not p.scaler.is_enabled()
    with p.autocast():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    assert amp_dtype(CPU, "fp16") == torch.float16
    with pytest.raises(ImcapError):
        amp_dtype(CPU, "fp8")


def test_amp_training_on_cpu_runs_and_resumes_exactly(tiny_data, tmp_path):
    kw = dict(amp=True, save_checkpoint_every=2)
    train(tiny_train_options(tiny_data, tmp_path / "full", max_iters=3, **kw))
    train(tiny_train_options(tiny_data, tmp_path / "split", max_iters=2, **kw))
    train(tiny_train_options(tiny_data, tmp_path / "split", max_iters=3, resume=True, **kw))
    full, split = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    plain = train(tiny_train_options(tiny_data, tmp_path / "fp32", max_iters=3, save_checkpoint_every=3))
    fp32 = load_checkpoint(plain / "last.pt")["model"]
    for k in full["model"]:
        assert torch.equal(full["model"][k], split["model"][k]), k
    assert any(not torch.equal(full["model"][k], fp32[k]) for k in fp32), "--amp changed nothing"
    assert full["options"]["amp"] and full["scaler"] == {}


def test_channels_last_only_on_cuda():
    model = _small_model()
    assert not use_channels_last(model, CPU)
    assert model.encoder.backbone.body[0].weight.is_contiguous()  # left alone on the CPU
    x = torch.randn(2, 3, 8, 8)
    assert channels_last_input(x, True).is_contiguous(memory_format=torch.channels_last)
    assert channels_last_input(x, False).is_contiguous()
    feats = torch.randn(2, 5)
    assert channels_last_input(feats, True) is feats


def _small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelArgs(cnn_width=4, input_encoding_size=8, rnn_size=8, image_input="every", drop_prob_lm=0.0, vocab_size=30))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(2, 3, 64, 64), torch.randint(1, 30, (2, 1, 5))  # images, one caption each


def _trial(model):
    return lambda: model(*_batch()).sum().backward()


def test_compile_with_a_working_backend_matches_eager():
    model = _small_model()  # stays in training mode (no dropout): one compiled graph, no recompiles
    images, tokens = _batch()
    eager = model(images, tokens)
    assert compile_model(model, _trial(model), backend="eager")
    assert "forward" in vars(model)  # teacher forcing, CNN included
    torch.testing.assert_close(model(images, tokens), eager)
    assert all(p.grad is None for p in model.parameters())  # the trial left no gradients behind


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no compiler here")


def test_compile_failure_falls_back_to_eager_with_one_warning(caplog):
    model = _small_model()
    rng = torch.get_rng_state()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    with caplog.at_level(logging.WARNING, logger="imcap.speed"):
        assert not compile_model(model, _trial(model), backend=_failing_backend)
    assert "forward" not in vars(model)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "training without it" in warnings[0].getMessage() and "\n" not in warnings[0].getMessage()
    assert torch.equal(torch.get_rng_state(), rng)  # the trial's random draws were undone
    assert all(torch.equal(v, buffers[k]) for k, v in model.named_buffers())  # and its BatchNorm updates
    assert all(p.grad is None for p in model.parameters())


def test_trainer_with_failing_compile_trains_exactly_like_eager(tiny_data, tmp_path, monkeypatch, caplog):
    import imcap.speed

    real = imcap.speed.torch.compile
    monkeypatch.setattr(imcap.speed.torch, "compile", lambda fn, backend=None: real(fn, backend=_failing_backend))
    with caplog.at_level(logging.WARNING, logger="imcap.speed"):
        train(tiny_train_options(tiny_data, tmp_path / "c", max_iters=2, save_checkpoint_every=2, compile=True))
    assert any("--compile" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    train(tiny_train_options(tiny_data, tmp_path / "e", max_iters=2, save_checkpoint_every=2))
    a, b = load_checkpoint(tmp_path / "c" / "last.pt")["model"], load_checkpoint(tmp_path / "e" / "last.pt")["model"]
    for k in a:  # the failed trial step left no trace: same RNG, same BatchNorm statistics
        assert torch.equal(a[k], b[k]), k
