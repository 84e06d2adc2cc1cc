"""Conv-4: four conv-BN-ReLU-pool blocks (Vinyals et al. 2016; Snell et al. 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

POOLING = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def conv_block(in_channels: int, out_channels: int, pool: bool = True, pooling: str = "max") -> nn.Sequential:
    """Conv 3x3, batch norm, ReLU and a 2x2 pool, in ``[conv, norm, pool, relu]`` order for max-pooling.

    Max-pooling and ReLU commute (ReLU never reorders values), so pooling first gives the same output and the same
    gradients while the ReLU and its backward touch a quarter of the values: 1.03x (bf16) to 1.10x (fp32) a 60-way
    ProtoNet training step (``benchmarks/training_step_speed.py``). Average pooling does not commute with ReLU and
    keeps the usual order. The parameters keep their places (``blocks.i.0`` and ``blocks.i.1``), so checkpoints of
    either order load into the other.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
    ]
    if pool and pooling == "max":
        return nn.Sequential(*layers, nn.MaxPool2d(2), nn.ReLU(inplace=True))
    layers.append(nn.ReLU(inplace=True))
    if pool:
        layers.append(POOLING[pooling](2))
    return nn.Sequential(*layers)


class Conv4(nn.Module):
    """``[B, C, H, W]`` -> ``[B, hidden * (H/2^pools) * (W/2^pools)]`` (``[B, 64]`` for 28x28 Omniglot).

    Args:
        in_channels: image channels.
        hidden: channels of every block (64 in the papers), or one number per block, e.g. ``(32, 64, 64, 64)``.
        depth: number of blocks (the length of ``hidden`` when it is a sequence).
        pools: how many blocks, from the first, end in a 2x2 pool (default: all). ``pools=3`` keeps a 3x3
            map for 28x28 images, so the features (``hidden * 9``) keep where strokes are (same cost).
        pooling: ``"max"`` (the papers) or ``"avg"``.
        flatten: return flat vectors; ``False`` keeps the ``[B, hidden, h, w]`` maps (Relation networks).
    """

    def __init__(
        self, in_channels: int = 1, hidden: int | Sequence[int] = 64, depth: int = 4, flatten: bool = True,
        pools: int | None = None, pooling: str = "max",
    ) -> None:
        super().__init__()
        widths = [int(hidden)] * depth if isinstance(hidden, int) else [int(h) for h in hidden]
        depth = len(widths)
        pools = depth if pools is None else pools
        if not 0 <= pools <= depth:
            raise ValueError(f"Conv-4: pools must be between 0 and depth={depth} (got {pools})")
        if pooling not in POOLING:
            raise ValueError(f"Conv-4: unknown pooling {pooling!r}; choose one of {', '.join(POOLING)}")
        channels = [in_channels, *widths]
        self.blocks = nn.Sequential(*[
            conv_block(channels[i], channels[i + 1], pool=i < pools, pooling=pooling) for i in range(depth)
        ])
        self.flatten = flatten
        self.min_size = 2**pools

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if min(images.shape[-2:]) < self.min_size:
            raise ValueError(f"Conv-4 needs images of at least {self.min_size}x{self.min_size} "
                             f"(got {tuple(images.shape[-2:])}); use a larger --image-size")
        features = self.blocks(images)
        return features.flatten(1) if self.flatten else features
