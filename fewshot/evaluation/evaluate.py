"""Seeded episodic evaluation with confidence intervals, and Lake et al.'s one-shot runs."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fewshot.data import FewShotDataset, Task, TaskSampler, TaskSpec, build_task
from fewshot.evaluation.metrics import batched_episode_scores, mean_and_ci95
from fewshot.methods import FewShotMethod, MetricMethod
from fewshot.utils import autocast


@dataclass
class EvalResult:
    """Mean episode scores (fractions) with the 95% CI of the accuracy; ``per_episode`` one dict per task."""

    accuracy: float
    ci95: float
    episodes: int
    ways: int
    shots: int
    queries: int
    precision_macro: float
    recall_macro: float
    f1_macro: float
    per_episode: list[dict] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "per_episode"}

    def write_csv(self, path: str | Path) -> None:
        rows = self.per_episode
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


@torch.no_grad()
def embed_dataset(
    model: MetricMethod, dataset: FewShotDataset, device: torch.device, precision: str = "fp32",
    batch_size: int = 1024,
) -> torch.Tensor:
    """Features ``[n, D]`` of every image of ``dataset``, computed once in eval mode."""
    chunks = []
    for start in range(0, len(dataset), batch_size):
        images = dataset.load_many(range(start, min(start + batch_size, len(dataset)))).to(device)
        with autocast(device, precision):
            chunks.append(model.features(images).float())
    return torch.cat(chunks)


@torch.no_grad()
def _score_cached(
    model: MetricMethod, features: torch.Tensor, specs: Sequence[TaskSpec], device: torch.device
) -> dict[str, torch.Tensor]:
    """Scores of episodes of equal shape classified from cached features ``[n, D]`` in one call."""
    ways, shots = specs[0].support.shape
    queries = specs[0].query.shape[1]
    support = torch.as_tensor(np.stack([s.support.reshape(-1) for s in specs]), device=device)
    query = torch.as_tensor(np.stack([s.query.reshape(-1) for s in specs]), device=device)
    labels = torch.arange(ways, device=device)
    support_labels = labels.repeat_interleave(shots).expand(len(specs), -1)
    query_labels = labels.repeat_interleave(queries).expand(len(specs), -1)
    if len(specs) == 1:  # methods without batched classify see plain [N*K, D] / [M, D] tensors
        logits = model.classify(features[support[0]], support_labels[0], features[query[0]])[None]
    else:
        logits = model.classify(features[support], support_labels, features[query])
    return batched_episode_scores(logits.argmax(-1), query_labels, ways)


def _predictions(model: FewShotMethod, task: Task, device: torch.device, precision: str) -> torch.Tensor:
    task = task.to(device)
    with autocast(device, precision):
        return model(task.support_images, task.support_labels, task.query_images).argmax(1)


def evaluate(
    model: FewShotMethod,
    dataset: FewShotDataset,
    ways: int,
    shots: int,
    queries: int = 15,
    episodes: int = 1000,
    seed: int = 0,
    within_group: bool = False,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    specs: Sequence[TaskSpec] | None = None,
    progress: bool = False,
    chunk_size: int = 500,
) -> EvalResult:
    """Accuracy (mean ± 95% CI) and macro P/R/F1 over seeded episodes of ``dataset``.

    Metric methods embed every image once and classify all episodes from the cached features; other
    methods run on each task. ``specs`` replays a saved task list instead of sampling.
    """
    device = torch.device(device)
    if specs is None:
        specs = TaskSampler(dataset, ways, shots, queries, episodes, seed, within_group=within_group).specs()
    was_training = model.training
    model.eval()
    scores: list[dict[str, torch.Tensor]] = []
    bar = tqdm(total=len(specs), desc="evaluating", unit="ep", leave=False, disable=not progress)
    if isinstance(model, MetricMethod):
        features = embed_dataset(model, dataset, device, precision)
        same_shape = len({(s.support.shape, s.query.shape) for s in specs}) == 1
        chunk = chunk_size if model.batched_classify and same_shape else 1
        for start in range(0, len(specs), chunk):
            batch = specs[start : start + chunk]
            scores.append(_score_cached(model, features, batch, device))
            bar.update(len(batch))
    else:
        for spec in specs:
            with torch.no_grad():
                predictions = _predictions(model, build_task(dataset, spec), device, precision)
            labels = torch.arange(spec.query.shape[0], device=device).repeat_interleave(spec.query.shape[1])
            scores.append(batched_episode_scores(predictions[None], labels[None], spec.support.shape[0]))
            bar.update(1)
    bar.close()
    merged = {name: torch.cat([s[name] for s in scores]).tolist() for name in scores[0]}
    rows = [
        {"episode": i, **{name: merged[name][i] for name in merged},
         "classes": " ".join(dataset.class_names[c] for c in spec.classes)}
        for i, spec in enumerate(specs)
    ]
    model.train(was_training)
    accuracy, ci95 = mean_and_ci95([r["accuracy"] for r in rows])
    return EvalResult(
        accuracy=accuracy,
        ci95=ci95,
        episodes=len(rows),
        ways=int(specs[0].support.shape[0]),
        shots=int(specs[0].support.shape[1]),
        queries=int(specs[0].query.shape[1]),
        precision_macro=mean_and_ci95([r["precision"] for r in rows])[0],
        recall_macro=mean_and_ci95([r["recall"] for r in rows])[0],
        f1_macro=mean_and_ci95([r["f1"] for r in rows])[0],
        per_episode=rows,
    )


@torch.no_grad()
def evaluate_tasks(
    model: FewShotMethod, named_tasks: Sequence[tuple[str, Task]], device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> dict:
    """Error rate of each named task (e.g. Lake's 20 runs) and their mean: ``{"error_rate", "runs": [...]}``."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    runs = []
    for name, task in named_tasks:
        predictions = _predictions(model, task, device, precision).cpu()
        runs.append({"run": name, "error_rate": float((predictions != task.query_labels).float().mean())})
    model.train(was_training)
    return {"error_rate": sum(r["error_rate"] for r in runs) / len(runs), "runs": runs}
