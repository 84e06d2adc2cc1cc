"""Feature extractors, chosen by name: an image batch ``[B, C, H, W]`` in, features ``[B, D]`` out."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fewshot.backbones.conv4 import Conv4
from fewshot.backbones.ensemble import Ensemble
from fewshot.backbones.resnet12 import ResNet12
from fewshot.utils import eval_mode

BACKBONES: dict[str, Callable[..., nn.Module]] = {"conv4": Conv4, "resnet12": ResNet12}


def make_backbone(name: str, in_channels: int = 1, **options) -> nn.Module:
    """Build backbone ``name`` for images with ``in_channels`` channels."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}")
    try:
        return BACKBONES[name](in_channels=in_channels, **options)
    except TypeError as err:  # an unknown or misspelt option
        raise ValueError(f"bad options for backbone '{name}': {err}") from None


@torch.no_grad()
def feature_dim(backbone: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """Length D of the feature vector ``backbone`` gives for images of ``(C, H, W)``."""
    with eval_mode(backbone):
        return int(backbone(torch.zeros(1, *image_shape)).flatten(1).shape[1])


@torch.no_grad()
def measure_feature_dim(backbone: nn.Module, image_size: int) -> int:
    """``D`` of ``backbone`` for square ``image_size`` images, channels read from its first ``Conv2d`` (or the
    input width of its first ``Linear``)."""
    first = next((m for m in backbone.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if first is None:
        raise ValueError("cannot tell this backbone's input shape; pass feature_dim")
    shape = (first.in_channels, image_size, image_size) if isinstance(first, nn.Conv2d) else (first.in_features,)
    parameter = next(backbone.parameters(), None)
    # two images: batch statistics need more than one value per channel
    dummy = torch.zeros(2, *shape, device=parameter.device if parameter is not None else None)
    with eval_mode(backbone):  # no update of running statistics by the dummy batch
        return int(backbone(dummy).flatten(1).shape[1])


__all__ = ["BACKBONES", "Conv4", "Ensemble", "ResNet12", "feature_dim", "make_backbone", "measure_feature_dim"]
