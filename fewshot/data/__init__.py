"""Data: datasets -> splits -> task sampler -> :class:`Task`."""

from __future__ import annotations

from pathlib import Path

from fewshot.data.base import DataError, FewShotDataset, TensorDataset
from fewshot.data.sampler import TaskSampler, TaskSpec, build_task, iterate_tasks, load_tasks, save_tasks
from fewshot.data.splits import select_groups, split_by_fraction, split_by_groups
from fewshot.data.task import Task

DATASETS = ("omniglot", "glyphs", "folder")
GLYPH_SPLITS = {"background": 0, "evaluation": 1_000_000}


def load_dataset(
    name: str,
    root: str | Path | None = None,
    split: str | None = None,
    image_size: int = 28,
    rotations: bool = False,
    download: bool = False,
    glyph_classes: int = 400,
    seed: int = 0,
    flips: bool = False,
) -> FewShotDataset:
    """Open a dataset by name: ``omniglot`` (needs ``root``), ``glyphs`` (synthetic) or ``folder`` (``root``).

    For ``glyphs`` the split picks a disjoint block of classes: ``background`` for training, ``evaluation`` for
    unseen classes.
    """
    if name == "omniglot":
        from fewshot.data.omniglot import Omniglot

        if root is None:
            raise DataError("the omniglot dataset needs --root, the folder holding the release zips")
        return Omniglot(root, split or "minimal", image_size=image_size, rotations=rotations, download=download,
                        flips=flips)
    if name == "glyphs":
        from fewshot.data.synthetic import SyntheticGlyphs

        split = split or "background"
        if split not in GLYPH_SPLITS:
            raise DataError(f"unknown glyphs split '{split}'; choose one of {', '.join(GLYPH_SPLITS)}")
        return SyntheticGlyphs(glyph_classes, image_size=image_size, seed=seed,
                               class_offset=GLYPH_SPLITS[split]).preload()
    if name == "folder":
        from fewshot.data.image_folder import ImageFolder

        if root is None:
            raise DataError("the folder dataset needs --root, a folder with one sub-folder of images per class")
        return ImageFolder(root, image_size=image_size)
    raise DataError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")


__all__ = [
    "DataError",
    "FewShotDataset",
    "Task",
    "TaskSampler",
    "TaskSpec",
    "TensorDataset",
    "build_task",
    "iterate_tasks",
    "load_dataset",
    "load_tasks",
    "save_tasks",
    "select_groups",
    "split_by_fraction",
    "split_by_groups",
]
