"""Siamese networks (Koch, Zemel & Salakhutdinov 2015): twin encoders with shared weights, trained on pairs or
triplets drawn from the episodes, classifying a query by its similarity to each support item."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.task import Task
from fewshot.methods.base import MetricMethod, class_means
from fewshot.methods.losses import (
    MINING_RULES,
    contrastive_loss,
    pair_bce_loss,
    pairwise_distances,
    triplet_loss,
)
from fewshot.utils import full_precision

LOSSES = ("contrastive", "triplet", "bce")
AGGREGATES = ("nearest", "mean")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))} (got {value!r})")


class InferredLinear(nn.Linear):
    """``nn.Linear`` whose input size is read from its first input, or from the checkpoint it loads.

    A backbone's feature size depends on the image size, which a method does not know when it is built. Unlike
    ``nn.LazyLinear``, the parameters are ordinary (empty) tensors until then, so ``.to(memory_format=...)`` and
    a fused optimizer made before the first forward work; they are resized in place, so the optimizer keeps
    the same parameter objects.
    """

    def __init__(self, out_features: int, bias: bool = True) -> None:
        super().__init__(0, out_features, bias)

    def reset_parameters(self) -> None:
        if self.in_features:  # nothing to initialise while the input size is unknown
            super().reset_parameters()

    @torch.no_grad()
    def materialize(self, in_features: int, device: torch.device) -> None:
        """Give the weight its input size ``in_features`` and initialise it (as ``nn.Linear`` does)."""
        self.in_features = in_features
        self.weight.data = torch.empty(self.out_features, in_features, device=device, dtype=self.weight.dtype)
        if self.bias is not None:
            self.bias.data = self.bias.data.to(device)
        self.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_features == 0:
            self.materialize(x.shape[-1], x.device)
        return super().forward(x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        weight = state_dict.get(prefix + "weight")
        if self.in_features == 0 and weight is not None and weight.dim() == 2:
            self.materialize(weight.shape[1], self.weight.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class SimilarityHead(InferredLinear):
    """Koch et al.'s similarity logit ``w . |f(x1) - f(x2)| + b``, input size read on first use.

    The weights start negative (``-|w|`` of the usual ``nn.Linear`` initialisation), so that from the first step
    closer embeddings are more similar (a weighted L1 distance); with random signs the first episodes are spent
    flipping them, and learning is markedly slower.
    """

    def __init__(self) -> None:
        super().__init__(1)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.in_features:
            with torch.no_grad():
                self.weight.abs_().neg_()


def aggregate_per_class(scores: torch.Tensor, support_labels: torch.Tensor, aggregate: str) -> torch.Tensor:
    """Per-class logits ``[..., M, N]`` from scores ``[..., M, N*K]`` against each support item.

    ``"nearest"``: the highest score among the class's support items; ``"mean"``: their mean score.
    ``support_labels`` is ``[..., N*K]`` (leading dimensions are episodes).
    """
    if aggregate == "mean":
        return class_means(scores.transpose(-1, -2), support_labels).transpose(-1, -2)
    num_classes = int(support_labels.max()) + 1
    index = support_labels.unsqueeze(-2).expand_as(scores)
    empty = scores.new_full((*scores.shape[:-1], num_classes), -torch.inf)
    return empty.scatter_reduce(-1, index, scores, reduce="amax", include_self=True)


class SiameseNet(MetricMethod):
    """Twin encoders with shared weights; a query's logit for a class is its similarity to the class's support.

    Training forms every pair (contrastive, BCE) or triplet of the episode's support and query items, all
    embedded in one backbone pass.

    Embeddings are L2-normalised for every loss: points on the unit sphere, so distances lie in [0, 2] and
    ``margin`` means the same whatever the backbone's feature scale (plain Euclidean features can satisfy a
    triplet margin merely by growing). On synthetic glyphs the contrastive and BCE losses learned faster and
    more stably normalised, and the triplet loss equally well.

    Batch-hard triplets can collapse: on Omniglot (30-way tasks, margin 0.5) they sent every image to nearly one
    point within the first few hundred episodes (different characters about 0.007 apart, the loss stuck at the
    margin) for 3000 to 5000 episodes before leaving it. The contrastive loss at the same margin keeps characters
    about 0.7 apart: 2.5 to 3.4 points ahead on validation after two minutes, 13.5 (balanced) after 4400 episodes,
    level after fifteen minutes (docs/results.md, "Session 39"). A triplet loss that stays at ``margin`` is this.

    * ``loss="contrastive"`` / ``"triplet"``: the similarity is minus the Euclidean (not squared) distance, the
      distance the losses use.
    * ``loss="bce"``: Koch et al.'s learned similarity ``p(same) = sigmoid(w . |f(x1) - f(x2)| + b)``, trained
      by class-balanced binary cross-entropy over all pairs; the similarity is the logit
      ``w . |f(x1) - f(x2)| + b``.

    Args:
        backbone: feature extractor ``[B, C, H, W] -> [B, D]``.
        loss: ``"contrastive"``, ``"triplet"`` or ``"bce"``.
        margin: margin of the contrastive and triplet losses, in unit-sphere distance (at most 2). 0.5 suits
            both; the contrastive loss learns markedly slower with 1.0 or more.
        mining: triplet mining, ``"batch_hard"``, ``"semi_hard"`` or ``"all"`` (see :func:`triplet_loss`).
        aggregate: per-class logit from the similarities to the class's shots: ``"nearest"`` (the highest) or
            ``"mean"``.
        embedding_dim: size of a linear projection head on the backbone features (``None``: no head).
    """

    batched_classify = True
    # Balancing the prediction at the refinement's temperature (0.1) cost 6 points on validation (Early_Aramaic,
    # 82.8% against 76.7%), where the other metric methods gained 0.2 to 0.5 (docs/results.md, "Session 35").
    balanced_prediction = False

    def __init__(
        self,
        backbone: nn.Module,
        loss: str = "contrastive",
        margin: float = 0.5,
        mining: str = "batch_hard",
        aggregate: str = "nearest",
        embedding_dim: int | None = None,
    ) -> None:
        super().__init__(backbone)
        _check_choice("loss", loss, LOSSES)
        _check_choice("mining", mining, MINING_RULES)
        _check_choice("aggregate", aggregate, AGGREGATES)
        if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin > 0):
            raise ValueError(f"margin must be a positive number (got {margin!r})")
        if embedding_dim is not None and not (isinstance(embedding_dim, int) and embedding_dim > 0):
            raise ValueError(f"embedding_dim must be a positive integer or None (got {embedding_dim!r})")
        self.loss_name, self.margin, self.mining, self.aggregate = loss, float(margin), mining, aggregate
        self.projection = InferredLinear(embedding_dim) if embedding_dim is not None else None
        self.head = SimilarityHead() if loss == "bce" else None

    unit_features = True

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, D]``, fp32 and of unit length."""
        features = self.backbone(images)
        if self.projection is not None:
            features = self.projection(features)
        return F.normalize(full_precision(features), dim=-1)

    def similarity(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Similarity ``[..., m, n]`` of every ``x`` ``[..., m, D]`` to every ``y`` ``[..., n, D]``.

        Minus the Euclidean distance, or for ``loss="bce"`` the head's logit of "same class",
        ``w . |x - y| + b``, computed as ``L1(w+ x, w+ y) - L1(w- x, w- y) + b`` with ``w = w+ - w-`` so that no
        ``[..., m, n, D]`` difference is built.
        """
        if self.head is None:
            return -pairwise_distances(x, y)
        if self.head.in_features == 0:  # before the head's first input
            self.head.materialize(x.shape[-1], x.device)
        weight, bias = full_precision(self.head.weight[0]), full_precision(self.head.bias[0])
        positive, negative = F.relu(weight), F.relu(-weight)
        return torch.cdist(x * positive, y * positive, p=1) - torch.cdist(x * negative, y * negative, p=1) + bias

    def classify(
        self, support_features: torch.Tensor, support_labels: torch.Tensor, query_features: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[..., M, N]`` from support ``[..., N*K, D]`` and queries ``[..., M, D]``; leading dims are
        episodes."""
        # fp32 even under bf16 autocast: distances are small differences of large terms.
        with torch.autocast(support_features.device.type, enabled=False):
            scores = self.similarity(full_precision(query_features), full_precision(support_features))
            return aggregate_per_class(scores, support_labels, self.aggregate)

    def loss(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pair or triplet loss over all the task's items, query logits)``."""
        n_support = task.support_labels.shape[0]
        features = self.embed(torch.cat([task.support_images, task.query_images]))
        labels = torch.cat([task.support_labels, task.query_labels])
        with torch.autocast(features.device.type, enabled=False):
            features = full_precision(features)
            if self.loss_name == "contrastive":
                value = contrastive_loss(features, labels, self.margin)
            elif self.loss_name == "triplet":
                value = triplet_loss(features, labels, self.margin, self.mining)
            else:
                value = pair_bce_loss(self.similarity(features, features), labels)
        logits = self.classify(features[:n_support], task.support_labels, features[n_support:])
        return value, logits
