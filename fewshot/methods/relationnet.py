"""Relation networks (Sung et al. 2018): a learned relation module scores every (class, query) pair of feature maps.

The backbone keeps its feature maps (``[B, C, h, w]``, not flat vectors). The maps of a class's support images are
summed; each (class map, query map) pair is concatenated along the channels and fed to the relation module, two
conv blocks and two fully connected layers, whose sigmoid output is the relation score in ``[0, 1]``. The paper
trains the scores by mean squared error against one-hot targets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.backbones.conv4 import Conv4
from fewshot.data.task import Task
from fewshot.methods.base import MetricMethod, class_means
from fewshot.methods.losses import pairwise_squared_distances
from fewshot.utils import full_precision

LOSSES = ("mse", "ce")


def relation_mse_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over all ``M*N`` pairs of ``(score - target)^2``: scores ``[M, N]`` in [0, 1], labels ``[M]`` -> scalar.

    The target of a pair is 1 when the query belongs to the class, else 0 (Sung et al. sum instead of averaging,
    which only rescales the learning rate).
    """
    targets = F.one_hot(labels, scores.shape[-1]).to(scores.dtype)
    return F.mse_loss(scores, targets)


def _pool(maps: torch.Tensor) -> torch.Tensor:
    """2x2 max-pooling, skipped once a map is smaller than 2x2, so maps of any size go through."""
    return F.max_pool2d(maps, 2) if min(maps.shape[-2:]) >= 2 else maps


class RelationModule(nn.Module):
    """Relation logits of (class map, query map) pairs, before the sigmoid.

    The paper's module: conv3x3(64)-BN-ReLU-maxpool twice on the channel concatenation ``[class_map, query_map]``,
    then FC(``hidden``)-ReLU-FC(1). Convolutions are padded and pooling stops at 1x1, so small maps work; the pooled
    maps are averaged over space before the first FC, which changes nothing for the paper's 7x7 input (7 -> 3 -> 1)
    and keeps the FC size independent of the image size.

    The first convolution is linear, so it is applied to the ``N`` class maps and the ``M`` query maps separately
    (the two halves of its weight) and the results are added for the ``M*N`` pairs: the same numbers as convolving
    each concatenated pair, without building the ``[M*N, 2C, h, w]`` tensor.

    Args:
        in_channels: channels ``C`` of the backbone maps (the module sees ``2C``).
        channels: channels of the two conv blocks (64 in the paper).
        hidden: width of the hidden FC layer (8 in the paper).
    """

    def __init__(self, in_channels: int, channels: int = 64, hidden: int = 8) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(2 * in_channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, class_maps: torch.Tensor, query_maps: torch.Tensor) -> torch.Tensor:
        """Logits ``[M, N]`` from class maps ``[N, C, h, w]`` and query maps ``[M, C, h, w]``."""
        n, m, c = class_maps.shape[0], query_maps.shape[0], self.in_channels
        weight = self.conv1.weight  # [channels, 2C, 3, 3]: class half first, as in cat([class, query])
        from_class = F.conv2d(class_maps, weight[:, :c], padding=1)  # [N, channels, h, w]
        from_query = F.conv2d(query_maps, weight[:, c:], padding=1)  # [M, channels, h, w]
        pairs = (from_query[:, None] + from_class[None]).flatten(0, 1)  # [M*N, channels, h, w], query-major
        x = F.relu(_pool(self.bn1(pairs)))  # pool, then ReLU: the same values (they commute), a quarter of the work
        x = F.relu(_pool(self.bn2(self.conv2(x))))
        x = x.mean(dim=(2, 3))  # [M*N, channels]
        return self.fc2(F.relu(self.fc1(x))).view(m, n)


def _keep_maps(backbone: nn.Module, embedding_pool_layers: int | None) -> None:
    """Make ``backbone`` return feature maps, and let only its first ``embedding_pool_layers`` Conv-4 blocks pool."""
    if hasattr(backbone, "flatten"):
        backbone.flatten = False
    if embedding_pool_layers is None or not isinstance(backbone, Conv4):
        return
    depth = len(backbone.blocks)
    if not 0 <= embedding_pool_layers <= depth:
        raise ValueError(f"embedding_pool_layers must be between 0 and {depth} (got {embedding_pool_layers})")
    for i in range(embedding_pool_layers, depth):
        block = backbone.blocks[i]
        for j, layer in enumerate(block):
            if isinstance(layer, nn.MaxPool2d):
                block[j] = nn.Identity()
    backbone.min_size = 2**embedding_pool_layers  # Conv-4's input size check


def _out_channels(backbone: nn.Module) -> int:
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("RelationNet cannot tell how many channels this backbone's maps have; pass feature_channels")
    return convs[-1].out_channels


class RelationNet(MetricMethod):
    """Relation network: logits are the relation module's pre-sigmoid outputs, ``sigmoid(logits)`` the scores.

    The backbone is changed in place to keep its feature maps: ``backbone.flatten`` is set to ``False`` where it
    exists (Conv-4, ResNet-12). Sung et al. use a Conv-4 whose last two blocks do not pool (64x7x7 maps for 28x28
    Omniglot; four pools would leave 64x1x1 maps, on which the relation convolutions see a single pixel), so for
    a Conv-4 only the first ``embedding_pool_layers`` blocks keep their max-pooling; other backbones keep theirs
    (ResNet-12 gives 5x5 or 6x6 maps on 84x84 images). A backbone that returns flat ``[B, D]`` features is
    treated as giving ``[B, D, 1, 1]`` maps.

    :meth:`classify` returns logits whose sigmoid is the relation score; the argmax is that of the scores, and
    their softmax (used for prediction probabilities) is the normalised odds ``s/(1-s)`` of the scores, much
    sharper than a softmax of scores in [0, 1] would be.

    Args:
        backbone: feature extractor (changed in place, see above).
        embedding_pool_layers: Conv-4 blocks that keep their max-pooling (2 as in the paper; ``None``: all).
        channels: channels of the relation module's conv blocks (64).
        hidden: hidden width of the relation module's FC layers (8).
        loss: ``"mse"`` (the paper's: squared error of the scores against one-hot targets) or ``"ce"``
            (cross-entropy on the pre-sigmoid logits).
        feature_channels: channels of the backbone's maps; by default those of its last ``Conv2d``.
        class_pooling: ``"sum"`` (the paper's) or ``"mean"`` of a class's support maps. Sung et al. train one
            model per shot count; a model trained 1-shot meets K-times larger maps at K shots with ``"sum"``,
            and the same scale with ``"mean"``.
        proto_weight: weight of an auxiliary prototypical loss in training (0: none, the paper's). The embedding
            otherwise learns only through the relation module; this adds cross-entropy on the queries' distances
            to the class means of the support maps (:func:`map_distance_logits`). Prediction uses the relation
            module alone.
    """

    batched_classify = False

    def __init__(
        self,
        backbone: nn.Module,
        embedding_pool_layers: int | None = 2,
        channels: int = 64,
        hidden: int = 8,
        loss: str = "mse",
        feature_channels: int | None = None,
        class_pooling: str = "sum",
        proto_weight: float = 0.0,
    ) -> None:
        super().__init__(backbone)
        if loss not in LOSSES:
            raise ValueError(f"loss must be 'mse' or 'ce' (got {loss!r})")
        if class_pooling not in ("sum", "mean"):
            raise ValueError(f"class_pooling must be 'sum' or 'mean' (got {class_pooling!r})")
        if proto_weight < 0:
            raise ValueError(f"proto_weight must be >= 0 (got {proto_weight})")
        self.class_pooling = class_pooling
        self.proto_weight = float(proto_weight)
        _keep_maps(backbone, embedding_pool_layers)
        self.loss_type = loss
        in_channels = _out_channels(backbone) if feature_channels is None else feature_channels
        self.relation = RelationModule(in_channels, channels, hidden)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> feature maps ``[B, C', h, w]`` (``[B, 64, 7, 7]`` for 28x28 and the default Conv-4)."""
        maps = self.backbone(images)
        return maps[:, :, None, None] if maps.dim() == 2 else maps

    def class_maps(self, support_maps: torch.Tensor, support_labels: torch.Tensor) -> torch.Tensor:
        """Sum (or mean) of the support maps of each class: ``[N*K, C, h, w]``, ``[N*K]`` -> ``[N, C, h, w]`` (fp32)."""
        num_classes = int(support_labels.max()) + 1
        counts = torch.bincount(support_labels, minlength=num_classes)
        with torch.autocast(support_maps.device.type, enabled=False):  # sums in fp32 even under bf16 autocast
            flat = full_precision(support_maps).flatten(1)
            pooled = class_means(flat, support_labels, num_classes)
            if self.class_pooling == "sum":
                pooled = pooled * counts[:, None].to(pooled.dtype)
        return pooled.view(num_classes, *support_maps.shape[1:])

    def classify(
        self, support_maps: torch.Tensor, support_labels: torch.Tensor, query_maps: torch.Tensor
    ) -> torch.Tensor:
        """Relation logits ``[M, N]`` (fp32) from support maps ``[N*K, C, h, w]`` and query maps ``[M, C, h, w]``.

        The relation module runs under the caller's autocast (bf16 convolutions where enabled).
        """
        class_maps = self.class_maps(support_maps, support_labels).to(query_maps.dtype)
        return full_precision(self.relation(class_maps, query_maps))

    def relation_scores(
        self, support_maps: torch.Tensor, support_labels: torch.Tensor, query_maps: torch.Tensor
    ) -> torch.Tensor:
        """Relation scores ``[M, N]`` in [0, 1]: the sigmoid of :meth:`classify`."""
        return torch.sigmoid(self.classify(support_maps, support_labels, query_maps))

    def loss(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, query logits)``: MSE of the relation scores (default) or cross-entropy of the logits, plus
        ``proto_weight`` times the auxiliary prototypical loss."""
        n_support = task.support_images.shape[0]
        maps = self.features(torch.cat([task.support_images, task.query_images]))
        support_maps, query_maps = maps[:n_support], maps[n_support:]
        logits = self.classify_task(support_maps, task.support_labels, query_maps)
        if self.loss_type == "ce":
            loss = F.cross_entropy(logits, task.query_labels)
        else:
            loss = relation_mse_loss(torch.sigmoid(logits), task.query_labels)
        if self.proto_weight:
            proto_logits = map_distance_logits(support_maps, task.support_labels, query_maps)
            loss = loss + self.proto_weight * F.cross_entropy(proto_logits, task.query_labels)
        return loss, logits


def map_distance_logits(
    support_maps: torch.Tensor, support_labels: torch.Tensor, query_maps: torch.Tensor
) -> torch.Tensor:
    """Minus the squared distance of each query map to each class's mean support map, averaged over positions.

    Maps ``[N*K, C, h, w]`` and ``[M, C, h, w]`` -> logits ``[M, N]`` (fp32). Dividing by ``h*w`` keeps the logits
    on the scale of a ProtoNet's ``C``-dimensional features whatever the map size.
    """
    with torch.autocast(support_maps.device.type, enabled=False):
        support, query = full_precision(support_maps).flatten(1), full_precision(query_maps).flatten(1)
        positions = support_maps.shape[-2] * support_maps.shape[-1]
        return -pairwise_squared_distances(query, class_means(support, support_labels)) / positions
