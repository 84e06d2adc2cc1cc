"""Proto-MAML (Triantafillou et al. 2020): MAML whose linear head starts from the prototypes of the support set.

For a task with class prototypes ``c_k`` (mean support feature of class ``k``), the head starts at
``W_k = 2 c_k``, ``b_k = -||c_k||²``, so its logits ``2 q·c_k - ||c_k||² = -||q - c_k||² + ||q||²`` are
Prototypical networks' logits up to a per-query constant (the same softmax). The inner loop then fine-tunes the
head (and the backbone with ``adapt_body=True``) on the support set. The head is built per task, so any number of
ways works, and the meta-gradient reaches the backbone also through the prototypes (as in the paper's
fo-Proto-MAML, whose first-order version keeps that path).
"""

from __future__ import annotations

import torch
from torch import nn

from fewshot.methods.base import class_means
from fewshot.methods.maml import MAML
from fewshot.utils import full_precision


class ProtoMAML(MAML):
    """Prototype-initialised head, then MAML's inner loop; takes :class:`MAML`'s options (``ways`` is not used).

    Args:
        backbone: feature extractor.
        adapt_body: adapt the backbone too in the inner loop (``False``: the head only, like ANIL).
        options: as :class:`MAML`.
    """

    prototype_head = True

    def __init__(self, backbone: nn.Module, adapt_body: bool = False, **options) -> None:
        super().__init__(backbone, **options)
        self.adapt_body = bool(adapt_body)

    def initial_head(
        self, support_features: torch.Tensor | None, support_labels: torch.Tensor, ways: int
    ) -> dict[str, torch.Tensor]:
        """``{"weight": 2 c [N, D], "bias": -||c||² [N]}`` from the prototypes ``c`` of the support features."""
        assert support_features is not None
        prototypes = class_means(full_precision(support_features), support_labels, ways)
        return {"weight": 2 * prototypes, "bias": -prototypes.pow(2).sum(-1)}
