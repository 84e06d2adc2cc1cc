"""Conv-4: four conv-BN-ReLU-maxpool blocks (Vinyals et al. 2016; Snell et al. 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.backbones.centring import InkCentring


class MaxBlurPool(nn.Module):
    """Anti-aliased 2x downsampling (Zhang 2019): a 2x2 max over every position, then a [1, 2, 1] binomial blur
    sampled with stride 2. ``[B, C, H, W]`` -> ``[B, C, H // 2, W // 2]``, as ``nn.MaxPool2d(2)``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = (taps[:, None] * taps[None, :]) / 16
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(F.max_pool2d(x, 2, stride=1), (1, 1, 1, 1), mode="replicate")
        return F.conv2d(x, self.kernel.to(x.dtype), stride=2, groups=x.shape[1])


POOLS = {"max": lambda channels: nn.MaxPool2d(2), "avg": lambda channels: nn.AvgPool2d(2), "blur": MaxBlurPool}


def conv_block(in_channels: int, out_channels: int, pool: bool = True, pooling: str = "max") -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(POOLS[pooling](out_channels))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """``[B, C, H, W]`` -> ``[B, hidden * (H/2^pools) * (W/2^pools)]`` (``[B, 64]`` for 28x28 Omniglot).

    Args:
        in_channels: image channels.
        hidden: channels of every block (64 in the papers).
        depth: number of blocks.
        pools: how many blocks, from the first, end in a 2x2 max-pool (default: all). ``pools=3`` keeps a 3x3
            map for 28x28 images, so the features (``hidden * 9``) keep where strokes are (same cost).
        flatten: return flat vectors; ``False`` keeps the ``[B, hidden, h, w]`` maps (Relation networks).
        centre: first move each image's ink so that its centre of mass is at the centre (``InkCentring``;
            ink-on-paper images such as Omniglot only).
    """

    def __init__(
        self, in_channels: int = 1, hidden: int = 64, depth: int = 4, flatten: bool = True, pools: int | None = None,
        centre: bool = False, pooling: str = "max",
    ) -> None:
        super().__init__()
        pools = depth if pools is None else pools
        if not 0 <= pools <= depth:
            raise ValueError(f"Conv-4: pools must be between 0 and depth={depth} (got {pools})")
        if pooling not in POOLS:
            raise ValueError(f"Conv-4: unknown pooling {pooling!r}; choose one of {', '.join(POOLS)}")
        self.blocks = nn.Sequential(*[
            conv_block(in_channels if i == 0 else hidden, hidden, pool=i < pools, pooling=pooling) for i in range(depth)
        ])
        self.centring = InkCentring() if centre else None
        self.flatten = flatten
        self.min_size = 2**pools

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if min(images.shape[-2:]) < self.min_size:
            raise ValueError(f"Conv-4 needs images of at least {self.min_size}x{self.min_size} "
                             f"(got {tuple(images.shape[-2:])}); use a larger --image-size")
        if self.centring is not None:
            images = self.centring(images)
        features = self.blocks(images)
        return features.flatten(1) if self.flatten else features
