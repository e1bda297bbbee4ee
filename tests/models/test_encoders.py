"""`--cnn torchvision:NAME`: any torchvision classifier as the encoder, with random weights, offline."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from imcap.errors import ImcapError
from imcap.models.encoders import build_encoder, pretrained_weights_path
from imcap.models.torchvision_backbone import TorchvisionBackbone, split_classifier


@pytest.mark.parametrize("name, head", [("resnet18", "fc"), ("mobilenet_v3_small", "classifier")])
def test_pooled_features_are_what_the_classifier_reads(name, head):
    torch.manual_seed(0)
    net = torchvision.models.get_model(name, weights=None).eval()
    backbone = TorchvisionBackbone(name, 64, net.state_dict(), "memory").eval()  # loads the same weights
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        grid = backbone.grid(images)  # (2, C, h, w)
        pooled = backbone.pool(grid)  # (2, D)
        last = getattr(net, head) if head == "fc" else net.classifier[-1]
        torch.testing.assert_close(last(pooled), net(images), rtol=1e-4, atol=1e-4)
    assert grid.shape[:2] == (2, backbone.grid_dim) and grid.shape[2:] == (2, 2)  # stride 32 at 64 px
    assert pooled.shape == (2, backbone.feature_dim)
    assert (backbone.grid_dim, backbone.feature_dim) == {"resnet18": (512, 512), "mobilenet_v3_small": (576, 1024)}[name]
    assert not any(p is last.weight for p in backbone.parameters())  # the class scores are dropped


def test_vit_grid_is_the_patch_tokens():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32).eval()
    trunk, neck = split_classifier(vit)
    images = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        grid = trunk(images)  # (3, 16, 4, 4)
        tokens = create_feature_extractor(vit, {"encoder.ln": "tokens"})(images)["tokens"]  # (3, 1 + 16, 16)
        pooled = neck(grid)  # (3, 16)
    assert grid.shape == (3, 16, 4, 4)
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), tokens[:, 1:])  # row-major patches, class token dropped
    torch.testing.assert_close(pooled, tokens[:, 1:].mean(dim=1))


def test_random_torchvision_encoder_in_an_image_encoder():
    encoder = build_encoder("torchvision:resnet18", encoding_size=24, weights=None, input_size=64)
    assert (encoder.name, encoder.input_size, encoder.pretrained, encoder.grid_dim, encoder.feature_dim) == ("torchvision:resnet18", 64, False, 512, 512)
    images = torch.rand(2, 3, 64, 64)
    assert encoder(images).shape == (2, 24)
    assert encoder.grid(images).shape == (2, 512, 2, 2)
    assert build_encoder("torchvision:mobilenet_v3_small", 8, weights="none").input_size == 224  # the weights' own size


def test_imagenet_weights_come_from_the_torch_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = pretrained_weights_path("torchvision:resnet18")
    assert (path.parent, path.name) == (tmp_path / "checkpoints", "resnet18-f37072fd.pth")  # torchvision's own file name
    with pytest.raises(ImcapError) as missing:
        build_encoder("torchvision:resnet18", 8, weights="imagenet", input_size=64)
    message = str(missing.value)
    assert "resnet18-f37072fd.pth" in message and str(tmp_path / "checkpoints") in message and "\n" not in message
    torch.manual_seed(1)
    net = torchvision.models.resnet18(weights=None)
    path.parent.mkdir()
    torch.save(net.state_dict(), path)
    encoder = build_encoder("torchvision:resnet18", 8, weights="imagenet", input_size=64)
    assert encoder.pretrained
    torch.testing.assert_close(encoder.backbone.trunk.layer4[1].conv2.weight, net.layer4[1].conv2.weight)


def test_weights_file_and_its_errors(tmp_path):
    net = torchvision.models.mobilenet_v3_small(weights=None)
    path = tmp_path / "mobile.pth"
    torch.save(net.state_dict(), path)
    encoder = build_encoder("torchvision:mobilenet_v3_small", 8, weights=str(path), input_size=64)
    torch.testing.assert_close(encoder.backbone.neck[2].weight, net.classifier[0].weight)  # pool, flatten, Linear 576 -> 1024
    with pytest.raises(ImcapError, match="weights do not fit torchvision:resnet18"):
        build_encoder("torchvision:resnet18", 8, weights=str(path), input_size=64)
    with pytest.raises(ImcapError, match="not found"):
        build_encoder("torchvision:resnet18", 8, weights=str(tmp_path / "nothing.pth"), input_size=64)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ImcapError) as bad:
        build_encoder("torchvision:resnet19", 8, weights=None)
    message = str(bad.value)
    assert "did you mean resnet18" in message and "convnext_tiny" in message and "vit_b_16" in message and "\n" not in message
    with pytest.raises(ImcapError, match="torchvision:NAME"):
        build_encoder("resnet19", 8, weights=None)
    with pytest.raises(ImcapError, match="cannot encode 20 px images"):
        build_encoder("torchvision:vit_b_32", 8, weights=None, input_size=20)  # not a multiple of the patch size


@pytest.mark.slow
def test_train_caption_and_features_with_a_torchvision_cnn(tiny_data, tmp_path):
    from imcap_testing import tiny_train_options

    from imcap.captioner import Captioner
    from imcap.config import FeatureOptions
    from imcap.features import extract_features
    from imcap.train import train

    run = train(tiny_train_options(tiny_data, tmp_path / "run", model="show_attend_tell", cnn="torchvision:resnet18", cnn_weights="none", image_size=64, max_iters=2, save_checkpoint_every=2))
    captioner = Captioner.load(run)
    assert captioner.model.args.cnn == "torchvision:resnet18" and captioner.image_size == 64
    first = captioner.caption_tensors(torch.rand(1, 3, 64, 64))[0][0]  # image 0, caption 0: (text, ...)
    assert isinstance(first[0], str)
    out = extract_features(FeatureOptions(data=str(tiny_data), out=str(tmp_path / "feats"), cnn="torchvision:mobilenet_v3_small", cnn_weights="none", image_size=64, store="both", progress=False))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["cnn"] == "torchvision:mobilenet_v3_small" and meta["shapes"] == {"pooled": [1024], "spatial": [4, 576]}


@pytest.mark.slow
def test_vit_b_16_at_a_small_image_size():
    encoder = build_encoder("torchvision:vit_b_16", 8, weights=None, input_size=32)
    with torch.no_grad():
        grid = encoder.grid(torch.rand(1, 3, 32, 32))
    assert grid.shape == (1, 768, 2, 2) and encoder.feature_dim == 768
