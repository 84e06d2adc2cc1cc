"""Training speed of our ProtoNet against easyfsl 1.5.0's ``PrototypicalNetworks``, on the same CPU and torch.

Both sides train the same Conv-4 (built from the same torch seed, so the initial weights are identical) on the
same preloaded Omniglot ``minimal`` tensors (242 classes, 28x28, ink = 1, read once by our reader), on 60-way
1-shot 5-query episodes, with Adam at lr 1e-3:

* easyfsl: its ``TaskSampler`` and ``episodic_collate_fn`` in a ``DataLoader`` (no workers), then its standard
  step: ``process_support_set``, ``model(query_images)``, cross-entropy, backward, Adam step.
* ours, fast: ``Trainer.step`` with the default CPU precision (``bf16`` where the CPU has native bfloat16) and
  channels-last memory format.
* ours, plain: ``Trainer.step`` in fp32 without channels-last, so the gain of the options is visible.

The sides are timed in interleaved blocks (order rotated every round) so machine noise hits all equally. The
script prints episodes/s of each and ``ratio: X`` (ours fast / easyfsl). It then checks the speed options
numerically against the plain path on one fixed task (exit status 1 if the argmax agreement is below 90% or the
relative logit difference above 5%), and times evaluation: one embedding pass over all 4840 images against
``evaluate`` on 10,000 20-way 1-shot episodes (which embeds once and classifies from the cached features).

easyfsl imports torchvision, which does not import beside the torch our main venv pins, so this runs in a venv
of its own where both libraries share one torch. Set-up and run, from the repository root::

    python3 -m venv /work/easyfsl-venv
    /work/easyfsl-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 easyfsl==1.5.0
    /work/easyfsl-venv/bin/pip install -e .
    /work/easyfsl-venv/bin/python benchmarks/bench_protonet_vs_easyfsl.py

Options: ``--root`` (Omniglot zips; default ``../shared/data/omniglot`` from the repository root),
``--episodes`` (timed episodes per side, 40), ``--block`` (episodes per interleaved block, 10), ``--warmup`` (3),
``--threads`` (2), ``--eval-episodes`` (10000).
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fewshot.backbones import Conv4
from fewshot.data import build_task
from fewshot.data.omniglot import Omniglot
from fewshot.evaluation.evaluate import embed_dataset, evaluate
from fewshot.training.checkpoint import ModelSpec
from fewshot.training.trainer import TrainConfig, Trainer
from fewshot.utils import autocast, cpu_supports_bf16, default_precision

REPO = Path(__file__).resolve().parent.parent
WAYS, SHOTS, QUERIES, LR, SEED = 60, 1, 5, 1e-3, 0
MAX_REL_DIFF, MIN_AGREEMENT = 0.05, 0.90


class PreloadedImages(Dataset):
    """The preloaded Omniglot tensors as ``(image, label)`` items, with the ``get_labels()`` easyfsl needs."""

    def __init__(self, images: torch.Tensor, labels: list[int]) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], self.labels[index]

    def get_labels(self) -> list[int]:
        return self.labels


def easyfsl_task_sampler() -> type:
    """easyfsl's ``TaskSampler``, able to start under torch >= 2.14.

    Its ``__init__`` calls ``Sampler.__init__(data_source=None)``, an argument torch has since dropped. A class
    that accepts it is put between the two in the MRO; easyfsl's own code (sampling, collate) runs unchanged.
    (Harmless on older torch, whose ``Sampler.__init__`` takes ``data_source=None``.)
    """
    from easyfsl.samplers import TaskSampler
    from torch.utils.data import Sampler

    class AcceptsDataSource(Sampler):
        def __init__(self, data_source: object = None) -> None:
            super().__init__()

    class CompatTaskSampler(TaskSampler, AcceptsDataSource):
        pass

    return CompatTaskSampler


def easyfsl_side(dataset: Omniglot, num_tasks: int) -> tuple[nn.Module, Callable[[int], None]]:
    """A function running ``n`` easyfsl training episodes (its sampler, collate, model and standard step)."""
    from easyfsl.methods import PrototypicalNetworks

    data = PreloadedImages(dataset.images, [int(c) for c in dataset.item_classes])
    sampler = easyfsl_task_sampler()(data, n_way=WAYS, n_shot=SHOTS, n_query=QUERIES, n_tasks=num_tasks)
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=sampler.episodic_collate_fn, num_workers=0)
    random.seed(SEED)  # easyfsl's sampler draws from Python's global random
    torch.manual_seed(SEED)  # the seed Trainer builds our model with: identical initial weights
    model = PrototypicalNetworks(Conv4(in_channels=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    criterion = nn.CrossEntropyLoss()
    model.train()
    episodes = iter(loader)

    def run(n: int) -> None:
        for _ in range(n):
            support_images, support_labels, query_images, query_labels, _ = next(episodes)
            optimizer.zero_grad()
            model.process_support_set(support_images, support_labels)
            scores = model(query_images)
            loss = criterion(scores, query_labels)
            loss.backward()
            optimizer.step()
            loss.item()

    return model, run


def our_side(
    dataset: Omniglot, precision: str, channels_last: bool, run_dir: Path
) -> tuple[Trainer, Callable[[int], None]]:
    config = TrainConfig(
        model=ModelSpec("protonet", "conv4", {}, {}, (1, 28, 28)), ways=WAYS, shots=SHOTS, queries=QUERIES,
        lr=LR, device="cpu", precision=precision, channels_last=channels_last, val_every=10**9, augment="none",
        seed=SEED,
    )
    trainer = Trainer(config, dataset, None, run_dir)
    counter = iter(range(10**9))

    def run(n: int) -> None:
        for _ in range(n):
            trainer.step(next(counter), LR)

    return trainer, run


def logits_of(model: nn.Module, task, precision: str, channels_last: bool) -> torch.Tensor:
    """Training-mode logits (BN on batch statistics, as in a training step) of a copy of ``model``."""
    model = copy.deepcopy(model).train()
    support, query = task.support_images, task.query_images
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        support = support.contiguous(memory_format=torch.channels_last)
        query = query.contiguous(memory_format=torch.channels_last)
    else:
        model = model.to(memory_format=torch.contiguous_format)
    with torch.no_grad(), autocast(torch.device("cpu"), precision):
        return model(support, task.support_labels, query).float()


def split_logits(model: nn.Module, task, precision: str) -> torch.Tensor:
    """As :func:`logits_of` with channels-last, but only the backbone under autocast, the distances in fp32."""
    model = copy.deepcopy(model).train().to(memory_format=torch.channels_last)
    images = torch.cat([task.support_images, task.query_images]).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        with autocast(torch.device("cpu"), precision):
            features = model.embed(images).float()
        n = task.support_images.shape[0]
        return model.classify(features[:n], task.support_labels, features[n:]).float()


def compare(name: str, fast: torch.Tensor, plain: torch.Tensor, gated: bool = True) -> bool:
    """Print and check ``fast`` logits against ``plain`` ones; True when within the limits."""
    diff = (fast - plain).abs()
    rel_scale = float(diff.max() / plain.abs().max())  # relative to the logit scale
    rel_elem = float((diff / plain.abs().clamp_min(1e-6)).max())  # element-wise (logits are -squared distances)
    agreement = float((fast.argmax(1) == plain.argmax(1)).float().mean())
    ok = agreement >= MIN_AGREEMENT and rel_scale <= MAX_REL_DIFF
    print(
        f"  {name:<42} max rel diff {rel_scale:.2e} (of max |logit|), {rel_elem:.2e} (element-wise); "
        f"argmax agreement {agreement:.1%} -> {('ok' if ok else 'FAIL') if gated else 'diagnosis, not gated'}"
    )
    return ok


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "omniglot")
    parser.add_argument("--episodes", type=int, default=40, help="timed training episodes per side")
    parser.add_argument("--block", type=int, default=10, help="episodes per interleaved timing block")
    parser.add_argument("--warmup", type=int, default=3, help="untimed episodes per side first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-episodes", type=int, default=10000)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import easyfsl  # noqa: F401  (fail early, before the data is read, when easyfsl is missing)

    dataset = Omniglot(args.root, "minimal")
    assert dataset.images is not None
    fast_precision = default_precision(torch.device("cpu"))
    print(f"torch {torch.__version__}, easyfsl {version('easyfsl')}, {args.threads} threads on {cpu_name()}, "
          f"CPU native bf16: {cpu_supports_bf16()}")
    print(f"data: Omniglot minimal, {len(dataset)} images {tuple(dataset.images.shape[1:])}, "
          f"{dataset.num_classes} classes; tasks {WAYS}-way {SHOTS}-shot {QUERIES}-query; Conv-4; Adam lr {LR}")
    print(f"ours fast: precision={fast_precision}, channels_last=True; ours plain: precision=fp32, "
          "channels_last=False")

    total = args.warmup + args.episodes
    with tempfile.TemporaryDirectory() as tmp:
        fast_trainer, ours_fast = our_side(dataset, fast_precision, True, Path(tmp) / "fast")
        plain_trainer, ours_plain = our_side(dataset, "fp32", False, Path(tmp) / "plain")
        their_model, theirs = easyfsl_side(dataset, total + 1)
        ours_state = plain_trainer.model.backbone.state_dict()
        same_init = all(torch.equal(v, ours_state[k]) for k, v in their_model.backbone.state_dict().items())
        print(f"identical initial Conv-4 weights on both sides: {same_init}")

        sides = {"easyfsl": theirs, "ours (fast)": ours_fast, "ours (plain fp32)": ours_plain}
        seconds = dict.fromkeys(sides, 0.0)
        counts = dict.fromkeys(sides, 0)
        round_rates: dict[str, list[float]] = {name: [] for name in sides}
        for run in sides.values():
            run(args.warmup)
        names = list(sides)
        load_before = os.getloadavg()[0]
        done = 0
        for rnd in range((args.episodes + args.block - 1) // args.block):
            n = min(args.block, args.episodes - done)
            for name in names[rnd % len(names):] + names[: rnd % len(names)]:  # rotate who goes first
                started = time.perf_counter()
                sides[name](n)
                elapsed = time.perf_counter() - started
                seconds[name] += elapsed
                counts[name] += n
                round_rates[name].append(n / elapsed)
            done += n

        load_after = os.getloadavg()[0]
        print(f"\ntraining speed (episodes/s, higher is better); load average {load_before:.1f} before, "
              f"{load_after:.1f} after timing on {os.cpu_count()} CPUs:")
        if load_after > args.threads + 0.75:
            print("  WARNING: other processes competed for the CPUs; the numbers are noisy, rerun on a quiet machine")
        rates = {name: counts[name] / seconds[name] for name in sides}
        for name in sides:
            print(f"  {name:<18} {rates[name]:7.2f} ep/s  ({counts[name]} episodes in {seconds[name]:.2f} s)")
        print(f"  options gain (ours fast / ours plain): {rates['ours (fast)'] / rates['ours (plain fp32)']:.2f}x")
        print(f"  plain loop vs easyfsl (ours plain / easyfsl): {rates['ours (plain fp32)'] / rates['easyfsl']:.2f}x")
        paired = sorted(f / e for f, e in zip(round_rates["ours (fast)"], round_rates["easyfsl"], strict=True))
        print(f"  per-round ratios ours fast / easyfsl: {' '.join(f'{r:.2f}' for r in paired)} "
              f"(median {paired[len(paired) // 2]:.2f}; a spread means machine noise)")
        ratio = rates["ours (fast)"] / rates["easyfsl"]
        print(f"ratio: {ratio:.2f}")
        print(f"target ours >= 1.5x easyfsl: {'met' if ratio >= 1.5 else 'NOT met'}")

        # -- numerical check of the speed options against the plain fp32 path ---------------------------
        print("\nnumerical check on one fixed 60-way task, trained weights, training-mode logits vs plain fp32:")
        model = copy.deepcopy(fast_trainer.model).float()
        task = build_task(dataset, fast_trainer.sampler.spec(10**6))
        plain = logits_of(model, task, "fp32", False)
        ok = compare("channels_last, fp32", logits_of(model, task, "fp32", True), plain)
        if fast_precision != "fp32":
            ok &= compare(f"{fast_precision}", logits_of(model, task, fast_precision, False), plain)
        ok &= compare(f"{fast_precision} + channels_last", logits_of(model, task, fast_precision, True), plain)
        if fast_precision != "fp32":  # diagnosis only: the same, with the distances outside autocast
            compare(f"{fast_precision} + channels_last, distances in fp32", split_logits(model, task, fast_precision),
                    plain, gated=False)

        # -- evaluation: one embedding pass against 10,000 episodes from cached features ---------------
        model = fast_trainer.model
        model.eval()
        embed_dataset(model, dataset, torch.device("cpu"), fast_precision)  # warm-up
        started = time.perf_counter()
        embed_dataset(model, dataset, torch.device("cpu"), fast_precision)
        embed_s = time.perf_counter() - started
        started = time.perf_counter()
        result = evaluate(model, dataset, 20, 1, queries=5, episodes=args.eval_episodes, within_group=False,
                          precision=fast_precision)
        eval_s = time.perf_counter() - started
        print(f"\nevaluation ({fast_precision}): one forward pass over {len(dataset)} images {embed_s:.2f} s; "
              f"{result.episodes} 20-way 1-shot 5-query episodes {eval_s:.2f} s "
              f"({eval_s / embed_s:.1f}x one pass, {result.episodes / eval_s:.0f} episodes/s; "
              f"accuracy {result.accuracy:.3f} ± {result.ci95:.3f})")

    if not ok:
        print(f"FAIL: a speed option is off the plain path (limits: agreement >= {MIN_AGREEMENT:.0%}, "
              f"rel diff <= {MAX_REL_DIFF:.0%})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
