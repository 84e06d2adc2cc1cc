"""Test-time probes on metric checkpoints, validation alphabet only: feature normalisations and an ensemble.

For each checkpoint (run folder or .pt of a metric method trained on the sweep's split), embeds Early_Aramaic once
(no test views) and scores the same 1000 seeded 20-way 1-shot within-alphabet tasks (5 queries per class) by
nearest prototype under:

- plain: squared Euclidean distance to the class mean, as ProtoNet;
- L2N: features scaled to unit length first; CL2N: centred on the mean training feature, then L2N (SimpleShot,
  Wang et al. 2019);

and then the ensemble of all checkpoints (sum of their squared distances).

    python benchmarks/feature_probes.py runs/sweep/D_elastic runs/pretrain/linear runs/sweep/G_el_lr2 runs/sweep/J_el2
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from fewshot.commands import TRAIN_DEFAULTS, prepare_training_data
from fewshot.data import TaskSampler
from fewshot.evaluation.evaluate import embed_dataset
from fewshot.evaluation.metrics import mean_and_ci95
from fewshot.recipes import get_recipe
from fewshot.training.checkpoint import load_model

Transform = Callable[[torch.Tensor], torch.Tensor]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--root", default="../shared/data/omniglot")
    parser.add_argument("--episodes", type=int, default=1000)
    args = parser.parse_args()

    settings = {**TRAIN_DEFAULTS, **get_recipe("omniglot-protonet"), "root": args.root, "final": False,
                "holdout_alphabets": "Korean,Balinese", "val_alphabets": "Early_Aramaic"}
    train, val = prepare_training_data(settings)
    assert val is not None
    specs = TaskSampler(val, 20, 1, 5, args.episodes, seed=1, within_group=True).specs()
    support = torch.as_tensor(np.stack([s.support.reshape(-1) for s in specs]))  # [E, 20]
    query = torch.as_tensor(np.stack([s.query.reshape(-1) for s in specs]))  # [E, 100]
    labels = torch.arange(20).repeat_interleave(5)
    cpu = torch.device("cpu")

    def accuracy(features: list[torch.Tensor]) -> str:
        distances = sum(torch.cdist(f[query], f[support]) ** 2 for f in features)  # [E, 100, 20]
        mean, ci = mean_and_ci95((distances.argmin(-1) == labels).float().mean(1).tolist())
        return f"{100 * mean:.1f} ± {100 * ci:.1f}%"

    all_features = []
    for path in args.checkpoints:
        model, _ = load_model(path, test_views=1)
        features = embed_dataset(model, val, cpu)
        centre = embed_dataset(model, train, cpu).mean(0)
        all_features.append(features)
        variants: dict[str, Transform] = {
            "plain": lambda f: f,
            "L2N": lambda f: F.normalize(f, dim=-1),
            "CL2N": lambda f, c=centre: F.normalize(f - c, dim=-1),
        }
        print(path + ": " + ", ".join(f"{name} {accuracy([t(features)])}" for name, t in variants.items()))
    if len(all_features) > 1:
        print(f"ensemble of {len(all_features)} (plain): {accuracy(all_features)}")


if __name__ == "__main__":
    main()
