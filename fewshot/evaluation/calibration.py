"""Whether predicted probabilities can be trusted: expected calibration error, and temperature scaling.

A method's probabilities are the softmax of its logits divided by a temperature ``T`` (1 unless calibrated).
:func:`fit_temperature` picks the ``T`` that minimises the negative log-likelihood of labelled episodes (Guo et al.
2017); it never changes a prediction, only how sure the model says it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def query_statistics(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query: confidence (top probability), whether the top class is right, negative log-likelihood.

    Args:
        logits: ``[..., N]`` (e.g. ``[E, M, N]`` for ``E`` episodes of ``M`` queries); labels: ``[...]``.

    Returns:
        three flat tensors ``[n]``: confidence, correct (0/1), NLL, all float64.
    """
    log_probabilities = F.log_softmax(logits.double() / temperature, dim=-1)
    confidence, predicted = log_probabilities.max(-1)
    nll = -log_probabilities.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return confidence.exp().flatten(), (predicted == labels).double().flatten(), nll.flatten()


def expected_calibration_error(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> float:
    """Mean gap between accuracy and confidence over ``bins`` equal-width confidence bins, weighted by their size.

    Args:
        confidence: ``[n]`` top probabilities in ``[0, 1]``; correct: ``[n]`` 1 where the top class was right.
    """
    if confidence.numel() == 0:
        raise ValueError("expected_calibration_error needs at least one prediction")
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of exactly 0 goes to the first bin
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    confidence_sum = torch.bincount(index, weights=confidence.double(), minlength=bins)
    correct_sum = torch.bincount(index, weights=correct.double(), minlength=bins)
    return float((confidence_sum - correct_sum).abs().sum() / confidence.numel())


#: The range :func:`fit_temperature` searches.
TEMPERATURE_BOUNDS = (1e-4, 1e4)


def fit_temperature(logits: Sequence[torch.Tensor], labels: Sequence[torch.Tensor]) -> float:
    """The temperature ``T`` in ``[1e-4, 1e4]`` that minimises the mean NLL of ``softmax(logits / T)``.

    Args:
        logits: chunks ``[..., N]`` (chunks may differ in ``N``); labels: the matching ``[...]``.

    A bound comes back when the episodes cannot pin ``T`` down: e.g. every query right (the lower bound: the NLL
    keeps falling as the model is made more sure of itself). :data:`TEMPERATURE_BOUNDS` lets callers detect it.
    """
    if not logits:
        raise ValueError("fit_temperature needs at least one chunk of logits")
    chunks = [(x.detach().double(), y) for x, y in zip(logits, labels, strict=True)]
    total = sum(y.numel() for _, y in chunks)

    def mean_nll(log_t: torch.Tensor) -> torch.Tensor:
        return sum(F.cross_entropy((x / log_t.exp()).flatten(0, -2), y.flatten(), reduction="sum")
                   for x, y in chunks) / total

    # The NLL is smooth and unimodal in log T: a coarse grid, then Newton-like refinement by L-BFGS.
    low, high = (math.log(b) for b in TEMPERATURE_BOUNDS)
    grid = torch.linspace(low, high, 93, dtype=torch.float64)  # log T, steps of 0.2
    with torch.no_grad():
        start = grid[int(torch.stack([mean_nll(t) for t in grid]).argmin())]
    log_t = start.clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=50, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = mean_nll(log_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().clamp(low, high).exp())
