"""Training speed of the optimization recipes with the meta-batch split over threads, against one thread's loop.

For each recipe (``omniglot-maml``, ``omniglot-metasgd``, ``omniglot-protomaml`` by default) the script builds the
trainer ``fewshot train --recipe R --final`` builds (Omniglot ``minimal``, the recipe's ways, meta-batch, precision
and augmentation), and times its optimizer steps (task sampling and augmentation included) in interleaved blocks:

* ``loop``: ``workers=1``, the tasks of a meta-batch one after another, every intra-op thread on each task;
* ``threads``: ``workers=None`` (the CPU default), the meta-batch split over one thread per intra-op thread.

It prints meta-batches/s of each and their ratio per recipe. The weights move on between blocks, as in training;
the two paths compute the same meta-gradient (``tests/test_maml.py``,
``test_meta_batch_split_over_threads_equals_the_loop``).

    python benchmarks/meta_batch_threads.py [--root ../shared/data/omniglot] [--recipes omniglot-maml,...]
        [--steps 40] [--block 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from fewshot.commands import TRAIN_DEFAULTS, build_train_config, prepare_training_data
from fewshot.recipes import get_recipe
from fewshot.training.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
PATHS = {"loop": 1, "threads": None}


def trainer_for(recipe: str, root: Path, out: Path) -> Trainer:
    settings = {**TRAIN_DEFAULTS, **get_recipe(recipe), "root": str(root), "final": True}
    train, _ = prepare_training_data(settings)
    return Trainer(build_train_config(settings, train), train, None, out)


def time_recipe(recipe: str, root: Path, steps: int, block: int) -> dict[str, float]:
    """Meta-batches per second of each path, ``steps`` optimizer steps each, in interleaved blocks."""
    with tempfile.TemporaryDirectory() as out:
        trainer = trainer_for(recipe, root, Path(out))
        config = trainer.config
        print(f"{recipe}: {config.model.method}, {config.ways}-way {config.shots}-shot {config.queries}-query, "
              f"meta-batch {config.meta_batch}, {config.precision}, augment {config.augment!r}")
        episode = 0
        for workers in PATHS.values():  # warm-up
            trainer.model.workers = workers
            trainer.step(episode, config.lr)
            episode += 1
        seconds = dict.fromkeys(PATHS, 0.0)
        for rnd in range((steps + block - 1) // block):
            order = list(PATHS) if rnd % 2 == 0 else list(PATHS)[::-1]
            for name in order:
                trainer.model.workers = PATHS[name]
                started = time.perf_counter()
                for _ in range(min(block, steps - rnd * block)):
                    trainer.step(episode, config.lr)
                    episode += 1
                seconds[name] += time.perf_counter() - started
    return {name: steps / s for name, s in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "omniglot")
    parser.add_argument("--recipes", default="omniglot-maml,omniglot-metasgd,omniglot-protomaml")
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per path and recipe")
    parser.add_argument("--block", type=int, default=5, help="steps per interleaved block")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (torch.set_num_threads)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = []
    for recipe in args.recipes.split(","):
        rates = time_recipe(recipe, args.root, args.steps, args.block)
        rows.append((recipe, rates))
        print(f"  loop {rates['loop']:.2f}, threads {rates['threads']:.2f} meta-batches/s: "
              f"{rates['threads'] / rates['loop']:.2f}x")
    print(f"\n{args.threads} intra-op threads; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, "
          f"on {os.cpu_count()} CPUs")
    print("| recipe | loop (meta-batches/s) | threads (meta-batches/s) | threads / loop |")
    print("|---|---|---|---|")
    for recipe, rates in rows:
        print(f"| {recipe} | {rates['loop']:.2f} | {rates['threads']:.2f} | {rates['threads'] / rates['loop']:.2f} |")


if __name__ == "__main__":
    main()
