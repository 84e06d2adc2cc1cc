"""Few-shot methods by name; each is a :class:`FewShotMethod` (task in, query logits out).

The registry maps a name to ``"module:Class"`` and imports a method only when it is built.
"""

from __future__ import annotations

import importlib

from torch import nn

from fewshot.methods.base import FewShotMethod, MetricMethod
from fewshot.methods.protonet import ProtoNet

METHODS: dict[str, str] = {
    "protonet": "fewshot.methods.protonet:ProtoNet",
    "siamese": "fewshot.methods.siamese:SiameseNet",
    "relationnet": "fewshot.methods.relationnet:RelationNet",
    "matchingnet": "fewshot.methods.matchingnet:MatchingNet",
    "maml": "fewshot.methods.maml:MAML",
    "metasgd": "fewshot.methods.metasgd:MetaSGD",
    "anil": "fewshot.methods.anil:ANIL",
    "protomaml": "fewshot.methods.protomaml:ProtoMAML",
    "mann": "fewshot.methods.mann:MANN",
    "memorynet": "fewshot.methods.memorynet:MemoryNet",
}


def method_class(name: str) -> type[FewShotMethod]:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}")
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_method(name: str, backbone: nn.Module, **options) -> FewShotMethod:
    """Build method ``name`` around ``backbone`` with method-specific ``options``."""
    try:
        return method_class(name)(backbone, **options)
    except TypeError as err:
        raise ValueError(f"bad options for method '{name}': {err}") from None


__all__ = ["METHODS", "FewShotMethod", "MetricMethod", "ProtoNet", "make_method", "method_class"]
