"""Prototypical networks (Snell et al. 2017): classify by distance to the mean support embedding per class."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.methods.base import MetricMethod, class_means
from fewshot.methods.losses import pairwise_squared_distances
from fewshot.utils import full_precision


class ProtoNet(MetricMethod):
    """Logits are minus the squared Euclidean distance to each prototype, or a scaled cosine similarity.

    Args:
        backbone: feature extractor.
        distance: ``"euclidean"`` (squared, the paper's choice) or ``"cosine"``.
        cosine_scale: initial value of the learnable temperature used with the cosine distance.
        euclidean_scale: if given, the squared distances are multiplied by a learnable scale starting there
            (metric scaling, Oreshkin et al. 2018); ``None`` keeps the paper's unscaled distances.
    """

    def __init__(self, backbone: nn.Module, distance: str = "euclidean", cosine_scale: float = 10.0,
                 euclidean_scale: float | None = None) -> None:
        super().__init__(backbone)
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine' (got {distance!r})")
        if euclidean_scale is not None and (distance != "euclidean" or not euclidean_scale > 0):
            raise ValueError(f"euclidean_scale must be positive and needs distance='euclidean' (got "
                             f"{euclidean_scale!r} with {distance!r})")
        self.distance = distance
        initial = cosine_scale if distance == "cosine" else euclidean_scale
        self.scale = None if initial is None else nn.Parameter(torch.tensor(float(initial)))

    batched_classify = True

    def classify(
        self, support_features: torch.Tensor, support_labels: torch.Tensor, query_features: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[..., M, N]``; leading dimensions are episodes."""
        # Distances in fp32 even under bf16 autocast: they are small differences of large terms.
        with torch.autocast(support_features.device.type, enabled=False):
            support_features, query_features = full_precision(support_features), full_precision(query_features)
            prototypes = class_means(support_features, support_labels)
            if self.distance == "cosine":
                normalized = F.normalize(prototypes, dim=-1).transpose(-1, -2)
                return self.scale * F.normalize(query_features, dim=-1) @ normalized
            distances = pairwise_squared_distances(query_features, prototypes)
            return -distances if self.scale is None else -self.scale * distances
