"""Test-time probes that use more of what a 1-shot task offers, validation alphabet only.

For a metric checkpoint trained on the sweep's split, embeds the validation alphabet under ``V`` seeded views
(view 0 the image itself, the others the checkpoint's test-time augmentation) and scores the same seeded
20-way 1-shot within-alphabet tasks (5 queries per class) by:

- ``mean-of-V``: squared Euclidean distance between view-averaged embeddings (the recipe's test views);
- ``diag-var``: the same, each feature divided by its within-class variance over the support's views (a
  per-task diagonal Mahalanobis distance: the augmentations say which features a drawing's wobble moves);
- ``lda``: features whitened by the within-class covariance of the training classes (shrunk towards its
  diagonal), then Euclidean: how real drawers, not augmentation, vary;
- ``head``: a linear head initialised as the prototype classifier (``w = 2c, b = -|c|^2``) and fine-tuned with
  Adam on the support's views, a pull back to its start as the prior;
- ``chamfer``: no averaging; the squared distances between every view of the query and every view of the support
  image, each view matched to its nearest on the other side, both ways averaged (a view-level alignment).

    python benchmarks/support_probes.py runs/sweep_sanskrit/D_elastic --val Sanskrit \
        --test-augment rotation=10,shear=5,scale=0.9:1.1,shift=0.08
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from fewshot.commands import TRAIN_DEFAULTS, prepare_training_data
from fewshot.data import FewShotDataset, TaskSampler
from fewshot.data.augment import augment
from fewshot.evaluation.evaluate import embed_dataset
from fewshot.evaluation.metrics import mean_and_ci95
from fewshot.methods.base import MetricMethod
from fewshot.recipes import get_recipe
from fewshot.training.checkpoint import load_model


@torch.no_grad()
def view_features(model: MetricMethod, dataset: FewShotDataset, views: int) -> torch.Tensor:
    """``[V, n, D]``: every image's embedding under view 0 (itself) and ``views - 1`` shared seeded transforms."""
    images = dataset.load_many(range(len(dataset)))
    generator = torch.Generator().manual_seed(0)
    out = [model.embed(images)]
    for _ in range(views - 1):
        out.append(model.embed(augment(images, model.test_augment, generator, shared=True)))
    return torch.stack(out).float()


def score(logits: torch.Tensor, labels: torch.Tensor) -> str:
    mean, ci = mean_and_ci95((logits.argmax(-1) == labels).float().mean(1).tolist())
    return f"{100 * mean:.1f} ± {100 * ci:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--val", default="Sanskrit")
    parser.add_argument("--root", default="../shared/data/omniglot")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--views", type=int, default=64)
    parser.add_argument("--test-augment", help="views' augmentation (default: the checkpoint's test augmentation)")
    args = parser.parse_args()
    torch.manual_seed(0)

    settings = {**TRAIN_DEFAULTS, **get_recipe("omniglot-protonet"), "root": args.root, "final": False,
                "holdout_alphabets": "Korean,Balinese", "val_alphabets": args.val}
    train, val = prepare_training_data(settings)
    assert val is not None
    model, _ = load_model(args.checkpoint, test_views=1)
    model.eval()
    if args.test_augment:
        model.set_test_views(1, args.test_augment)
    print(f"{args.checkpoint} on {args.val}: {args.episodes} tasks 20-way 1-shot within, 5 queries; test augment "
          f"{model.test_augment.to_string()}")
    feats = view_features(model, val, args.views)  # [V, n, D]
    specs = TaskSampler(val, 20, 1, 5, args.episodes, seed=1, within_group=True).specs()
    support = torch.as_tensor(np.stack([s.support.reshape(-1) for s in specs]))  # [E, 20]
    query = torch.as_tensor(np.stack([s.query.reshape(-1) for s in specs]))  # [E, 100]
    labels = torch.arange(20).repeat_interleave(5).expand(len(specs), -1)

    for v in (1, 16, args.views):
        mean = feats[:v].mean(0)
        print(f"mean-of-{v}: {score(-torch.cdist(mean[query], mean[support]) ** 2, labels)}")
    v = 16
    mean = feats[:v].mean(0)
    q, c = mean[query], mean[support]  # [E, 100, D], [E, 20, D]
    spread = (feats[:v, :][:, support] - c[None]).pow(2).mean((0, 2))  # [E, D] pooled over views and classes
    for shrink in (0.5, 1.0):
        var = spread + shrink * spread.mean(-1, keepdim=True)
        logits = -((q[:, :, None] - c[:, None]) ** 2 / var[:, None, None]).sum(-1)
        print(f"diag-var (16 views, shrink {shrink}): {score(logits, labels)}")

    with torch.no_grad():
        train_feats = embed_dataset(model, train, torch.device("cpu"))
    classes = torch.as_tensor(train.item_classes)
    sums = torch.zeros(int(classes.max()) + 1, train_feats.shape[1]).index_add_(0, classes, train_feats)
    centred = train_feats - (sums / torch.bincount(classes).clamp(min=1)[:, None].float())[classes]
    within = centred.T @ centred / len(centred)
    for shrink in (0.1, 0.5):
        cov = (1 - shrink) * within + shrink * torch.diag(torch.diag(within))
        evals, evecs = torch.linalg.eigh(cov)
        whiten = evecs @ torch.diag(evals.clamp(min=1e-6).rsqrt()) @ evecs.T
        wq, wc = q @ whiten, c @ whiten
        print(f"lda (shrink {shrink}): {score(-torch.cdist(wq, wc) ** 2, labels)}")

    pair = torch.stack([torch.cdist(feats[i][query], feats[:v][:, support].flatten(1, 2)
                                    .view(v, len(specs), 20, -1).permute(1, 0, 2, 3).flatten(1, 2)) ** 2
                        for i in range(v)])  # [V query views, E, 100, V support views * 20]
    pair = pair.view(v, len(specs), 100, v, 20)
    chamfer = 0.5 * (pair.amin(3).mean(0) + pair.amin(0).mean(2))
    print(f"chamfer (16 views): {score(-chamfer, labels)}")

    view_support = feats[:v][:, support].permute(1, 0, 2, 3).reshape(len(specs), -1, feats.shape[-1])  # [E, V*20, D]
    view_labels = torch.arange(20).repeat(v).expand(len(specs), -1)
    for steps, lr, prior in ((20, 0.01, 0.0), (50, 0.01, 0.1), (50, 0.003, 0.0)):
        weight = (2 * c).clone().requires_grad_()
        bias = (-c.pow(2).sum(-1)).clone().requires_grad_()
        start_w, start_b = weight.detach().clone(), bias.detach().clone()
        optimizer = torch.optim.Adam([weight, bias], lr=lr)
        for _ in range(steps):
            logits = view_support @ weight.transpose(1, 2) + bias[:, None]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 20), view_labels.reshape(-1))
            loss = loss + prior * ((weight - start_w).pow(2).sum() + (bias - start_b).pow(2).sum()) / len(specs)
            optimizer.zero_grad()
            (loss * len(specs)).backward()
            optimizer.step()
        with torch.no_grad():
            logits = q @ weight.transpose(1, 2) + bias[:, None]
        print(f"head ({steps} Adam steps, lr {lr}, prior {prior}): {score(logits, labels)}")


if __name__ == "__main__":
    main()
