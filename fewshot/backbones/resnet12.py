"""ResNet-12 (Oreshkin et al. 2018; Lee et al. 2019): four residual blocks of three 3x3 convs each."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """Three conv-BN-LeakyReLU layers, a 1x1 projection shortcut, then 2x2 max-pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [
                nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
            ]
            if i < 2:
                layers.append(nn.LeakyReLU(0.1))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)
        )
        # pooling first: the same output as the usual activation-then-pool (they commute), on a quarter of the values
        self.out = nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), nn.LeakyReLU(0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(nn.Module):
    """``[B, C, H, W]`` -> ``[B, widths[-1]]`` after global average pooling.

    Args:
        in_channels: image channels.
        widths: channels of the four blocks; (64, 160, 320, 640) in the literature, smaller for CPUs.
        flatten: pool and flatten (default); ``False`` keeps the last feature maps.
    """

    def __init__(
        self, in_channels: int = 1, widths: tuple[int, ...] = (64, 160, 320, 640), flatten: bool = True
    ) -> None:
        super().__init__()
        channels = [in_channels, *widths]
        self.blocks = nn.Sequential(*[ResidualBlock(channels[i], channels[i + 1]) for i in range(len(widths))])
        self.flatten = flatten

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.blocks(images)
        return features.mean(dim=(2, 3)) if self.flatten else features
