"""Pair and triplet losses on a batch of labelled embeddings (Siamese networks and other metric learners).

Every loss takes the embeddings ``[n, D]`` of one batch (an episode's support and query items) and their labels
``[n]``, forms all pairs or triplets inside the batch, and returns a scalar that stays connected to the graph
(zero, not NaN, when the batch holds no valid pair or triplet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Squared distances are clamped to at least this before the square root, so that the gradient of the
#: distance stays finite where two embeddings coincide (the derivative of sqrt is infinite at 0).
DISTANCE_EPS = 1e-12

MINING_RULES = ("batch_hard", "semi_hard", "all")


def pairwise_squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[..., m, n]`` between ``x`` ``[..., m, D]`` and ``y`` ``[..., n, D]``.

    ``||x||^2 - 2 x.y + ||y||^2``: one matrix product instead of an ``[m, n, D]`` difference; clamped at 0
    against rounding.
    """
    squared = x.pow(2).sum(-1, keepdim=True) - 2 * x @ y.transpose(-1, -2) + y.pow(2).sum(-1).unsqueeze(-2)
    return squared.clamp_min(0)


def pairwise_distances(x: torch.Tensor, y: torch.Tensor, eps: float = DISTANCE_EPS) -> torch.Tensor:
    """Euclidean distances ``[..., m, n]`` with finite gradients at 0 (``sqrt(max(d^2, eps))``)."""
    return pairwise_squared_distances(x, y).clamp_min(eps).sqrt()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[mask]``; 0 (with a graph) when ``mask`` is empty. Entries outside the mask may be inf."""
    return values[mask].sum() / mask.sum().clamp_min(1)


def _pair_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(positive, negative)`` boolean ``[n, n]``: same label and not the same item / different label."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Contrastive loss of Hadsell, Chopra & LeCun (2006) over all unordered pairs of a batch.

    With ``d_ij`` the Euclidean distance and ``P = n (n - 1) / 2`` the number of pairs ``i < j``::

        L = (1 / P) * sum_{i<j} [ same_ij * d_ij^2 + (1 - same_ij) * max(0, margin - d_ij)^2 ]

    (no factor 1/2 on either term, and no re-weighting of the usually fewer positive pairs).

    Args:
        embeddings: ``[n, D]``; labels: ``[n]``; margin: distance beyond which negatives cost nothing.
    """
    squared = pairwise_squared_distances(embeddings, embeddings)
    distances = squared.clamp_min(DISTANCE_EPS).sqrt()
    same = labels[:, None] == labels[None, :]
    per_pair = torch.where(same, squared, F.relu(margin - distances).pow(2))
    upper = torch.ones_like(same).triu(1)
    return _masked_mean(per_pair, upper)


def _positives(positive: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per anchor, the indices of its positives ``[n, P]`` (padded) and which of them are real ``[n, P]``.

    ``P`` is the largest number of positives of an anchor (``K + Q - 1`` in an episode), so triplet tensors are
    ``[n, P, n]`` rather than ``[n, n, n]``.
    """
    count = int(positive.sum(1).max()) if positive.numel() else 0
    order = torch.sort(positive.to(torch.uint8), dim=1, descending=True, stable=True)
    return order.indices[:, :count], order.values[:, :count].bool()


def triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 1.0, mining: str = "batch_hard"
) -> torch.Tensor:
    """Triplet loss (Schroff et al. 2015, FaceNet) ``max(0, d_ap - d_an + margin)`` with Euclidean distances.

    Mining rules, all inside the batch:

    * ``"batch_hard"`` (Hermans et al. 2017): for each anchor its farthest positive and its closest negative;
      the mean over the anchors that have at least one positive and one negative.
    * ``"semi_hard"`` (FaceNet): for each ordered (anchor, positive) pair, the closest negative that is farther
      than the positive but within the margin (``d_ap < d_an < d_ap + margin``); when there is none, the
      anchor's hardest (closest) negative. The mean over all (anchor, positive) pairs, including those whose
      hinge is 0.
    * ``"all"``: the mean of the hinge over every valid triplet (anchor, positive != anchor, negative),
      including those whose hinge is 0.

    Args:
        embeddings: ``[n, D]``; labels: ``[n]``; margin: the required gap ``d_an - d_ap``; mining: see above.
    """
    if mining not in MINING_RULES:
        raise ValueError(f"mining must be one of {', '.join(map(repr, MINING_RULES))} (got {mining!r})")
    distances = pairwise_distances(embeddings, embeddings)
    positive, negative = _pair_masks(labels)
    inf = torch.tensor(float("inf"), device=distances.device, dtype=distances.dtype)
    has_negative = negative.any(1)  # [n]
    if mining == "batch_hard":
        hardest_positive = torch.where(positive, distances, -inf).amax(1)
        hardest_negative = torch.where(negative, distances, inf).amin(1)
        valid = positive.any(1) & has_negative
        return _masked_mean(F.relu(hardest_positive - hardest_negative + margin), valid)

    index, real = _positives(positive)  # [n, P]
    anchor_positive = distances.gather(1, index)[:, :, None]  # [n, P, 1]
    anchor_negative = distances[:, None, :]  # [n, 1, n]
    negative = negative[:, None, :]  # [n, 1, n]
    if mining == "all":
        hinge = F.relu(anchor_positive - anchor_negative + margin)  # [n, P, n]
        return _masked_mean(hinge, real[:, :, None] & negative)
    band = negative & (anchor_negative > anchor_positive) & (anchor_negative < anchor_positive + margin)
    semi_hard = torch.where(band, anchor_negative, inf).amin(2)  # [n, P]
    hardest = torch.where(negative, anchor_negative, inf).amin(2)  # [n, 1]
    chosen = torch.where(band.any(2), semi_hard, hardest)
    hinge = F.relu(anchor_positive[:, :, 0] - chosen + margin)
    return _masked_mean(hinge, real & has_negative[:, None])


def pair_bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of "same class" logits over the unordered pairs ``i < j``, classes balanced.

    ``0.5 * mean BCE over positive pairs + 0.5 * mean BCE over negative pairs`` (an episode has far more
    negative pairs than positive ones); when the batch has only one kind of pair, that kind's mean.

    Args:
        logits: ``[n, n]`` logit that items ``i`` and ``j`` share a class (only ``i < j`` is read).
        labels: ``[n]``.
    """
    same = labels[:, None] == labels[None, :]
    upper = torch.ones_like(same).triu(1)
    per_pair = F.binary_cross_entropy_with_logits(logits, same.to(logits.dtype), reduction="none")
    parts = [_masked_mean(per_pair, upper & kind) for kind in (same, ~same) if bool((upper & kind).any())]
    if not parts:  # fewer than two items: no pair at all
        return logits.sum() * 0
    return torch.stack(parts).mean()
