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


def assert_bf16_matches_fp32(model: torch.nn.Module, task, tolerance: float = 0.05, agreement: float = 0.9) -> None:
    """bf16 autocast keeps a method's logits fp32, within ``tolerance`` of the largest fp32 logit, same argmax."""
    args = (task.support_images, task.support_labels, task.query_images)
    with torch.no_grad():
        plain = model(*args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(*args)
    assert half.dtype == torch.float32
    assert (half - plain).abs().max() <= tolerance * plain.abs().max()
    assert (half.argmax(1) == plain.argmax(1)).float().mean() >= agreement


def assert_cached_evaluation_matches_per_task(model, data, episodes: int = 8) -> None:
    """Evaluating a metric method from cached features gives the same episodes as running it task by task."""
    from fewshot.evaluation.evaluate import evaluate

    class Uncached(torch.nn.Module):  # same model, seen as a generic (non-metric) method
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, s, y, q):
            return self.inner.classify_task(self.inner.embed(s), y, self.inner.embed(q))

    cached = evaluate(model, data, 5, 1, queries=5, episodes=episodes, seed=3)
    generic = evaluate(Uncached(model), data, 5, 1, queries=5, episodes=episodes, seed=3)
    assert [r["accuracy"] for r in cached.per_episode] == [r["accuracy"] for r in generic.per_episode]
    assert cached.confused_pairs == generic.confused_pairs


def train_on_glyphs_and_score_unseen(tmp_path: Path, eval_episodes: int = 100, **settings):
    """Train with :func:`glyph_settings` overridden by ``settings``, then score 5-way 1-shot on unseen glyph classes.

    Returns ``(untrained accuracy, trained accuracy, trained model)``; the untrained model has the same
    architecture and the same evaluation episodes.
    """
    from fewshot.commands import start_training
    from fewshot.data import load_dataset
    from fewshot.evaluation.evaluate import evaluate
    from fewshot.training.checkpoint import load_model

    start_training(glyph_settings(**settings), tmp_path / "run", quiet=True)
    model, spec = load_model(tmp_path / "run")
    unseen = load_dataset("glyphs", split="evaluation", glyph_classes=60)
    torch.manual_seed(0)
    before = evaluate(spec.build(), unseen, 5, 1, episodes=eval_episodes, seed=1).accuracy
    after = evaluate(model, unseen, 5, 1, episodes=eval_episodes, seed=1).accuracy
    return before, after, model
