"""Feature extractors, chosen by name: an image batch ``[B, C, H, W]`` in, features ``[B, D]`` out."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fewshot.backbones.conv4 import Conv4
from fewshot.backbones.resnet12 import ResNet12

BACKBONES: dict[str, Callable[..., nn.Module]] = {"conv4": Conv4, "resnet12": ResNet12}


def make_backbone(name: str, in_channels: int = 1, **options) -> nn.Module:
    """Build backbone ``name`` for images with ``in_channels`` channels."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name](in_channels=in_channels, **options)


@torch.no_grad()
def feature_dim(backbone: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """Length D of the feature vector ``backbone`` gives for images of ``(C, H, W)``."""
    was_training = backbone.training
    backbone.eval()
    dim = backbone(torch.zeros(1, *image_shape)).flatten(1).shape[1]
    backbone.train(was_training)
    return int(dim)


__all__ = ["BACKBONES", "Conv4", "ResNet12", "feature_dim", "make_backbone"]
