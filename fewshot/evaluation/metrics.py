"""Episode metrics: accuracy, macro precision / recall / F1, and the 95% confidence interval of a mean."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats


def episode_scores(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Accuracy and macro precision, recall and F1 of one episode (``[M]`` predictions and labels)."""
    batch = batched_episode_scores(predictions[None], labels[None], num_classes)
    return {name: float(values[0]) for name, values in batch.items()}


def batched_episode_scores(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> dict[str, torch.Tensor]:
    """Scores of ``E`` episodes at once: ``[E, M]`` predictions and labels -> ``[E]`` per score.

    Macro averages run over the classes present in each episode's labels; a class never predicted has
    precision 0 (as scikit-learn's ``zero_division=0``).
    """
    episodes = predictions.shape[0]
    offsets = torch.arange(episodes, device=labels.device)[:, None] * num_classes**2
    cells = (offsets + labels * num_classes + predictions).reshape(-1)
    confusion = torch.bincount(cells, minlength=episodes * num_classes**2).view(episodes, num_classes, num_classes)
    confusion = confusion.double()
    true_positive = confusion.diagonal(dim1=1, dim2=2)
    predicted, actual = confusion.sum(1), confusion.sum(2)
    precision = torch.where(predicted > 0, true_positive / predicted.clamp_min(1), 0.0)
    recall = torch.where(actual > 0, true_positive / actual.clamp_min(1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0)
    present = (actual > 0).double()
    n_present = present.sum(1)

    def macro(values: torch.Tensor) -> torch.Tensor:
        return (values * present).sum(1) / n_present

    return {
        "accuracy": true_positive.sum(1) / confusion.sum((1, 2)),
        "precision": macro(precision),
        "recall": macro(recall),
        "f1": macro(f1),
    }


def mean_and_t_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its Student-t 95% confidence interval: for a few values, e.g. one per alphabet."""
    array = np.asarray(values, dtype=np.float64)
    if len(array) < 2:
        return float(array.mean()) if len(array) else math.nan, math.nan
    return float(array.mean()), float(stats.t.ppf(0.975, len(array) - 1) * array.std(ddof=1) / math.sqrt(len(array)))


def mean_and_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and half-width of its normal-approximation 95% confidence interval (1.96 standard errors)."""
    array = np.asarray(values, dtype=np.float64)
    if len(array) < 2:
        return float(array.mean()) if len(array) else math.nan, math.nan
    return float(array.mean()), float(1.96 * array.std(ddof=1) / math.sqrt(len(array)))
