"""Evaluation speed of saved models with channels-last convolution weights (what ``load_model`` does) against the
channels-first layout they had before, on the same seeded episodes.

PyTorch's CPU max-pooling of channels-first maps is several times slower than of channels-last ones, and the
trainer already trains in channels-last; a loaded model now runs the same way. For each run folder given, the
script loads the model both ways, evaluates the same seeded within-alphabet episodes of one held-out alphabet with
each (interleaved, the order swapped in the second round), and prints seconds of each, the speed-up, both
accuracies, the argmax agreement of the two and the largest logit difference relative to the largest logit.
Each model evaluates with its saved settings (test views, transductive inference), as ``fewshot evaluate`` does.

    python benchmarks/inference_memory_format.py RUN [RUN ...] [--alphabet Korean] [--episodes 300] \\
        [--precision auto|fp32|bf16] [--threads 2]

Any trained run folders will do (their held-out alphabet should be the one named); docs/results.md, "Session 39",
gives the runs behind its figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fewshot.data import FewShotDataset, TaskSampler, TaskSpec, load_dataset, split_by_groups
from fewshot.evaluation.evaluate import episode_logits, query_labels
from fewshot.methods import FewShotMethod, MetricMethod
from fewshot.training.checkpoint import load_model
from fewshot.utils import default_precision

LAYOUTS = ("channels-first", "channels-last")


def timed_logits(model: FewShotMethod, dataset: FewShotDataset, specs: list[TaskSpec], precision: str
                 ) -> tuple[torch.Tensor, float]:
    """Logits ``[E, M, N]`` of the episodes ``specs`` on the CPU, and the seconds they took."""
    started = time.perf_counter()
    logits = torch.cat(list(episode_logits(model, dataset, specs, "cpu", precision)))
    return logits, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--root", default="../shared/data/omniglot")
    parser.add_argument("--alphabet", default="Korean")
    parser.add_argument("--episodes", type=int, default=300, help="per run; a tenth of it for per-task methods")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    precision = default_precision(device) if args.precision == "auto" else args.precision
    print(f"{args.threads} threads, precision {precision}, 1-shot tasks within {args.alphabet}, one query per class; "
          "seconds of each layout, mean of two rounds")
    print(f"{'run':<28} {'method':<12} {'ways':>4} {'episodes':>8} {'first s':>8} {'last s':>8} {'speed-up':>8} "
          f"{'acc first':>9} {'acc last':>9} {'agree':>7} {'max diff':>9}")
    for run in args.runs:
        models = {layout: load_model(run, device, channels_last=layout == "channels-last") for layout in LAYOUTS}
        model, spec = models["channels-first"]
        dataset = load_dataset("omniglot", root=args.root, split="minimal", image_size=spec.image_shape[1])
        _, test = split_by_groups(dataset, [args.alphabet])
        ways = min(20, getattr(model, "ways", 20))
        episodes = args.episodes if isinstance(model, MetricMethod) else max(args.episodes // 10, 10)
        specs = TaskSampler(test, ways, 1, 1, episodes, seed=0, within_group=True).specs()
        labels = torch.as_tensor(query_labels(specs)[0]).expand(len(specs), -1)

        timed_logits(models["channels-last"][0], test, specs, precision)  # warm-up: one-time kernel choices
        seconds = dict.fromkeys(LAYOUTS, 0.0)
        logits = {}
        for order in (LAYOUTS, LAYOUTS[::-1]):
            for layout in order:
                logits[layout], took = timed_logits(models[layout][0], test, specs, precision)
                seconds[layout] += took
        first, last = logits["channels-first"], logits["channels-last"]
        accuracy = {layout: float((logits[layout].argmax(-1) == labels).float().mean()) for layout in LAYOUTS}
        agree = float((first.argmax(-1) == last.argmax(-1)).float().mean())
        diff = float((first - last).abs().max() / first.abs().max())
        print(f"{run.name[:28]:<28} {spec.method:<12} {ways:>4} {episodes:>8} {seconds['channels-first'] / 2:>8.2f} "
              f"{seconds['channels-last'] / 2:>8.2f} {seconds['channels-first'] / seconds['channels-last']:>7.2f}x "
              f"{accuracy['channels-first']:>9.4f} {accuracy['channels-last']:>9.4f} {agree:>7.4f} {diff:>9.1e}",
              flush=True)


if __name__ == "__main__":
    main()
