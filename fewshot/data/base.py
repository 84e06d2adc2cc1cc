"""The one dataset abstraction every sampler, trainer and evaluator works with.

A :class:`FewShotDataset` is a list of labelled items. Each item has an identifier (a file path where the
data has one), a class index, and an image that :meth:`FewShotDataset.load` turns into a ``[C, H, W]``
float tensor. Each class has a name and a group (the alphabet, for Omniglot), so splits and samplers can be
class-disjoint and group-aware. Small datasets are preloaded into one ``[n, C, H, W]`` tensor
(:meth:`FewShotDataset.preload`), which is the fast path of the sampler.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class DataError(ValueError):
    """Bad data or bad sampling arguments; the message says what was wrong and what to do."""


class FewShotDataset(Dataset):
    """Labelled images grouped into classes, and classes grouped into groups (alphabets).

    Subclasses call ``super().__init__`` with the item table and implement :meth:`load_item`.

    Args:
        item_ids: identifier of each item, e.g. a path inside a zip; length n.
        item_classes: class index of each item, in ``0..len(class_names)-1``; length n.
        class_names: name of each class, e.g. ``"Korean/character07"``.
        class_groups: group of each class (its alphabet); defaults to one group per class.
    """

    def __init__(
        self,
        item_ids: Sequence[str],
        item_classes: Sequence[int],
        class_names: Sequence[str],
        class_groups: Sequence[str] | None = None,
    ) -> None:
        if len(item_ids) != len(item_classes):
            raise DataError(f"{len(item_ids)} item ids but {len(item_classes)} item classes")
        self.item_ids = list(item_ids)
        self.item_classes = np.asarray(item_classes, dtype=np.int64)
        self.class_names = list(class_names)
        self.class_groups = list(class_groups) if class_groups is not None else list(class_names)
        if len(self.class_groups) != len(self.class_names):
            raise DataError(f"{len(self.class_names)} class names but {len(self.class_groups)} class groups")
        if len(self.item_classes) and (
            self.item_classes.min() < 0 or self.item_classes.max() >= len(self.class_names)
        ):
            raise DataError("item class index out of range of class_names")
        self.images: torch.Tensor | None = None  # [n, C, H, W] once preloaded

    # -- per-item access ---------------------------------------------------------------------------
    def load_item(self, index: int) -> torch.Tensor:
        """Read item ``index`` from its source and return a ``[C, H, W]`` float tensor."""
        raise NotImplementedError

    def load(self, index: int) -> torch.Tensor:
        """Image of item ``index`` as ``[C, H, W]``, from the preloaded tensor when there is one."""
        if self.images is not None:
            return self.images[index]
        return self.load_item(index)

    def __len__(self) -> int:
        return len(self.item_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.load(index), int(self.item_classes[index])

    def load_many(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Images of several items stacked as ``[len(indices), C, H, W]``."""
        if self.images is not None:
            return self.images[torch.as_tensor(np.asarray(indices), dtype=torch.long)]
        return torch.stack([self.load_item(int(i)) for i in indices])

    def preload(self, progress: bool = False) -> FewShotDataset:
        """Read every image once into one tensor (the sampler's fast path); returns ``self``."""
        if self.images is None and len(self):
            indices = range(len(self))
            if progress:
                from tqdm import tqdm

                indices = tqdm(indices, desc=f"loading {type(self).__name__}", unit="img", leave=False)
            self.images = torch.stack([self.load_item(i) for i in indices])
        return self

    # -- class structure ---------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def items_per_class(self) -> list[np.ndarray]:
        """For each class, the indices of its items (sorted)."""
        order = np.argsort(self.item_classes, kind="stable")
        bounds = np.searchsorted(self.item_classes[order], np.arange(self.num_classes + 1))
        return [order[bounds[c] : bounds[c + 1]] for c in range(self.num_classes)]

    def groups(self) -> dict[str, list[int]]:
        """Group name -> the class indices in it, in class order."""
        out: dict[str, list[int]] = {}
        for c, g in enumerate(self.class_groups):
            out.setdefault(g, []).append(c)
        return out

    def subset(self, classes: Sequence[int]) -> FewShotDataset:
        """A view restricted to ``classes``, renumbered ``0..len(classes)-1``; shares the preloaded tensor."""
        return ClassSubset(self, classes)

    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one item."""
        return tuple(self.load(0).shape)  # type: ignore[return-value]

    def describe(self) -> str:
        return (
            f"{type(self).__name__}: {len(self)} images, {self.num_classes} classes, "
            f"{len(self.groups())} groups"
        )


class ClassSubset(FewShotDataset):
    """The items of some classes of a parent dataset (a train, validation or test split)."""

    def __init__(self, parent: FewShotDataset, classes: Sequence[int]) -> None:
        classes = [int(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise DataError("a class subset lists a class twice")
        remap = np.full(parent.num_classes, -1, dtype=np.int64)
        remap[classes] = np.arange(len(classes))
        keep = np.flatnonzero(remap[parent.item_classes] >= 0)
        super().__init__(
            [parent.item_ids[i] for i in keep],
            remap[parent.item_classes[keep]],
            [parent.class_names[c] for c in classes],
            [parent.class_groups[c] for c in classes],
        )
        self.parent = parent
        self.parent_indices = keep
        if parent.images is not None:
            self.images = parent.images[torch.as_tensor(keep)]

    def load_item(self, index: int) -> torch.Tensor:
        return self.parent.load(int(self.parent_indices[index]))


class TensorDataset(FewShotDataset):
    """Images already in memory: ``images`` is ``[n, C, H, W]``, ``labels`` ``[n]``."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: Sequence[int] | torch.Tensor,
        class_names: Sequence[str] | None = None,
        class_groups: Sequence[str] | None = None,
        item_ids: Sequence[str] | None = None,
    ) -> None:
        labels = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64)
        n_classes = int(labels.max()) + 1 if len(labels) else 0
        class_names = list(class_names) if class_names is not None else [f"class{c}" for c in range(n_classes)]
        item_ids = list(item_ids) if item_ids is not None else [f"item{i}" for i in range(len(labels))]
        super().__init__(item_ids, labels, class_names, class_groups)
        self.images = images

    def load_item(self, index: int) -> torch.Tensor:
        assert self.images is not None
        return self.images[index]
