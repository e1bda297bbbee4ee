import pytest
import torch

from imcap.errors import ImcapError
from imcap.models import ModelArgs, ShowTell, build_encoder, build_model


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_show_tell_parameter_parity_with_neuraltalk2():
    m = ShowTell(vocab_size=9567, input_encoding_size=512, rnn_size=512)
    assert count(m.embed) == 4_898_816
    assert count(m.rnn) == 2_101_248
    assert count(m.logit) == 4_908_384
    assert count(m) == 11_908_448


def test_show_tell_dropout_and_shapes():
    m = ShowTell(20, 8, 12, dropout=0.5)
    assert m.dropout.p == 0.5
    feats, tokens = torch.randn(3, 8), torch.randint(1, 21, (3, 7))
    assert m(feats, tokens).shape == (3, 7, 21)


@pytest.mark.parametrize("rnn_type", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("image_input", ["first", "every"])
def test_forward_matches_step_by_step(rnn_type, image_input):
    """The fused teacher-forcing pass equals feeding the same tokens one step at a time."""
    torch.manual_seed(0)
    m = ShowTell(15, 6, 10, num_layers=2, rnn_type=rnn_type, image_input=image_input).eval()
    feats, tokens = torch.randn(4, 6), torch.randint(1, 16, (4, 5))
    fused = m(feats, tokens)  # log-probabilities
    state = m.init_state(feats)
    for t in range(tokens.size(1)):
        lp, state, _ = m.step(tokens[:, t], state)
        torch.testing.assert_close(lp, fused[:, t], rtol=1e-5, atol=1e-5)


def test_caption_model_runs_cnn_once_per_image():
    model = build_model(ModelArgs(vocab_size=30, cnn_width=4, input_encoding_size=8, rnn_size=8))
    calls = []
    orig = model.encoder.grid
    model.encoder.grid = lambda x: (calls.append(x.size(0)), orig(x))[1]
    logits = model(torch.rand(3, 3, 64, 64), torch.randint(1, 31, (3, 5, 6)))
    assert logits.shape == (15, 6, 31)
    assert calls == [3]


def test_frozen_backbone_gets_no_gradient():
    model = build_model(ModelArgs(vocab_size=10, cnn_width=4, input_encoding_size=8, rnn_size=8))
    model(torch.rand(2, 3, 64, 64), torch.randint(1, 11, (2, 1, 4)), train_backbone=False).sum().backward()
    assert all(p.grad is None for p in model.backbone_parameters())
    assert all(p.grad is not None for p in model.encoder.head.parameters())


@pytest.mark.parametrize("name,size,dim", [("vgg16", 224, 4096), ("resnet50", 224, 2048)])
def test_big_encoders_random_init_shapes(name, size, dim):
    enc = build_encoder(name, encoding_size=32, weights=None)
    assert enc.input_size == size and enc.backbone.feature_dim == dim
    assert enc(torch.rand(1, 3, size, size)).shape == (1, 32)


def test_missing_pretrained_weights_error_says_where(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ImcapError, match="vgg16-397923af.pth"):
        build_encoder("vgg16", weights="imagenet")


def test_cnn_weights_from_file(tmp_path):
    enc = build_encoder("small", 8, None, width=4)
    torch.save(enc.backbone.state_dict(), tmp_path / "w.pt")
    enc2 = build_encoder("small", 8, str(tmp_path / "w.pt"), width=4)
    assert enc2.pretrained
    for a, b in zip(enc.backbone.parameters(), enc2.backbone.parameters()):
        assert torch.equal(a, b)
    (tmp_path / "bad.pt").write_bytes(b"not torch")
    with pytest.raises(ImcapError, match="bad.pt"):
        build_encoder("small", 8, str(tmp_path / "bad.pt"), width=4)


def test_unknown_cnn():
    with pytest.raises(ImcapError, match="unknown CNN"):
        build_encoder("alexnet")


@pytest.mark.network
@pytest.mark.parametrize("name", ["vgg16", "resnet50", "resnet101"])
def test_real_pretrained_weights_when_cached(name):
    from imcap.models.encoders import pretrained_weights_path

    path = pretrained_weights_path(name)
    if not path.exists():
        pytest.skip(f"{path} is not in the local torch cache (downloading is not possible offline)")
    enc = build_encoder(name, 16, "imagenet")
    assert enc.pretrained
