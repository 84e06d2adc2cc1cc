"""Small builders shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewshot.commands import TRAIN_DEFAULTS
from fewshot.data import TensorDataset


def glyph_settings(**overrides) -> dict:
    """Training settings for a small, fast ProtoNet run on synthetic glyphs."""
    return {
        **TRAIN_DEFAULTS,
        "dataset": "glyphs", "split": "background", "ways": 10, "shots": 1, "queries": 3, "episodes": 20,
        "val_every": 10, "val_episodes": 20, "val_ways": 5, "val_within_alphabet": False, "precision": "fp32",
        "device": "cpu", **overrides,
    }


def blob_dataset(num_classes: int = 6, per_class: int = 6, size: int = 16, seed: int = 0) -> TensorDataset:
    """Classes that differ by where a bright square sits, plus noise: separable by any reasonable method."""
    rng = np.random.default_rng(seed)
    images = rng.random((num_classes * per_class, 1, size, size)).astype(np.float32) * 0.2
    for c in range(num_classes):
        r, col = divmod(c, 3)
        images[c * per_class : (c + 1) * per_class, 0, 2 + 4 * r : 5 + 4 * r, 1 + 4 * col : 4 + 4 * col] += 0.8
    return TensorDataset(torch.from_numpy(images), np.repeat(np.arange(num_classes), per_class))


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)
    return path
