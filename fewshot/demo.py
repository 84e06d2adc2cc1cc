"""``fewshot demo``: train a ProtoNet on synthetic glyphs, evaluate it on unseen glyph classes, show an episode."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from fewshot.data import TaskSampler, build_task, load_dataset
from fewshot.evaluation.evaluate import evaluate
from fewshot.recipes import get_recipe
from fewshot.training.checkpoint import load_model
from fewshot.utils import atomic_write_text

EVAL_SETTINGS = ((5, 1), (5, 5))


def run_demo(out: Path, minutes: float = 2.0, seed: int = 0, episodes: int = 1000) -> list[dict]:
    """Train for ``minutes``, evaluate 5-way 1-shot and 5-shot on unseen classes, write ``out``; return the rows."""
    from fewshot.commands import TRAIN_DEFAULTS, start_training
    from fewshot.plots import plot_episode

    settings = {**TRAIN_DEFAULTS, **get_recipe("glyphs-protonet"), "time_budget": minutes * 60, "seed": seed}
    result = start_training(settings, out)
    model, spec = load_model(out)
    unseen = load_dataset("glyphs", split="evaluation", glyph_classes=200, seed=seed)
    rows = []
    for ways, shots in EVAL_SETTINGS:
        r = evaluate(model, unseen, ways, shots, queries=15, episodes=episodes, seed=seed,
                     temperature=spec.temperature)
        rows.append({**r.summary(), "training_minutes": round(result.elapsed_s / 60, 2)})
    atomic_write_text(out / "results.json", json.dumps(rows, indent=2))

    task = build_task(unseen, TaskSampler(unseen, 5, 1, 3, 1, seed=seed).spec(0))
    with torch.no_grad():
        logits = model(task.support_images, task.support_labels, task.query_images)
        probabilities = (logits / spec.temperature).softmax(1)
    plot_episode(task, probabilities.argmax(1), out / "episode.png", probabilities=probabilities.max(1).values,
                 title="5-way 1-shot on unseen glyph classes")

    print(f"\nProtoNet (Conv-4) trained {result.elapsed_s / 60:.1f} min on synthetic glyphs; "
          f"{episodes} test episodes on unseen glyph classes:")
    print(f"{'task':<16}{'accuracy':>10}{'95% CI':>10}{'ECE':>8}")
    for row in rows:
        print(f"{row['ways']}-way {row['shots']}-shot{'':<5}{100 * row['accuracy']:>9.2f}%{100 * row['ci95']:>8.2f}%"
              f"{100 * row['ece']:>7.2f}%")
    print(f"ECE: expected calibration error of the probabilities, at the temperature fitted on validation classes "
          f"({spec.temperature:.3g})")
    print(f"run folder: {out} (config.json, metrics.csv, best.pt, last.pt, curves.png, calibration.json, episode.png, "
          "results.json)")
    return rows
