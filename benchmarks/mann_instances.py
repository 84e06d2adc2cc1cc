"""MANN per-instance accuracy on held-out Omniglot alphabets, beside Santoro et al.'s published figures.

Trains the ``omniglot-mann`` recipe (5-class sequences, 10 instances per class) on ``minimal`` without the
Korean and Balinese alphabets (validation: Early_Aramaic) within a time budget, then scores 1000 seeded
5-class sequences of 10 instances drawn from Korean + Balinese characters never seen in training.

The budget is shared: the first ``--pretrain`` seconds (default 180) train the MANN's encoder (Conv-4 of 32
channels, 20x20 images) as a ProtoNet with ``omniglot-protonet``'s training, on the same alphabets, and the MANN then
starts from that encoder (``fewshot train --init``) for the rest of the budget. On Early_Aramaic validation that beat
the recipe alone for 15 minutes with both seeds tried (docs/results.md, "Session 18"); ``--pretrain 0`` trains the
recipe alone.

    OMP_NUM_THREADS=1 python benchmarks/mann_instances.py --root ../shared/data/omniglot --budget 900 \\
        [--pretrain 180] [--seed 0] --out runs/mann
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# Santoro et al. (2016), Table 1, MANN (LSTM controller), Omniglot, 5 classes: accuracy (%) by instance.
PUBLISHED = {1: 36.4, 2: 82.8, 3: 91.0, 4: 92.6, 5: 94.9, 10: 98.1}


def train(arguments: list[str], run: Path, common: list[str]) -> None:
    if not (run / "best.pt").is_file():
        subprocess.run(["fewshot", "train", *arguments, *common, "--out", str(run), "--quiet"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="../shared/data/omniglot")
    parser.add_argument("--budget", type=float, default=900, help="training seconds, pre-training included")
    parser.add_argument("--pretrain", type=float, default=180,
                        help="seconds of the budget that pre-train the encoder (0: the recipe alone)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=1000, help="evaluation sequences")
    parser.add_argument("--out", default="runs/mann")
    args = parser.parse_args()
    if not 0 <= args.pretrain < args.budget:
        parser.error(f"--pretrain must lie in [0, --budget) (got {args.pretrain} of {args.budget})")
    run = Path(args.out)
    common = ["--root", args.root, "--split", "minimal", "--holdout-alphabets", "Korean,Balinese",
              "--val-alphabets", "Early_Aramaic", "--seed", str(args.seed)]
    init = []
    if args.pretrain:
        encoder = run.with_name(run.name + "_encoder")
        train(["--recipe", "omniglot-protonet", "--backbone-options", "hidden=32", "--image-size", "20",
               "--time-budget", str(args.pretrain)], encoder, common)
        init = ["--init", str(encoder)]
    train(["--recipe", "omniglot-mann", *init, "--time-budget", str(args.budget - args.pretrain)], run, common)
    result = subprocess.run(
        ["fewshot", "evaluate", "--checkpoint", str(run), "--dataset", "omniglot", "--root", args.root, "--split",
         "minimal", "--alphabets", "Korean,Balinese", "--ways", "5", "--instances", "10", "--episodes",
         str(args.episodes), "--seed", "0", "--json"], check=True, capture_output=True, text=True)
    ours = json.loads(result.stdout)
    last = (run / "metrics.csv").read_text().strip().splitlines()[-1].split(",")
    pretrained = f"{args.pretrain / 60:.1f} min of encoder pre-training, then " if args.pretrain else ""
    print(f"MANN, 5 classes x 10 instances, {ours['episodes']} sequences from held-out alphabets "
          f"(Korean, Balinese); seed {args.seed}; {pretrained}trained {float(last[1]) / 60:.1f} min, {last[0]} "
          "batches of 16 sequences")
    print("| instance | ours (%) | Santoro et al. 2016 (%, published) |")
    print("|---|---|---|")
    for k in (1, 2, 3, 4, 5, 10):
        accuracy, ci95 = ours["accuracy"][str(k)], ours["ci95"][str(k)]
        print(f"| {k} | {100 * accuracy:.1f} ± {100 * ci95:.1f} | {PUBLISHED[k]} |")
    print("Published: full Omniglot background set (964 classes + rotations), 100,000 episodes, raw pixels; "
          "ours: 5 alphabets of `minimal`, the time budget above, a Conv-4 encoder.", file=sys.stderr)


if __name__ == "__main__":
    main()
