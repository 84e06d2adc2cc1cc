"""Class-disjoint splits; group-aware (whole alphabets) by default, as Omniglot evaluation requires."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fewshot.data.base import DataError, FewShotDataset


def split_by_groups(
    dataset: FewShotDataset, held_out: Sequence[str]
) -> tuple[FewShotDataset, FewShotDataset]:
    """``(rest, held_out)``: the classes of the groups not named, and of the groups named."""
    held = select_groups(dataset, held_out)
    groups = dataset.groups()
    rest = [c for g, cs in groups.items() if g not in held_out for c in cs]
    if not rest:
        raise DataError("holding out every alphabet leaves no classes to train on")
    return dataset.subset(rest), held


def select_groups(dataset: FewShotDataset, names: Sequence[str]) -> FewShotDataset:
    """The classes of the groups (alphabets) named; an unknown name is an error that lists the known ones."""
    groups = dataset.groups()
    unknown = [g for g in names if g not in groups]
    if unknown:
        raise DataError(f"unknown alphabet(s) {', '.join(unknown)}; this data has {', '.join(sorted(groups))}")
    return dataset.subset([c for g in names for c in groups[g]])


def choose_groups(dataset: FewShotDataset, fraction: float, seed: int = 0) -> list[str]:
    """Whole groups, in seeded random order, until they hold at least ``fraction`` of the classes."""
    if not 0 < fraction < 1:
        raise DataError(f"the validation fraction must be between 0 and 1 (got {fraction})")
    groups = dataset.groups()
    if len(groups) < 2:
        raise DataError("a group-aware split needs at least two alphabets")
    order = sorted(groups)
    np.random.default_rng(seed).shuffle(order)
    chosen: list[str] = []
    for g in order[:-1]:
        if sum(len(groups[c]) for c in chosen) >= fraction * dataset.num_classes:
            break
        chosen.append(g)
    return chosen


def split_by_fraction(
    dataset: FewShotDataset, fraction: float, seed: int = 0, by_group: bool = True
) -> tuple[FewShotDataset, FewShotDataset]:
    """``(rest, held_out)`` with about ``fraction`` of the classes held out: whole groups when ``by_group``."""
    if by_group and len(dataset.groups()) > 1 and len(dataset.groups()) < dataset.num_classes:
        return split_by_groups(dataset, choose_groups(dataset, fraction, seed))
    if not 0 < fraction < 1:
        raise DataError(f"the validation fraction must be between 0 and 1 (got {fraction})")
    order = np.random.default_rng(seed).permutation(dataset.num_classes)
    n_held = max(1, round(fraction * dataset.num_classes))
    return dataset.subset(sorted(order[n_held:])), dataset.subset(sorted(order[:n_held]))
