"""A few-shot task (episode): a labelled support set and a query set to classify."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class Task:
    """One N-way K-shot episode.

    Labels are episode labels ``0..N-1``; ``class_ids[j]`` is the dataset class behind episode label ``j``
    and ``class_names[j]`` its name.

    Attributes:
        support_images: ``[N*K, C, H, W]``.
        support_labels: ``[N*K]`` int64 in ``0..N-1``.
        query_images: ``[M, C, H, W]`` (``M = N*Q`` for sampled tasks).
        query_labels: ``[M]`` int64, or ``None`` when the queries are unlabelled (prediction).
        class_ids: dataset class index per episode label, length N.
        class_names: class name per episode label, length N.
        support_ids / query_ids: item identifiers (file names where the data has them).
        seed: seed for randomness a method draws per task (a sequence method's order of presentation); the
            trainer sets it from ``(seed, episode)`` so that training stays reproducible. ``None``: the global RNG.
    """

    support_images: torch.Tensor
    support_labels: torch.Tensor
    query_images: torch.Tensor
    query_labels: torch.Tensor | None
    class_ids: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    support_ids: list[str] = field(default_factory=list)
    query_ids: list[str] = field(default_factory=list)
    seed: int | None = None

    @property
    def ways(self) -> int:
        return int(self.support_labels.max()) + 1 if self.support_labels.numel() else 0

    @property
    def shots(self) -> int:
        """Support items per class (the smallest count, for unbalanced user support sets)."""
        return int(torch.bincount(self.support_labels, minlength=self.ways).min()) if self.ways else 0

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Task:
        """A copy with the tensors on ``device`` (images also cast to ``dtype`` when given)."""
        def move(x: torch.Tensor | None, cast: bool) -> torch.Tensor | None:
            if x is None:
                return None
            return x.to(device, dtype=dtype if cast else None, non_blocking=True)

        return replace(
            self,
            support_images=move(self.support_images, True),
            support_labels=move(self.support_labels, False),
            query_images=move(self.query_images, True),
            query_labels=move(self.query_labels, False),
        )
