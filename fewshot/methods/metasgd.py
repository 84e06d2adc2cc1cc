"""Meta-SGD (Li et al. 2017): MAML whose inner step sizes are learned, one per weight, with the initialisation.

Every adapted weight ``θ`` has a learning-rate tensor ``α`` of its own shape, and the inner step is
``θ' = θ - α ⊙ ∇L_support(θ)``; ``α`` starts at ``inner_lr`` everywhere and the outer optimiser updates it with the
weights (it is a parameter of the model, saved in the checkpoint). The learned rates are used at test time as well
(``test_inner_lr`` is not used; ``test_inner_steps`` is). The rates of the head's rows follow the rows a task uses.
"""

from __future__ import annotations

import torch
from torch import nn

from fewshot.methods.inner_loop import LearningRate
from fewshot.methods.maml import MAML


def _key(name: str) -> str:
    """A parameter name as a ``ParameterDict`` key, which may hold no dots: ``head.weight`` -> ``head-weight``."""
    return name.replace(".", "-")


class MetaSGD(MAML):
    """MAML with a learned step size per weight entry; takes :class:`MAML`'s options.

    Args:
        backbone: feature extractor; options: as :class:`MAML` (``inner_lr`` is the initial value of the rates).
    """

    def __init__(self, backbone: nn.Module, **options) -> None:
        super().__init__(backbone, **options)
        adapted = [(f"backbone.{k}", v) for k, v in self.backbone.named_parameters()] if self.adapt_body else []
        adapted += [(f"head.{k}", v) for k, v in self.head.named_parameters()]
        self.inner_lrs = nn.ParameterDict(
            {_key(name): nn.Parameter(torch.full_like(value, self.inner_lr)) for name, value in adapted}
        )

    def inner_rates(self, lr: float, weights: dict[str, torch.Tensor], ways: int) -> LearningRate:
        """The learned rates, the head's cut to the task's ``ways`` rows like its weights."""
        return {name: self.inner_lrs[_key(name)][:ways] if name.startswith("head.") else self.inner_lrs[_key(name)]
                for name in weights}
