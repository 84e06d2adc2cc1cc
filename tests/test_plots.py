from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from fewshot.data.task import Task
from fewshot.plots import plot_curves, plot_episode


def _open(path) -> Image.Image:
    assert path.exists() and path.stat().st_size > 1000
    image = Image.open(path)
    image.load()
    assert image.format == "PNG"
    return image


def _rows(with_validation: bool = True) -> list[dict]:
    rows = []
    for i, episode in enumerate(range(0, 1001, 100)):
        row = {"episode": episode, "elapsed_s": episode / 100, "lr": 1e-3 if episode < 500 else 5e-4,
               "train_loss": 2.0 * math.exp(-episode / 400) + 0.1, "train_accuracy": 0.3 + 0.06 * i,
               "val_accuracy": None, "val_ci95": None}
        if with_validation and i % 2 == 0:
            row["val_accuracy"], row["val_ci95"] = 0.25 + 0.05 * i, 0.02
        rows.append(row)
    return rows


def test_plot_curves_writes_png(tmp_path):
    path = tmp_path / "curves.png"
    plot_curves(_rows(), path)
    width, height = _open(path).size
    assert 1000 < width < 1600 and 400 < height < 650  # two side-by-side panels at ~120 dpi


def test_plot_curves_without_validation_values(tmp_path):
    # as read back from a CSV: strings, "" for no validation; also NaN, a missing key, one point without CI
    rows = [{k: ("" if v is None else str(v)) for k, v in row.items()} for row in _rows(with_validation=False)]
    rows[4]["val_accuracy"], rows[4]["val_ci95"] = "nan", "nan"
    del rows[5]["val_accuracy"]
    rows[-1]["val_accuracy"] = "0.8"
    plot_curves(rows, tmp_path / "a.png")
    _open(tmp_path / "a.png")
    plot_curves([{"episode": 0, "train_loss": None}], tmp_path / "b.png")  # nothing to draw
    _open(tmp_path / "b.png")


def _task(ways: int = 3, shots: int = 2, queries: int = 4, channels: int = 1) -> Task:
    g = torch.Generator().manual_seed(0)
    images = (torch.rand(ways * (shots + queries), channels, 28, 28, generator=g) > 0.85).float()
    labels = torch.arange(ways)
    return Task(
        support_images=images[: ways * shots],
        support_labels=labels.repeat_interleave(shots),
        query_images=images[ways * shots :],
        query_labels=labels.repeat_interleave(queries),
        class_ids=list(range(ways)),
        class_names=[f"Alphabet_{c}/character{c:02d}" for c in range(ways)],
    )


def test_plot_episode_writes_png(tmp_path):
    task = _task()
    predictions = task.query_labels.clone()
    predictions[::3] = (predictions[::3] + 1) % 3  # some wrong
    probabilities = torch.linspace(0.4, 0.99, predictions.numel())
    path = tmp_path / "episode.png"
    plot_episode(task, predictions, path, max_queries=9, probabilities=probabilities, title="An episode")
    width, height = _open(path).size
    # 3 columns of ~1.25 in; 1 support row and 3 query rows (9 of the 12 queries)
    assert 350 < width < 650 and 700 < height < 1100


def test_plot_episode_rgb_and_unlabelled(tmp_path):
    task = _task(ways=2, shots=1, queries=2, channels=3)
    task.query_labels = None
    task.class_names = []  # falls back to "class j"
    plot_episode(task, torch.tensor([1, 0, 1, 1]), tmp_path / "rgb.png")
    _open(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="predictions"):
        plot_episode(task, torch.tensor([1, 0]), tmp_path / "bad.png")
