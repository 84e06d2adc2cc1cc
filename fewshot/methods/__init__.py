"""Few-shot methods by name; each is a :class:`FewShotMethod` (task in, query logits out)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from fewshot.methods.base import FewShotMethod, MetricMethod
from fewshot.methods.protonet import ProtoNet

METHODS: dict[str, Callable[..., FewShotMethod]] = {"protonet": ProtoNet}


def make_method(name: str, backbone: nn.Module, **options) -> FewShotMethod:
    """Build method ``name`` around ``backbone`` with method-specific ``options``."""
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    return METHODS[name](backbone, **options)


__all__ = ["METHODS", "FewShotMethod", "MetricMethod", "ProtoNet", "make_method"]
