"""The ``fewshot`` command line. Bad arguments exit with status 2 and one line on stderr."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from fewshot.data import DATASETS, DataError
from fewshot.training.checkpoint import CheckpointError
from fewshot.training.trainer import TrainingError
from fewshot.utils import keep_freed_memory


class UsageError(Exception):
    """A command-line argument that cannot work; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _add_data_args(p: argparse.ArgumentParser, default_dataset: str = "omniglot") -> None:
    p.add_argument("--dataset", choices=DATASETS, default=default_dataset)
    p.add_argument("--root", help="folder of the data (Omniglot release zips, or an image folder)")
    p.add_argument("--split", help="omniglot: background|evaluation|minimal|minimal1|minimal2; "
                   "glyphs: background|evaluation")
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--download", action="store_true", help="download missing Omniglot files (needs network)")


def _add_task_args(p: argparse.ArgumentParser, ways: int, shots: int, queries: int) -> None:
    p.add_argument("--ways", type=int, default=ways, help="N: classes per task")
    p.add_argument("--shots", type=int, default=shots, help="K: labelled support images per class")
    p.add_argument("--queries", type=int, default=queries, help="Q: query images per class")
    p.add_argument("--within-alphabet", action="store_true", help="draw all N classes of a task from one alphabet")


def cmd_episodes(args: argparse.Namespace) -> int:
    from fewshot.data import TaskSampler, load_dataset, save_tasks
    from fewshot.data.sampler import tasks_to_json

    dataset = load_dataset(args.dataset, args.root, args.split, args.image_size, download=args.download)
    sampler = TaskSampler(dataset, args.ways, args.shots, args.queries, args.count, args.seed,
                          within_group=args.within_alphabet)
    specs = sampler.specs()
    if args.save:
        save_tasks(args.save, dataset, specs)
    json.dump(tasks_to_json(dataset, specs), sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fewshot", description="Few-shot learning: sample, train, evaluate, predict.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("episodes", help="print N-way K-shot tasks as JSON")
    _add_data_args(p)
    _add_task_args(p, ways=5, shots=1, queries=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=10, help="number of tasks")
    p.add_argument("--save", help="also write the task list to this JSON file")
    p.set_defaults(func=cmd_episodes)

    from fewshot import bench, commands

    commands.register(sub)
    bench.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        keep_freed_memory()  # training and evaluation steps reuse their freed activations' pages (the why: there)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except (UsageError, DataError, CheckpointError, ValueError) as err:  # bad input: one line, no traceback
        print(f"fewshot: error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"fewshot: training stopped: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fewshot: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
