"""Several independently trained backbones used as one: their features side by side."""

from __future__ import annotations

import torch
from torch import nn


class Ensemble(nn.Module):
    """``[B, C, H, W]`` -> ``[B, M * D]``: the features of ``M`` members concatenated, each divided by ``sqrt(M)``.

    The scaling makes a squared Euclidean distance between two ensemble features the mean of the members' squared
    distances, so a ProtoNet over the ensemble gives the mean of the members' logits, on the scale one member's
    logits have (its transductive temperature still fits). With unit-length member features, a dot product is
    likewise the mean of the members' cosines.

    Args:
        members: backbones of the same architecture (each ``[B, C, H, W] -> [B, D]``), trained apart.
    """

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members (got {len(members)})")
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scale = len(self.members) ** -0.5
        return torch.cat([member(images) * scale for member in self.members], dim=1)
