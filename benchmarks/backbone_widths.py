"""Cost of one ProtoNet training step's backbone pass for Conv-4 widths and poolings, side by side.

Times the forward and backward of Conv-4 on one 60-way 1-shot 5-query batch (360 images, 28x28) with the
trainer's CPU speed options (bf16 autocast, channels-last), the variants interleaved so that a noisy machine
affects them alike, and prints the median milliseconds per step and the speed-up over the 64-channel Conv-4.

    python benchmarks/backbone_widths.py                 # the machine's threads
    python benchmarks/backbone_widths.py --threads 1     # as the recipe sweeps run (one thread per variant)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fewshot.backbones import make_backbone

VARIANTS: dict[str, dict] = {
    "64 (Conv-4 of the papers)": {},
    "64, average pooling": {"pooling": "avg"},
    "48": {"hidden": 48},
    "(32, 64, 64, 64): the omniglot-protonet recipe": {"hidden": (32, 64, 64, 64)},
    "(32, 64, 96, 128)": {"hidden": (32, 64, 96, 128)},
    "(24, 64, 64, 64)": {"hidden": (24, 64, 64, 64)},
    "(16, 64, 64, 64)": {"hidden": (16, 64, 64, 64)},
    "(16, 32, 64, 64)": {"hidden": (16, 32, 64, 64)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--images", type=int, default=360)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(args.images, 1, 28, 28).to(memory_format=torch.channels_last)
    models = {name: make_backbone("conv4", **options).to(memory_format=torch.channels_last)
              for name, options in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for repeat in range(args.repeats + 1):
        for name, model in models.items():
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                features = model(images)
            features.float().pow(2).mean().backward()
            if repeat:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    base = statistics.median(next(iter(times.values())))
    print(f"{torch.get_num_threads()} threads, {args.images} images of 28x28, forward + backward, bf16 autocast")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<50} {1000 * median:7.1f} ms   {base / median:4.2f}x")


if __name__ == "__main__":
    main()
