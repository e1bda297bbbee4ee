"""Image encoders (neuraltalk2's CNN): a backbone plus a Linear+ReLU head to the encoding size.

Every encoder takes images as float tensors in [0, 1] of shape (B, 3, S, S) with S = `input_size`
and normalises them itself. `grid()` gives the spatial feature map that attention decoders use.
Backbones: the small CNN, VGG-16, ResNet-50/101, or any torchvision classifier (`torchvision:NAME`,
see `imcap.models.torchvision_backbone`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torchvision
from torch import nn

from imcap.errors import ImcapError
from imcap.models import torchvision_backbone as tvb

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODERS = ("small", "vgg16", "resnet50", "resnet101", "none")


class SmallBackbone(nn.Module):
    """Four strided conv blocks that train from scratch on a CPU; the grid is S/8 x S/8 (8x8 at 64 px).

    Pooling keeps a coarse 4x4 layout, so "left of" and "above" stay visible to the decoder.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        kernels, strides = [5, 3, 3, 3], [2, 2, 2, 1]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], kernels[i], stride=strides[i], padding=kernels[i] // 2, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*layers)
        self.grid_dim = chans[-1]
        self.feature_dim = chans[-1] * 16

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, 4*width, S/8, S/8)

    def pool(self, grid: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(grid, 4).flatten(1)  # (B, 4*width*16)


class VGG16Backbone(nn.Module):
    """VGG-16 up to fc7 (4096), as neuraltalk2; the grid is conv5_3 (14x14 at 224 px)."""

    def __init__(self) -> None:
        super().__init__()
        vgg = torchvision.models.vgg16(weights=None)
        self.features = vgg.features[:-1]  # conv1_1 .. relu5_3, without the last max-pool
        self.last_pool = vgg.features[-1]
        self.avgpool = vgg.avgpool
        self.fc = vgg.classifier[:5]  # fc6, relu, dropout, fc7, relu
        self.grid_dim = 512
        self.feature_dim = 4096

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 512, 14, 14)

    def pool(self, grid: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(self.last_pool(grid)).flatten(1))  # (B, 4096)

    def load_torchvision(self, state: dict) -> None:
        vgg = torchvision.models.vgg16(weights=None)
        vgg.load_state_dict(state)
        self.features.load_state_dict(vgg.features[:-1].state_dict())
        self.fc.load_state_dict(vgg.classifier[:5].state_dict())


class ResNetBackbone(nn.Module):
    """ResNet-50/101 up to the pooled 2048 vector; the grid is layer4 (7x7 at 224 px)."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
        self.grid_dim = 2048
        self.feature_dim = 2048
        self.depth = depth

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, 2048, 7, 7)

    def pool(self, grid: torch.Tensor) -> torch.Tensor:
        return grid.mean(dim=(2, 3))  # (B, 2048)

    def load_torchvision(self, state: dict) -> None:
        net = getattr(torchvision.models, f"resnet{self.depth}")(weights=None)
        net.load_state_dict(state)
        self.body.load_state_dict(nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4).state_dict())


class ImageEncoder(nn.Module):
    """Backbone + Linear(feature_dim -> encoding_size) + ReLU; `forward` returns (B, encoding_size).

    With no backbone (cnn "none") the model reads precomputed region features only.
    """

    def __init__(self, backbone: nn.Module | None, encoding_size: int, input_size: int, name: str, pretrained: bool, feature_dim: int = 0) -> None:
        super().__init__()
        self.backbone = backbone
        self.feature_dim = backbone.feature_dim if backbone is not None else feature_dim
        self.grid_dim = backbone.grid_dim if backbone is not None else feature_dim
        self.head = nn.Sequential(nn.Linear(self.feature_dim, encoding_size), nn.ReLU(inplace=True))
        self.name = name
        self.input_size = input_size
        self.encoding_size = encoding_size
        self.pretrained = pretrained
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def grid(self, images: torch.Tensor) -> torch.Tensor:
        """Return the backbone's spatial feature map (B, C, h, w) for images in [0, 1]."""
        if self.backbone is None:
            raise ImcapError("this model was trained on precomputed region features and has no CNN; give it features (--features-dir)")
        return self.backbone.grid((images - self.mean) / self.std)

    def pool(self, grid: torch.Tensor) -> torch.Tensor:
        """Backbone pooling of a grid (B, C, h, w) -> (B, feature_dim) (fc7 for VGG)."""
        return self.backbone.pool(grid)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Return image embeddings (B, encoding_size) for images (B, 3, S, S) in [0, 1]."""
        return self.head(self.backbone.pool(self.grid(images)))


def _torchvision_url(name: str) -> str:
    if name.startswith(tvb.PREFIX):
        return tvb.default_weights(name[len(tvb.PREFIX):]).url
    weights = {
        "vgg16": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
        "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
        "resnet101": torchvision.models.ResNet101_Weights.IMAGENET1K_V1,
    }[name]
    return weights.url


def pretrained_weights_path(name: str) -> Path:
    """Where torchvision keeps the ImageNet weights of `name` in the local torch hub cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _torchvision_url(name).rsplit("/", 1)[-1]


def _load_state(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ImcapError(f"{path}: CNN weights file not found") from None
    except Exception as exc:  # torch raises many types for foreign/corrupt files
        raise ImcapError(f"{path}: not a readable torch weights file ({exc.__class__.__name__})") from None
    if not isinstance(state, dict):
        raise ImcapError(f"{path}: expected a state dict of CNN weights")
    return state


def _weights_file(name: str, weights: str | None) -> Path | None:
    """The file to load CNN weights from (None: random init); a one-line error when the ImageNet file is not cached."""
    if weights in (None, "", "none") or (weights == "imagenet" and name == "small"):
        return None
    if weights != "imagenet":
        return Path(weights)
    path = pretrained_weights_path(name)
    if not path.exists():
        raise ImcapError(
            f"pretrained {name} weights not found: put {path.name} in {path.parent} "
            f"(from {_torchvision_url(name)}), pass --cnn-weights PATH, or --cnn-weights none for random init"
        )
    return path


def build_encoder(name: str = "small", encoding_size: int = 512, weights: str | None = "imagenet", width: int = 32, input_size: int | None = None, feature_dim: int = 0) -> ImageEncoder:
    """Return an encoder: `name` in ENCODERS or "torchvision:NAME"; `weights` is "imagenet" (local torch cache), None (random) or a file path.

    The small CNN has no ImageNet weights and always starts from random init (or from a file path).
    "none" has no CNN: only a head over precomputed features of size `feature_dim`.
    "torchvision:NAME" is any torchvision classification model, its file the state dict torchvision saves.
    """
    if name.startswith(tvb.PREFIX):
        model = name[len(tvb.PREFIX):]
        tvb.check_name(model)  # before the weights path: an unknown name has no file name either
        size = input_size or tvb.default_input_size(model)
        path = _weights_file(name, weights)
        state = _load_state(path) if path is not None else None
        backbone = tvb.TorchvisionBackbone(model, size, state, str(path))
        if path is not None:
            log.info("loaded %s weights from %s", name, path)
        return ImageEncoder(backbone, encoding_size, size, name, path is not None)
    if name not in ENCODERS:
        raise ImcapError(f"unknown CNN {name!r}; choose one of {', '.join(ENCODERS)} or {tvb.PREFIX}NAME (e.g. {tvb.PREFIX}resnet18)")
    if name == "none":
        if feature_dim <= 0:
            raise ImcapError("cnn 'none' needs precomputed features (--features-dir)")
        return ImageEncoder(None, encoding_size, input_size or 0, name, True, feature_dim)
    if name == "small":
        backbone: nn.Module = SmallBackbone(width)
        size = input_size or 64
    elif name == "vgg16":
        backbone, size = VGG16Backbone(), input_size or 224
    else:
        backbone, size = ResNetBackbone(int(name[len("resnet"):])), input_size or 224
    path = _weights_file(name, weights)
    if path is not None:
        state = _load_state(path)
        try:
            if name == "small":
                backbone.load_state_dict(state)
            else:
                backbone.load_torchvision(state)  # type: ignore[operator]
        except (RuntimeError, KeyError) as exc:
            raise ImcapError(f"{path}: weights do not fit {name} ({str(exc).splitlines()[0]})") from None
        log.info("loaded %s weights from %s", name, path)
    return ImageEncoder(backbone, encoding_size, size, name, path is not None)
