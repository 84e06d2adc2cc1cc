"""Probe: second-order MAML with the meta-batch split across CPU threads, against higher and our loop path.

The configuration of ``bench_maml_vs_higher.py`` (Conv-4, 5-way 1-shot, meta-batch 8, 5 inner steps). The
convolutions run near the core's peak (about 110 GFLOP/s on one core here), but two intra-op threads speed the
whole meta-step up by only about 1.5x: batch norm, pooling and the element-wise work of these small batches
barely parallelise. So this probe gives each of two worker threads half of the meta-batch and one intra-op thread.

``functional_call`` swaps a module's attributes while it runs, so two threads cannot adapt through one module at
once: each worker uses its own copy of the model, called with ``functional_call`` on the shared parameters, so the
meta-gradients reach the one set of parameters. Side by side in interleaved rounds:

* ``higher``: its ``innerloop_ctx`` pattern, 2 intra-op threads (as in the benchmark);
* ``ours (loop)``: our default CPU path, 2 intra-op threads;
* ``ours (2 workers)``: the meta-batch split over two threads of one intra-op thread each.

Then the split's meta-gradient against the loop's in float64 (they must agree to rounding).

    python benchmarks/maml_threads_probe.py [--root ../shared/data/omniglot] [--rounds 4]
"""

from __future__ import annotations

import argparse
import copy
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_maml_vs_higher import META_BATCH, OUTER_LR, build_side, initial_models, meta_batches

from fewshot.data import Task
from fewshot.methods.maml import MAML

WORKERS = 2


class _TaskLossOf(nn.Module):
    """``task -> query loss`` of a private copy of the model, so that ``functional_call`` can give it shared weights."""

    def __init__(self, model: MAML) -> None:
        super().__init__()
        self.model = copy.deepcopy(model)

    def forward(self, task: Task) -> torch.Tensor:
        return self.model.loss(task)[0]


def split_gradients(model: MAML, pool: ThreadPoolExecutor) -> Callable[[list[Task]], list[torch.Tensor]]:
    """A function from a meta-batch to the meta-gradient of its mean query loss, computed by ``WORKERS`` threads."""
    parameters = {f"model.{name}": p for name, p in model.named_parameters() if p.requires_grad}
    local = threading.local()

    def part(tasks: list[Task], count: int) -> list[torch.Tensor]:
        if not hasattr(local, "replica"):
            local.replica = _TaskLossOf(model)
        total = [torch.zeros_like(p) for p in parameters.values()]
        for task in tasks:
            loss = torch.func.functional_call(local.replica, parameters, (task,))
            grads = torch.autograd.grad(loss / count, list(parameters.values()))
            total = [t + g for t, g in zip(total, grads, strict=True)]
        return total

    def gradients(tasks: list[Task]) -> list[torch.Tensor]:
        parts = pool.map(part, [tasks[i::WORKERS] for i in range(WORKERS)], [len(tasks)] * WORKERS)
        return [sum(grads) for grads in zip(*parts, strict=True)]

    return gradients


def split_side(pool: ThreadPoolExecutor) -> Callable[[list[Task]], None]:
    model, _ = initial_models(torch.device("cpu"))
    model.train()
    gradients = split_gradients(model, pool)
    outer = torch.optim.Adam(model.parameters(), lr=OUTER_LR)

    def step(tasks: list[Task]) -> None:
        for p, g in zip((p for p in model.parameters() if p.requires_grad), gradients(tasks), strict=True):
            p.grad = g
        outer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("../shared/data/omniglot"))
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(2)
    device = torch.device("cpu")
    batches = meta_batches(args.root, 2 * args.rounds + 2, device)
    pool = ThreadPoolExecutor(WORKERS, initializer=torch.set_num_threads, initargs=(1,))
    sides = {"higher": build_side("higher", device), "ours (loop)": build_side("ours (loop)", device),
             "ours (2 workers)": split_side(pool)}
    for step in sides.values():
        step(batches[0])
    seconds = dict.fromkeys(sides, 0.0)
    names = list(sides)
    for rnd in range(args.rounds):
        for name in names[rnd % len(names):] + names[: rnd % len(names)]:
            started = time.perf_counter()
            for batch in batches[1 + 2 * rnd: 3 + 2 * rnd]:
                sides[name](batch)
            seconds[name] += time.perf_counter() - started
    rates = {name: 2 * args.rounds * META_BATCH / s for name, s in seconds.items()}
    for name, rate in rates.items():
        print(f"  {name:<17} {rate:6.2f} tasks/s   {rate / rates['higher']:.2f}x higher")

    model, _ = initial_models(device)
    model = model.double().train()
    tasks = [task.to(device, torch.float64) for task in batches[-1]]
    parameters = [p for p in model.parameters() if p.requires_grad]
    serial = torch.autograd.grad(torch.stack([model.loss(task)[0] for task in tasks]).mean(), parameters)
    split = split_gradients(model, pool)(tasks)
    difference = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(split, serial, strict=True))
    print(f"meta-gradient, 2 workers vs one loop (float64): largest difference {difference:.1e} of the largest entry")


if __name__ == "__main__":
    main()
