"""Which transforms should a metric checkpoint's test views use? Validation alphabet only.

Scores a checkpoint trained on the sweep's split (`recipe_sweep.sh`) on the same 1000 seeded 20-way 1-shot
within-alphabet tasks of its validation alphabet (5 queries per class, ``--seed 1``) with no test views and with
``--views`` views drawn from each named augmentation:

    python benchmarks/test_view_probe.py runs/sweep_sanskrit/D_elastic --val Sanskrit
    python benchmarks/test_view_probe.py runs/sweep/D_elastic --val Early_Aramaic --augments none,train-affine
"""

from __future__ import annotations

import argparse

from fewshot.commands import TRAIN_DEFAULTS, prepare_training_data
from fewshot.evaluation.evaluate import evaluate
from fewshot.training.checkpoint import load_model

TRAIN_AFFINE = "rotation=10,shear=5,scale=0.9:1.1,shift=0.08"
AUGMENTS = {
    "none": "",
    "default": "rotation=8,shear=5,scale=0.92:1.08,shift=0.05",  # MetricMethod.test_augment
    "half-default": "rotation=4,shear=2.5,scale=0.96:1.04,shift=0.025",
    "default-no-shift": "rotation=8,shear=5,scale=0.92:1.08",
    "shift": "shift=0.05",
    "shift-0.08": "shift=0.08",
    "shift-0.12": "shift=0.12",
    "train-affine": TRAIN_AFFINE,  # the recipes' training augmentation without its elastic part
    "train-affine+elastic": TRAIN_AFFINE + ",elastic=1.5:4",  # the recipes' whole training augmentation
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--val", default="Sanskrit", help="the run's validation alphabet")
    parser.add_argument("--root", default="../shared/data/omniglot")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--augments", default=",".join(AUGMENTS), help=f"names among {', '.join(AUGMENTS)}")
    args = parser.parse_args()

    settings = {**TRAIN_DEFAULTS, "root": args.root, "split": "minimal", "holdout_alphabets": "Korean,Balinese",
                "val_alphabets": args.val}
    _, val = prepare_training_data(settings)
    assert val is not None
    for name in args.augments.split(","):
        model, _ = load_model(args.checkpoint, test_views=1)
        if AUGMENTS[name]:
            model.set_test_views(args.views, AUGMENTS[name])
        result = evaluate(model, val, ways=20, shots=1, queries=5, episodes=args.episodes, within_group=True, seed=1)
        views = args.views if AUGMENTS[name] else 1
        print(f"{args.checkpoint} {args.val} {name} ({views} views): "
              f"{100 * result.accuracy:.2f} ± {100 * result.ci95:.2f}%", flush=True)


if __name__ == "__main__":
    main()
