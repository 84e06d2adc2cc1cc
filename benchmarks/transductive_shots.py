"""How the transductive temperature should change with the number of shots, on the folds' validation alphabets.

The temperature of a metric recipe was chosen on 1-shot tasks. ``classify_task`` divides it by the shots per class
K; this script scores, on each fold's validation alphabet (never a held-out one), the fold checkpoints of
``benchmarks/alphabet_folds.sh`` inductively and with 10 steps at several effective temperatures for the same
seeded K-shot tasks (K = 5, 2 and 3):

- ``T``: the recipe's temperature unchanged at K shots (the rule until session 20);
- ``T/2``: halved;
- ``T/K``: divided by the shots (the rule now).

Since the model divides by K itself, an effective temperature ``t`` is set as ``t * K``. Prints one line per fold
and setting, then the means over folds.

    python benchmarks/transductive_shots.py runs/folds siamese-w32 0.1      # RUN_PREFIX TEMPERATURE
"""

from __future__ import annotations

import argparse
import statistics

import torch

from fewshot.data import TaskSampler, load_dataset
from fewshot.data.splits import select_groups
from fewshot.evaluation.evaluate import evaluate
from fewshot.training.checkpoint import load_model

VALIDATION = {"F1": "Early_Aramaic", "F2": "Sanskrit", "F3": "Japanese_(katakana)", "F4": "Sanskrit"}
SETTINGS = ((20, 5, 5), (5, 5, 5), (20, 5, 1), (20, 2, 5), (20, 3, 5))  # ways, shots, queries per class


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folds", help="the OUT folder of alphabet_folds.sh")
    p.add_argument("prefix", help="run folders OUT/PREFIX_F1 ... OUT/PREFIX_F4")
    p.add_argument("temperature", type=float, help="the recipe's (1-shot) transductive temperature")
    p.add_argument("--root", default="../shared/data/omniglot")
    p.add_argument("--episodes", type=int, default=500)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    variants = {"inductive": None, "T": 1.0, "T/2": 0.5, "T/K": None}
    scores: dict[tuple, list[float]] = {}
    for fold, alphabet in VALIDATION.items():
        model, _ = load_model(f"{args.folds}/{args.prefix}_{fold}", "cpu")
        balance = model.transductive_balance  # as saved, for the steps; inductive means none
        data = select_groups(load_dataset("omniglot", args.root, "minimal", 28, seed=0), [alphabet])
        for ways, shots, queries in SETTINGS:
            specs = TaskSampler(data, ways, shots, queries, args.episodes, seed=1, within_group=True).specs()
            line = []
            for name, factor in variants.items():
                # the effective temperature is the model's / K: T/K needs T, and T * factor needs T * factor * K
                effective = args.temperature * (factor * shots if factor is not None else 1.0)
                inductive = name == "inductive"
                model.set_transductive_steps(0 if inductive else 10, effective, 0 if inductive else balance)
                accuracy = evaluate(model, data, 0, 0, specs=specs, precision="bf16", confusions=0).accuracy
                scores.setdefault((ways, shots, queries, name), []).append(100 * accuracy)
                line.append(f"{name} {100 * accuracy:.1f}")
            print(f"{fold} {alphabet} {ways}-way {shots}-shot {queries} queries: " + ", ".join(line), flush=True)
    print(f"mean over the {len(VALIDATION)} folds' validation alphabets ({args.prefix}, T = {args.temperature:g}):")
    for ways, shots, queries in SETTINGS:
        means = ", ".join(f"{name} {statistics.mean(scores[(ways, shots, queries, name)]):.2f}" for name in variants)
        print(f"  {ways}-way {shots}-shot {queries} queries: {means}")


if __name__ == "__main__":
    main()
