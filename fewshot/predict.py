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
from fewshot.utils import eval_mode


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
    balanced_queries: bool = False,
) -> list[Prediction]:
    """Classify each query image among the classes of ``support_dir`` (``support_dir/<class>/<images>``).

    Images are preprocessed as the model's training data was (size, channels, ink polarity). Probabilities
    are the softmax of the method's logits divided by the checkpoint's calibrated temperature (``fewshot calibrate``).
    A model with transductive balancing (``transductive_balance``) keeps it only with ``balanced_queries``: the
    caller's word that the queries are spread evenly over the classes; otherwise it refines without it.
    """
    support = load_image_folder(spec, support_dir, skip_corrupt)
    if support.num_classes < 2:
        raise DataError(f"{support_dir} has {support.num_classes} class folder; prediction needs at least two")
    files, images = load_queries(spec, queries, skip_corrupt)
    support_labels = torch.as_tensor(support.item_classes)
    results = []
    balance = model.transductive_balance
    model.transductive_balance = balance if balanced_queries else 0
    try:
        with eval_mode(model):
            for start in range(0, len(images), batch_size):
                logits = model(support.images, support_labels, images[start : start + batch_size])
                results += rank(logits / spec.temperature, support.class_names, files[start : start + batch_size])
    finally:
        model.transductive_balance = balance
    return results


def load_image_folder(spec: ModelSpec, root: str | Path, skip_corrupt: bool = False) -> ImageFolder:
    """The labelled images of ``root/<class>/`` preprocessed for the model of ``spec``."""
    channels, height, width = spec.image_shape
    return ImageFolder(root, image_size=(height, width), channels=channels, invert=spec.invert,
                       on_corrupt="skip" if skip_corrupt else "error")


def load_queries(
    spec: ModelSpec, queries: Sequence[str | Path], skip_corrupt: bool = False
) -> tuple[list[Path], torch.Tensor]:
    """Query files (folders expanded) and their images ``[M, C, H, W]``, preprocessed for the model of ``spec``."""
    channels, height, width = spec.image_shape
    images, kept = [], []
    for path in list_image_files([Path(q) for q in queries]):
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
    return kept, torch.stack(images)


def rank(logits: torch.Tensor, class_names: Sequence[str], files: Sequence[Path]) -> list[Prediction]:
    """One :class:`Prediction` per row of ``logits [M, N]``: the top class and the runner-up, with probabilities."""
    probabilities = logits.float().softmax(1)
    top = probabilities.topk(min(2, len(class_names)), dim=1)
    results = []
    for row, path in enumerate(files):
        first = top.indices[row, 0]
        second = top.indices[row, 1] if top.indices.shape[1] > 1 else None
        results.append(
            Prediction(
                file=str(path),
                predicted=class_names[first],
                probability=float(top.values[row, 0]),
                runner_up=class_names[second] if second is not None else None,
                runner_up_probability=float(top.values[row, 1]) if second is not None else None,
            )
        )
    return results
