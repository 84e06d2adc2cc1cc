"""Probe: variants of the transductive refinement on a metric checkpoint, per alphabet, on cached features.

Each alphabet's features (the checkpoint's own test views) are computed once; the same seeded tasks as
`fewshot evaluate --ways 20 --shots 1 --queries 1 --within-alphabet --seed 0` draws are then scored:

- ``inductive``: each query on its own;
- ``T<t>``: soft k-means (the model's ``classify_task``, 10 steps) at temperature t;
- ``T<t> balance<b>``: the same with the queries' weights balanced over the classes by b Sinkhorn iterations
  (``--transductive-balance``: the prior that a task's queries are spread evenly over its classes);
- ``... assigned`` (``--assign``): the same final logits, decoded as a one-to-one assignment of the queries to the
  classes (the Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``) rather than each query's argmax: the
  hard form of the balance prior, for tasks known to hold exactly one query per class (Lake's runs);
- ``shift T<t>``: each query first moved by the difference between the mean support and the mean query
  feature (the cross-class bias of BD-CSPN, Liu et al. 2020), then soft k-means.

With ``--steps 0`` a metric method's ``T<t> balance<b>`` is the balanced prediction alone (no refinement). Any
other method (MAML, Meta-SGD, ANIL, Proto-MAML) adapts to each task once; its variants are ``inductive`` and the
balanced prediction ``T<t> balance<b>`` of those logits (``FewShotMethod.balance_prediction``).

Choose settings on each fold's validation alphabet, read them on its held-out ones.

    python benchmarks/transductive_probe.py runs/folds29/protonet_F1 --alphabets Early_Aramaic,Balinese,Korean \
        --temperatures 0.25,0.5,1,1.5 --balances 0,3,10
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from fewshot.data import TaskSampler, load_dataset, split_by_groups
from fewshot.evaluation.evaluate import embed_dataset, episode_logits
from fewshot.evaluation.metrics import mean_and_ci95
from fewshot.methods import MetricMethod
from fewshot.training.checkpoint import load_model
from fewshot.utils import default_precision


def metric_logits(model: MetricMethod, support: torch.Tensor, query: torch.Tensor, steps: int,
                  temperature: float, balance: int) -> torch.Tensor:
    """Logits ``[E, N, N]`` of 1-shot tasks: ``support [E, N, ...]`` (class i at row i), ``query [E, N, ...]`` (one
    query per class, in class order), after ``steps`` refinements (0 with a balance: the balanced prediction)."""
    model.set_transductive_steps(steps, temperature, balance)
    labels = torch.arange(support.shape[1])
    if model.batched_classify:
        return model.classify_task(support, labels.expand(len(support), -1), query)
    return torch.stack([model.classify_task(s, labels, q) for s, q in zip(support, query, strict=True)])


def accuracies(logits: torch.Tensor, assign: bool = False) -> list[float]:
    """Accuracy of each task's logits ``[E, N, N]`` (query i of class i); with ``assign``, of the one-to-one
    assignment of the queries to the classes that maximises the summed logits."""
    ways = logits.shape[-1]
    if assign:
        return [float(np.mean(linear_sum_assignment(task.float().numpy(), maximize=True)[1] == np.arange(ways)))
                for task in logits]
    return (logits.argmax(-1) == torch.arange(ways)).float().mean(-1).tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--alphabets", required=True)
    p.add_argument("--root", default="../shared/data/omniglot")
    p.add_argument("--ways", type=int, default=20)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=10, help="refinement steps of a metric method (0: the balanced "
                   "prediction alone)")
    p.add_argument("--temperatures", default="0.5,1,1.5,3")
    p.add_argument("--balances", default="0,3,10", help="Sinkhorn iterations (0: not balanced)")
    p.add_argument("--shift", action="store_true", help="also the shifted queries, unbalanced")
    p.add_argument("--assign", action="store_true", help="also every variant decoded by one-to-one assignment")
    args = p.parse_args()
    torch.set_grad_enabled(False)
    model, spec = load_model(args.checkpoint, transductive_steps=0)
    data = load_dataset("omniglot", args.root, "minimal", spec.image_shape[-1])
    precision = default_precision(torch.device("cpu"))
    temperatures = [float(t) for t in args.temperatures.split(",")]
    balances = [int(b) for b in args.balances.split(",")]
    summary: dict[str, dict[str, float]] = {}
    for alphabet in args.alphabets.split(","):
        test = split_by_groups(data, [alphabet])[1]
        specs = TaskSampler(test, args.ways, 1, 1, args.episodes, 0, within_group=True).specs()
        variants: dict[str, torch.Tensor] = {}
        if isinstance(model, MetricMethod):
            features = embed_dataset(model, test, torch.device("cpu"), precision)
            support = features[torch.as_tensor(np.stack([s.support.reshape(-1) for s in specs]))]  # [E, N, ...]
            query = features[torch.as_tensor(np.stack([s.query.reshape(-1) for s in specs]))]  # [E, N, ...]
            variants["inductive"] = metric_logits(model, support, query, 0, 1.0, 0)
            for t in temperatures:
                for balance in balances:
                    if args.steps or balance:
                        variants[f"T{t:g}" + (f" balance{balance}" if balance else "")] = metric_logits(
                            model, support, query, args.steps, t, balance)
                if args.shift:
                    shifted = query + support.mean(1, keepdim=True) - query.mean(1, keepdim=True)
                    variants[f"shift T{t:g}"] = metric_logits(model, support, shifted, args.steps, t, 0)
        else:  # adapted task by task once; the balanced prediction is a function of the logits
            model.set_transductive_steps(0, 1.0, 0)  # the last alphabet's last variant must not stay on
            logits = torch.cat(list(episode_logits(model, test, specs, "cpu", precision, progress=True)))
            variants["inductive"] = logits
            for t in temperatures:
                for balance in (b for b in balances if b):
                    model.set_transductive_steps(0, t, balance)
                    variants[f"T{t:g} balance{balance}"] = model.balance_prediction(logits)
        summary[alphabet] = {}
        for name, logits in variants.items():
            for assign in (False, True) if args.assign else (False,):
                label = name + (" assigned" if assign else "")
                mean, ci = mean_and_ci95(accuracies(logits, assign))
                summary[alphabet][label] = round(100 * mean, 2)
                print(f"{alphabet:20s} {label:24s} {100 * mean:5.1f} ± {100 * ci:.1f}", flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
