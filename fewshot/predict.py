"""Prediction for users: a folder of labelled support images, query files in, a class and confidence out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fewshot.data.base import DataError
from fewshot.data.image_folder import ImageFolder, list_image_files
from fewshot.data.images import CorruptImageError, decode_image
from fewshot.methods import FewShotMethod
from fewshot.training.checkpoint import ModelSpec


@dataclass
class Prediction:
    file: str
    predicted: str
    probability: float
    runner_up: str | None
    runner_up_probability: float | None


@torch.no_grad()
def predict(
    model: FewShotMethod,
    spec: ModelSpec,
    support_dir: str | Path,
    queries: Sequence[str | Path],
    skip_corrupt: bool = False,
    batch_size: int = 256,
) -> list[Prediction]:
    """Classify each query image among the classes of ``support_dir`` (``support_dir/<class>/<images>``).

    Images are preprocessed as the model's training data was (size, channels, ink polarity). Probabilities
    are the softmax of the method's logits.
    """
    channels, height, width = spec.image_shape
    support = ImageFolder(support_dir, image_size=(height, width), channels=channels, invert=spec.invert,
                          on_corrupt="skip" if skip_corrupt else "error")
    if support.num_classes < 2:
        raise DataError(f"{support_dir} has {support.num_classes} class folder; prediction needs at least two")
    files = list_image_files([Path(q) for q in queries])
    images, kept = [], []
    for path in files:
        try:
            images.append(decode_image(path, (height, width), channels=channels, invert=spec.invert))
            kept.append(path)
        except CorruptImageError:
            if not skip_corrupt:
                raise
            import warnings

            warnings.warn(f"skipping unreadable query image {path}", stacklevel=2)
    if not images:
        raise DataError("no readable query images")
    model.eval()
    support_labels = torch.as_tensor(support.item_classes)
    results = []
    for start in range(0, len(images), batch_size):
        batch = torch.stack(images[start : start + batch_size])
        probabilities = model(support.images, support_labels, batch).float().softmax(1)
        top = probabilities.topk(min(2, support.num_classes), dim=1)
        for row, path in enumerate(kept[start : start + batch_size]):
            first, second = top.indices[row, 0], top.indices[row, 1] if top.indices.shape[1] > 1 else None
            results.append(
                Prediction(
                    file=str(path),
                    predicted=support.class_names[first],
                    probability=float(top.values[row, 0]),
                    runner_up=support.class_names[second] if second is not None else None,
                    runner_up_probability=float(top.values[row, 1]) if second is not None else None,
                )
            )
    return results
