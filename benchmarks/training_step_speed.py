"""Two exact speed-ups of a ProtoNet training step, measured side by side: pooling before the ReLU, and glibc's heap.

* **Block order.** Conv-4 blocks run ``conv, batch norm, max-pool, ReLU`` instead of the papers' ``conv, batch norm,
  ReLU, max-pool``: the two commute, so outputs and gradients are the same (a test checks it), and the ReLU works on
  a quarter of the values. The usual order is rebuilt here from the same modules.
* **Allocator.** :func:`fewshot.utils.keep_freed_memory` (which the ``fewshot`` command calls) keeps the activations'
  freed pages in glibc's heap instead of handing them back to the kernel and faulting them in again next step. It
  changes the whole process, so each setting runs in processes of its own, alternating round by round.

Each process builds ``omniglot-protonet``'s trainer (60-way 1-shot 5-query, 28x28 Omniglot ``minimal``, Conv-4
(32, 64, 64, 64), channels-last) in the given precision and times ``Trainer.step`` for both block orders, in
interleaved blocks of steps on the same tasks. Prints episodes/s (median over rounds) of each combination and the
speed-up of each change.

    python benchmarks/training_step_speed.py                       # bf16 where the CPU has it, and fp32
    python benchmarks/training_step_speed.py --precision fp32 --threads 1 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ORDERS = ("pool, then ReLU (ours)", "ReLU, then pool (the papers)")


def child(args: argparse.Namespace) -> None:
    """One process: one allocator setting, one precision; both block orders timed in interleaved blocks."""
    import torch

    from fewshot.commands import TRAIN_DEFAULTS, build_train_config, prepare_training_data
    from fewshot.recipes import get_recipe
    from fewshot.training.trainer import Trainer
    from fewshot.utils import keep_freed_memory

    if args.child == "keep" and not keep_freed_memory():
        raise SystemExit("this C library has no mallopt: nothing to compare")
    torch.set_num_threads(args.threads)
    settings = {**TRAIN_DEFAULTS, **get_recipe("omniglot-protonet"), "root": args.root, "final": True,
                "precision": args.precision}
    train, _ = prepare_training_data(settings)
    trainers = {}
    for order in ORDERS:
        trainer = Trainer(build_train_config(settings, train), train, None, "unused")
        if order != ORDERS[0]:
            for block in trainer.model.backbone.blocks:
                block[2], block[3] = block[3], block[2]  # [conv, norm, relu, pool]
        trainers[order] = trainer
    rates: dict[str, list[float]] = {order: [] for order in ORDERS}
    for block in range(args.blocks + 1):  # the first block warms up and is not counted
        for order, trainer in trainers.items():
            started = time.perf_counter()
            for i in range(args.steps):
                trainer.step(block * args.steps + i, 1e-3)
            if block:
                rates[order].append(args.steps / (time.perf_counter() - started))
    print(json.dumps({order: statistics.median(r) for order, r in rates.items()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "omniglot"))
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32", "both"), default="both",
                        help="both: auto (bf16 where the CPU has it) and fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="processes per allocator setting and precision")
    parser.add_argument("--blocks", type=int, default=4, help="timed blocks of steps per order in a process")
    parser.add_argument("--steps", type=int, default=10, help="steps per block")
    parser.add_argument("--child", choices=("keep", "default"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from fewshot.utils import cpu_supports_bf16

    precisions = ["auto", "fp32"] if args.precision == "both" else [args.precision]
    print(f"{args.threads} threads, {args.rounds} rounds of {args.blocks} x {args.steps} steps per side")
    for precision in precisions:
        shown = "bf16" if precision == "auto" and cpu_supports_bf16() else "fp32" if precision == "auto" else precision
        rates: dict[tuple[str, str], list[float]] = {}
        for round_ in range(args.rounds):
            for allocator in ("keep", "default")[:: 1 if round_ % 2 == 0 else -1]:
                command = [sys.executable, __file__, "--child", allocator, "--precision", precision, "--root",
                           args.root, "--threads", str(args.threads), "--blocks", str(args.blocks),
                           "--steps", str(args.steps)]
                result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
                if result.returncode:
                    raise SystemExit(result.stderr.strip().splitlines()[-1])
                for order, rate in json.loads(result.stdout).items():
                    rates.setdefault((allocator, order), []).append(rate)
        median = {key: statistics.median(values) for key, values in rates.items()}
        print(f"\n{shown}: episodes/s (median over rounds)")
        for (allocator, order), rate in median.items():
            name = "heap kept (fewshot's)" if allocator == "keep" else "glibc's default"
            print(f"  {name:22} {order:30} {rate:6.2f}")
        base = median[("default", ORDERS[1])]
        print(f"  pool first, default allocator: {median[('default', ORDERS[0])] / base:.2f}x; "
              f"heap kept, usual order: {median[('keep', ORDERS[1])] / base:.2f}x; "
              f"both: {median[('keep', ORDERS[0])] / base:.2f}x")


if __name__ == "__main__":
    main()
