"""Training speed of batch norm with the support set's statistics: native kernels against plain tensor operations.

MAML-family methods normalise the queries with the support set's batch statistics (``TaskBatchNorm`` with
``statistics_rows``). Since session 10 that goes through the native batch-norm kernels plus the statistics' share of
the gradient (``_RowStatisticsNorm``); before, through plain tensor operations, whose backward of the slice
``x[:rows]`` fills and adds a gradient of the whole batch. This script times optimizer steps of a recipe's trainer
with each, interleaved in blocks so that machine noise hits both alike (numerical agreement is tested in
``tests/test_maml.py``):

    python benchmarks/support_statistics_bn.py [--recipe omniglot-protomaml] [--rounds 4] [--block 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from fewshot.commands import build_train_config, prepare_training_data, resolve_train_settings
from fewshot.methods import inner_loop
from fewshot.training.trainer import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="../shared/data/omniglot")
    parser.add_argument("--recipe", default="omniglot-protomaml")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--block", type=int, default=5, help="optimizer steps per side and round")
    args = parser.parse_args()
    settings = resolve_train_settings(argparse.Namespace(recipe=args.recipe, root=args.root, final=True))
    settings.update(root=args.root, final=True)
    train, val = prepare_training_data(settings)
    trainer = Trainer(build_train_config(settings, train), train, val, tempfile.mkdtemp())
    native = inner_loop._RowStatisticsNorm.apply
    sides = {"native kernels": native, "plain operations": inner_loop.normalize_with_row_statistics}
    seconds = dict.fromkeys(sides, 0.0)
    episode = 0
    for _ in range(2):  # warm-up
        trainer.step(episode, 1e-3)
        episode += 1
    try:
        for _ in range(args.rounds):
            for name, apply in sides.items():
                inner_loop._RowStatisticsNorm.apply = apply
                started = time.perf_counter()
                for _ in range(args.block):
                    trainer.step(episode, 1e-3)
                    episode += 1
                seconds[name] += time.perf_counter() - started
    finally:
        inner_loop._RowStatisticsNorm.apply = native
    steps = args.rounds * args.block
    for name, total in seconds.items():
        print(f"{args.recipe}, {name}: {1000 * total / steps:.0f} ms per optimizer step")
    print(f"ratio: {seconds['plain operations'] / seconds['native kernels']:.2f}")


if __name__ == "__main__":
    main()
