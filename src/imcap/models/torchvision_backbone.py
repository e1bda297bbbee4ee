"""Any torchvision classification model as an image encoder backbone (`--cnn torchvision:NAME`).

The model is split into a `trunk` (images -> the last feature map, (B, C, h, w)) and a `neck` (that map ->
the pooled vector the classifier reads, (B, D)); the final classifier layer is dropped. For CNNs the grid
is the last feature map (7x7 for a ResNet at 224 px); for Vision Transformers it is the patch tokens after
the last LayerNorm laid out as an h x w grid (14x14 for vit_b_16 at 224 px), and the pooled vector is their
mean. The split follows torchvision's module layout: the children before the classifier head, in order.
"""
from __future__ import annotations

import difflib
import re
from collections import OrderedDict

import torch
import torchvision
from torch import nn

from imcap.errors import ImcapError

PREFIX = "torchvision:"
EXAMPLES = ("resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16", "swin_t")
_HEAD = ("avgpool", "dropout", "flatten", "classifier", "fc", "head", "heads")  # where the trunk stops
_AUX = ("aux1", "aux2", "AuxLogits")  # GoogLeNet / Inception-v3 side classifiers (training only)
_INCEPTION_INPUT = ("googlenet", "inception_v3")  # their ImageNet weights expect inputs in [-1, 1]
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def model_names() -> list[str]:
    """Return the names of torchvision's classification models (`torchvision:NAME` accepts each)."""
    return torchvision.models.list_models(module=torchvision.models)


def check_name(name: str) -> None:
    """Raise a one-line ImcapError when `name` is not a torchvision classification model."""
    names = model_names()
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise ImcapError(
        f"--cnn {PREFIX}{name}: unknown torchvision classification model; {hint}"
        f"e.g. {', '.join(EXAMPLES)} ({len(names)} in all: torchvision.models.list_models(module=torchvision.models))"
    )


def default_weights(name: str):
    """Return torchvision's default ImageNet weights enum member of `name` (its url names the cached file)."""
    return torchvision.models.get_model_weights(name).DEFAULT


def default_input_size(name: str) -> int:
    """Return the input side `name`'s default weights were evaluated at (224 for most, 299 for inception_v3)."""
    return int(default_weights(name).transforms().crop_size[0])


class InceptionInput(nn.Module):
    """Turn ImageNet-normalised images into the [-1, 1] range of torchvision's GoogLeNet/Inception-v3 weights."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.std + self.mean - 0.5) / 0.5  # (B, 3, S, S)


class ViTPatchGrid(nn.Module):
    """A torchvision VisionTransformer without its head: images -> patch tokens after the last LayerNorm, as a grid."""

    def __init__(self, vit: torchvision.models.VisionTransformer) -> None:
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.encoder = vit.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.conv_proj(x)  # (B, C, h, w)
        b, c, h, w = patches.shape
        tokens = torch.cat([self.class_token.expand(b, -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)  # (B, 1 + h*w, C)
        tokens = self.encoder(tokens)[:, 1:]  # (B, h*w, C): position embedding, blocks, LayerNorm; class token dropped
        return tokens.transpose(1, 2).reshape(b, c, h, w)  # (B, C, h, w)


def split_classifier(net: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Return (trunk, neck) of a torchvision classifier: images -> (B, C, h, w) and grid -> (B, D)."""
    if isinstance(net, torchvision.models.VisionTransformer):
        return ViTPatchGrid(net), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    parts: OrderedDict[str, nn.Module] = OrderedDict()
    if getattr(net, "transform_input", False):
        parts["transform_input"] = InceptionInput()
    for name, child in net.named_children():
        if name in _HEAD:
            break
        if name not in _AUX:
            parts[name] = nn.Sequential(*child) if isinstance(child, nn.ModuleList) else child
    if isinstance(net, torchvision.models.DenseNet):
        parts["relu"] = nn.ReLU()  # DenseNet's forward applies it after `features`
    head = next(getattr(net, n) for n in ("classifier", "fc", "head") if isinstance(getattr(net, n, None), nn.Module))
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    last = max(i for i, m in enumerate(layers) if isinstance(m, (nn.Linear, nn.Conv2d)))  # the class scores
    before = layers[:last]
    while before and isinstance(before[-1], nn.Dropout):
        before.pop()
    if not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)) for m in before):
        pool = net.avgpool if isinstance(getattr(net, "avgpool", None), nn.Module) else nn.AdaptiveAvgPool2d(1)
        before = [pool, *([] if any(isinstance(m, nn.Flatten) for m in before) else [nn.Flatten(1)]), *before]
    return nn.Sequential(parts), nn.Sequential(*before)


def _builder_args(name: str, input_size: int, pretrained: bool) -> dict:
    """Constructor arguments that depend on the input size or on loading ImageNet weights."""
    if name.startswith("vit_"):
        return {"image_size": input_size}
    if name.startswith("maxvit_"):
        return {"input_size": (input_size, input_size)}
    if name in _INCEPTION_INPUT:
        return {"transform_input": pretrained, "init_weights": not pretrained}
    return {}


def _fit_state(name: str, state: dict, input_size: int) -> dict:
    """Adapt a torchvision state dict to the model built here: DenseNet's old key names, ViT's position embedding."""
    if name.startswith("densenet"):
        state = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2.", k): v for k, v in state.items()}
    if name.startswith("vit_") and "encoder.pos_embedding" in state:
        patch = int(name.split("_")[2])
        state = torchvision.models.vision_transformer.interpolate_embeddings(input_size, patch, state)
    return state


def _size_error(name: str, input_size: int, exc: Exception) -> ImcapError:
    """The one-line error for a model that cannot take images of `input_size` pixels."""
    return ImcapError(f"--cnn {PREFIX}{name} cannot encode {input_size} px images (--image-size): {str(exc).strip().splitlines()[0]}")


class TorchvisionBackbone(nn.Module):
    """torchvision model `name` as a backbone: `grid` (B, C, h, w) and `pool` (B, D), like the built-in ones."""

    def __init__(self, name: str, input_size: int, state: dict | None = None, source: str = "") -> None:
        super().__init__()
        check_name(name)
        try:
            net = torchvision.models.get_model(name, weights=None, **_builder_args(name, input_size, state is not None))
        except (RuntimeError, ValueError, AssertionError) as exc:  # e.g. a ViT whose patches do not tile the image
            raise _size_error(name, input_size, exc) from None
        if state is not None:
            try:
                net.load_state_dict(_fit_state(name, state, input_size))
            except (RuntimeError, KeyError, ValueError) as exc:
                raise ImcapError(f"{source}: weights do not fit {PREFIX}{name} ({str(exc).strip().splitlines()[0]})") from None
        self.trunk, self.neck = split_classifier(net)
        self.grid_dim, self.feature_dim = self._probe(name, input_size)

    def _probe(self, name: str, input_size: int) -> tuple[int, int]:
        """Run one blank image through the model; return (C of the grid, D of the pooled vector)."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                grid = self.grid(torch.zeros(1, 3, input_size, input_size))  # (1, C, h, w)
                pooled = self.pool(grid)  # (1, D)
        except (RuntimeError, ValueError, AssertionError) as exc:
            raise _size_error(name, input_size, exc) from None
        finally:
            self.train(was_training)
        if grid.dim() != 4 or pooled.dim() != 2:
            raise ImcapError(f"--cnn {PREFIX}{name}: unexpected feature shapes {tuple(grid.shape)} / {tuple(pooled.shape)}")
        return grid.size(1), pooled.size(1)

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)  # (B, C, h, w)

    def pool(self, grid: torch.Tensor) -> torch.Tensor:
        return self.neck(grid)  # (B, D)
