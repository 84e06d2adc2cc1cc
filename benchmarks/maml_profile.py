"""Where second-order MAML spends CPU time, in the configuration of ``bench_maml_vs_higher.py``.

Profiles one meta-batch of our loop path (``torch.profiler``, top operators by self time), then times side by side,
in interleaved rounds, the loop path with the native batch norm or with batch norm written in plain tensor
operations, each with contiguous or channels-last memory (fp32):

    python benchmarks/maml_profile.py [--root ../shared/data/omniglot] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_maml_vs_higher import META_BATCH, initial_models, meta_batches, our_side

from fewshot.methods.inner_loop import TaskBatchNorm


def side(composite: bool, channels_last: bool):
    model, _ = initial_models(torch.device("cpu"))
    for layer in model.modules():
        if isinstance(layer, TaskBatchNorm):
            layer.composite = composite
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return our_side(model, vectorize=False, workers=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="../shared/data/omniglot")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    batches = meta_batches(Path(args.root), 3, torch.device("cpu"))

    step = side(composite=False, channels_last=False)
    step(batches[0])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batches[1])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    sides = {f"batch norm {'composite' if c else 'native'}, {'channels-last' if cl else 'contiguous'}": side(c, cl)
             for c in (False, True) for cl in (False, True)}
    seconds = dict.fromkeys(sides, 0.0)
    for step in sides.values():
        step(batches[0])
    for _ in range(args.rounds):
        for name, step in sides.items():
            start = time.perf_counter()
            step(batches[1])
            step(batches[2])
            seconds[name] += time.perf_counter() - start
    for name, total in seconds.items():
        print(f"{name}: {2 * META_BATCH * args.rounds / total:.2f} tasks/s")


if __name__ == "__main__":
    main()
