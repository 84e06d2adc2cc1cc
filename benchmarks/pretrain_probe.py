"""Does plain supervised pre-training beat episodic training on Omniglot `minimal`? (validation only)

Trains the recipe's Conv-4 as an ordinary classifier over every training class (rotations included, the
omniglot-protonet augmentation, bf16 autocast, Adam with a cosine schedule over a wall-time budget), then uses it as
a ProtoNet: every ``--val-every`` seconds it scores 300 seeded 20-way 1-shot within-alphabet tasks of the
validation alphabet and keeps the best checkpoint as a protonet run folder (``fewshot evaluate`` and
``fewshot train --init`` read it). The split is the sweep's: Korean and Balinese held out (never read here),
Early_Aramaic (``--val``) for validation.

    OMP_NUM_THREADS=1 python benchmarks/pretrain_probe.py --head linear --out runs/pretrain/linear
    OMP_NUM_THREADS=1 python benchmarks/pretrain_probe.py --head cosine --out runs/pretrain/cosine
    OMP_NUM_THREADS=1 python benchmarks/pretrain_probe.py --backbone-options hidden=128 --out runs/pretrain/h128
    OMP_NUM_THREADS=1 python benchmarks/pretrain_probe.py --val Sanskrit --backbone-options "hidden=(32,64,64,64)" \
        --budget 300 --out runs/pretrain_sk/p300_s0   # then `fewshot train --init runs/pretrain_sk/p300_s0 ...`
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.commands import TRAIN_DEFAULTS, build_train_config, prepare_training_data
from fewshot.data.augment import AugmentConfig, augment
from fewshot.evaluation.evaluate import evaluate
from fewshot.recipes import get_recipe
from fewshot.training.checkpoint import save_checkpoint
from fewshot.utils import autocast, default_precision


class CosineHead(nn.Module):
    """Logits ``[B, C]`` = scale * cosine(feature, class weight) (Baseline++, Chen et al. 2019)."""

    def __init__(self, dim: int, classes: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * dim**-0.5)
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=-1) @ F.normalize(self.weight, dim=-1).T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="../shared/data/omniglot")
    parser.add_argument("--head", choices=("linear", "cosine"), default="linear")
    parser.add_argument("--budget", type=float, default=600, help="training seconds")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--val-every", type=float, default=60, help="seconds between validations")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--backbone-options", default="")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val", default="Early_Aramaic", help="validation alphabet")
    parser.add_argument("--holdout", default="Korean,Balinese", help="alphabets never read")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    settings = {**TRAIN_DEFAULTS, **get_recipe("omniglot-protonet"), "root": args.root, "final": False,
                "holdout_alphabets": args.holdout, "val_alphabets": args.val, "test_views": 1,
                "image_size": args.image_size, "backbone_options": args.backbone_options, "seed": args.seed}
    train, val = prepare_training_data(settings)
    assert val is not None
    spec = build_train_config(settings, train).model
    model = spec.build().to(memory_format=torch.channels_last)
    images, labels = train.preload().images, torch.as_tensor(train.item_classes)
    with torch.no_grad():
        dim = model.embed(images[:2]).shape[-1]
    head = nn.Linear(dim, train.num_classes) if args.head == "linear" else CosineHead(dim, train.num_classes)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=args.lr)
    transforms = AugmentConfig.from_string(settings["augment"])
    generator = torch.Generator().manual_seed(args.seed)
    device = torch.device("cpu")
    precision = default_precision(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{train.describe()}; validation {val.describe()}; {precision}", flush=True)

    start, steps, next_check, best = time.perf_counter(), 0, args.val_every, (0.0, 0.0, 0)
    while (elapsed := time.perf_counter() - start) < args.budget:
        for group in optimizer.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * elapsed / args.budget))
        batch = torch.randint(len(images), (args.batch,), generator=generator)
        inputs = augment(images[batch], transforms, generator).contiguous(memory_format=torch.channels_last)
        model.train()
        with autocast(device, precision):
            logits = head(model.embed(inputs).float())
        loss = F.cross_entropy(logits.float(), labels[batch])
        if not torch.isfinite(loss):
            raise SystemExit(f"loss became {loss.item()} at step {steps}; lower --lr")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        if time.perf_counter() - start >= min(next_check, args.budget):
            next_check += args.val_every
            result = evaluate(model, val, 20, 1, queries=5, episodes=300, seed=0, within_group=True)
            print(json.dumps({"seconds": round(time.perf_counter() - start), "steps": steps, "loss": loss.item(),
                              "validation": result.accuracy, "ci95": result.ci95}), flush=True)
            if result.accuracy > best[0]:
                best = (result.accuracy, result.ci95, steps)
                save_checkpoint(out / "best.pt", model, spec)
    (out / "config.json").write_text(json.dumps({**vars(args), "model": spec.to_dict()}, indent=1))
    print(f"best validation {100 * best[0]:.1f} ± {100 * best[1]:.1f}% at step {best[2]} of {steps}; "
          f"checkpoint {out / 'best.pt'}")


if __name__ == "__main__":
    main()
