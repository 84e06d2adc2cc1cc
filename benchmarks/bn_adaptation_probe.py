"""Probe: batch-norm statistics taken from the test images (AdaBN, Li et al. 2016) instead of the training ones.

Each alphabet is a domain of its own (Balinese strokes are denser than Korean ones), so the running statistics of
training may not fit it. Three ways, scored on the same seeded tasks as `fewshot evaluate` draws:

- ``none``: the checkpoint as it is;
- ``alphabet``: statistics recomputed from every image of the alphabet (optimistic: a Lake run has 40 images);
- ``task``: per task, statistics from that task's support and query images, blended with the training ones as
  ``(1 - blend) * running + blend * task`` (what a Lake run allows: its 40 images, no labels of the queries).

    python benchmarks/bn_adaptation_probe.py runs/folds29/protonet_F1 --alphabets Balinese,Korean --modes none,task
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
from torch import nn

from fewshot.data import TaskSampler, load_dataset, split_by_groups
from fewshot.evaluation.evaluate import evaluate
from fewshot.methods import FewShotMethod
from fewshot.training.checkpoint import load_model


def batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def set_statistics(model: FewShotMethod, images: torch.Tensor, blend: float, saved: list[tuple]) -> None:
    """Running statistics := ``(1 - blend) * saved + blend * statistics of images`` (model left in eval mode)."""
    norms = batch_norms(model)
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative: the statistics of exactly these batches
        norm.train()
    for chunk in images.split(1024):
        model.backbone(chunk)
    for norm, (mean, var) in zip(norms, saved, strict=True):
        norm.running_mean.mul_(blend).add_((1 - blend) * mean)
        norm.running_var.mul_(blend).add_((1 - blend) * var)
        norm.eval()


class TaskStatistics(FewShotMethod):
    """The wrapped model with batch-norm statistics from each task's own support and query images."""

    def __init__(self, inner: FewShotMethod, blend: float) -> None:
        super().__init__(inner.backbone)
        self.inner, self.blend = inner, blend
        self.saved = [(n.running_mean.clone(), n.running_var.clone()) for n in batch_norms(inner)]

    def forward(self, support_images, support_labels, query_images):
        set_statistics(self.inner, torch.cat([support_images, query_images]), self.blend, self.saved)
        return self.inner(support_images, support_labels, query_images)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--root", default="../shared/data/omniglot")
    p.add_argument("--alphabets", required=True)
    p.add_argument("--modes", default="none,alphabet,task")
    p.add_argument("--blends", default="1.0", help="task mode: comma-separated blends")
    p.add_argument("--ways", type=int, default=20)
    p.add_argument("--queries", type=int, default=1)
    p.add_argument("--episodes", type=int, default=1000)
    args = p.parse_args()
    model, spec = load_model(args.checkpoint)
    data = load_dataset("omniglot", args.root, "minimal", spec.image_shape[-1])
    results = {}
    for alphabet in args.alphabets.split(","):
        test = split_by_groups(data, [alphabet])[1]
        specs = TaskSampler(test, args.ways, 1, args.queries, args.episodes, 0, within_group=True).specs()
        for mode in args.modes.split(","):
            for blend in [float(b) for b in args.blends.split(",")] if mode == "task" else [1.0]:
                candidate = copy.deepcopy(model).eval()
                if mode == "alphabet":
                    saved = [(n.running_mean.clone(), n.running_var.clone()) for n in batch_norms(candidate)]
                    images = torch.stack([test[i][0] for i in range(len(test))])
                    set_statistics(candidate, images, blend, saved)
                elif mode == "task":
                    candidate = TaskStatistics(candidate, blend).eval()
                result = evaluate(candidate, test, 0, 0, specs=specs, precision="bf16")
                key = f"{alphabet} {mode}" + (f" blend {blend}" if mode == "task" else "")
                results[key] = (round(100 * result.accuracy, 2), round(100 * result.ci95, 2))
                print(key, *results[key], flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
