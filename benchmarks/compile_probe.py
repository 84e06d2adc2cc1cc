"""Does ``torch.compile`` speed up ProtoNet training on this CPU? Eager against compiled, bf16 and fp32.

One ProtoNet training step as the trainer takes it on the recipe's episodes (Conv-4, channels-last, 60-way
1-shot 5-query, 28x28, Adam), on random images: the backbone eager or wrapped in ``torch.compile`` (default
inductor backend), under bf16 autocast or in fp32. Prints the compile-and-warm-up time and episodes/s of each,
measured in interleaved rounds so machine noise hits all four alike.

    python benchmarks/compile_probe.py [--steps 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from fewshot.backbones import Conv4

WAYS, QUERIES = 60, 5


class Side:
    def __init__(self, compiled: bool, bf16: bool) -> None:
        torch.manual_seed(0)
        self.name = f"{'compiled' if compiled else 'eager'} {'bf16' if bf16 else 'fp32'}"
        self.net = Conv4(in_channels=1).to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.net) if compiled else self.net
        self.optimizer = torch.optim.Adam(self.net.parameters(), 1e-3)
        self.bf16 = bf16
        self.images = torch.rand(WAYS * (1 + QUERIES), 1, 28, 28).contiguous(memory_format=torch.channels_last)
        self.labels = torch.arange(WAYS).repeat_interleave(QUERIES)
        self.seconds = self.steps = 0.0

    def step(self) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            features = self.forward(self.images)
        features = features.float()
        logits = -torch.cdist(features[WAYS:], features[:WAYS]) ** 2
        loss = nn.functional.cross_entropy(logits, self.labels)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def timed(self, steps: int) -> None:
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self.seconds += time.perf_counter() - start
        self.steps += steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sides = [Side(compiled, bf16) for bf16 in (True, False) for compiled in (False, True)]
    for side in sides:
        start = time.perf_counter()
        for _ in range(3):
            side.step()
        print(f"{side.name}: compile and warm-up {time.perf_counter() - start:.1f} s", flush=True)
    for _ in range(args.rounds):
        for side in sides:
            side.timed(args.steps)
    for side in sides:
        print(f"{side.name}: {side.steps / side.seconds:.2f} episodes/s")


if __name__ == "__main__":
    main()
