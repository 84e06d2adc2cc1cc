"""Per-instance accuracy of sequence methods (MANN): how often the k-th presentation of a class is right.

An episode is ``ways`` classes with ``instances`` images each, presented in a seeded random order, each step with
the previous step's label. The 1st presentation of a class can only be guessed; later ones show what the model
stored (Santoro et al. 2016, Table 1).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from fewshot.data import FewShotDataset, TaskSampler
from fewshot.evaluation.metrics import mean_and_ci95
from fewshot.utils import autocast, eval_mode

REPORTED_INSTANCES = (1, 2, 3, 4, 5, 10)


def presentation_index(labels: torch.Tensor) -> torch.Tensor:
    """For label sequences ``[B, T]``, ``[B, T]`` with 1 where a class appears the first time, 2 the second..."""
    one_hot = torch.nn.functional.one_hot(labels)
    return (one_hot.cumsum(1) * one_hot).sum(-1)


@torch.no_grad()
def instance_accuracy(
    model,
    dataset: FewShotDataset,
    ways: int = 5,
    instances: int = 10,
    episodes: int = 1000,
    seed: int = 0,
    within_group: bool = False,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    batch_size: int = 50,
    progress: bool = False,
) -> dict[int, tuple[float, float]]:
    """``{k: (accuracy, ci95)}`` of the k-th presentation, for k = 1..instances, over seeded episodes.

    ``model`` must have ``sequence_logits(images [B, T, C, H, W], labels [B, T]) -> [B, T, ways]``.
    Accuracy is averaged over the classes of an episode, then over episodes (the CI is over episodes).
    """
    if not hasattr(model, "sequence_logits"):
        raise ValueError(f"{type(model).__name__} is not a sequence method; per-instance accuracy needs e.g. mann")
    if instances < 2:
        raise ValueError(f"instances must be at least 2 (got {instances})")
    device = torch.device(device)
    sampler = TaskSampler(dataset, ways, instances - 1, 1, episodes, seed, within_group=within_group)
    with eval_mode(model):
        per_episode = []  # [E, instances] accuracy of each presentation
        for start in tqdm(range(0, episodes, batch_size), desc="sequences", leave=False, disable=not progress):
            indices = range(start, min(start + batch_size, episodes))
            items, labels = [], []
            for i in indices:
                spec = sampler.spec(i)
                flat = np.concatenate([spec.support, spec.query], 1)  # [N, instances]
                order = np.random.default_rng((seed, i)).permutation(flat.size)
                items.append(flat.reshape(-1)[order])
                labels.append(np.repeat(np.arange(ways), instances)[order])
            images = dataset.load_many(np.concatenate(items)).unflatten(0, (len(items), -1)).to(device)
            label_batch = torch.as_tensor(np.stack(labels), device=device)
            with autocast(device, precision):
                logits = model.sequence_logits(images, label_batch)
            correct = (logits[..., :ways].argmax(-1) == label_batch).float()
            index = presentation_index(label_batch)
            by_instance = torch.zeros(len(items), instances, device=device).scatter_add_(1, index - 1, correct)
            per_episode.append((by_instance / ways).cpu())
    table = torch.cat(per_episode).numpy()
    return {k + 1: mean_and_ci95(table[:, k].tolist()) for k in range(instances)}
