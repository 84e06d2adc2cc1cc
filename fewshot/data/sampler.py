"""Episodic sampling: N-way K-shot Q-query tasks from any :class:`FewShotDataset`.

Task ``i`` of a sampler is a pure function of ``(seed, i)``: the same seed gives the same tasks in any
process, in any order, and in DataLoader workers. Task lists can be saved to JSON and loaded back, so a
published evaluation reruns exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fewshot.data.base import DataError, FewShotDataset
from fewshot.data.task import Task


@dataclass(frozen=True)
class TaskSpec:
    """Which items make up a task.

    Attributes:
        classes: ``[N]`` dataset class of each episode label.
        support: ``[N, K]`` item indices, row ``j`` from ``classes[j]``.
        query: ``[N, Q]`` item indices.
    """

    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray


class TaskSampler(Sampler[list[int]]):
    """Draws N-way K-shot Q-query tasks from a dataset's classes.

    As a torch ``Sampler`` it yields, for each task, the flat list of ``N*(K+Q)`` item indices (class by class:
    K support then Q query), for ``DataLoader(dataset, batch_sampler=sampler, collate_fn=sampler.collate)``.
    :meth:`spec` gives task ``i`` directly and :func:`iterate_tasks` is the fast path.

    Args:
        dataset: the classes to draw from (one split).
        ways, shots, queries: N, K and Q.
        num_tasks: number of tasks one pass yields.
        seed: task ``i`` depends only on ``(seed, i)``.
        within_group: draw the N classes of a task from a single group (Omniglot: one alphabet), choosing
            uniformly among the groups that have at least N classes.
    """

    def __init__(
        self,
        dataset: FewShotDataset,
        ways: int,
        shots: int,
        queries: int,
        num_tasks: int,
        seed: int = 0,
        within_group: bool = False,
    ) -> None:
        for name, value in (("ways", ways), ("shots", shots), ("queries", queries), ("count", num_tasks)):
            if int(value) < 1:
                raise DataError(f"{name} must be at least 1 (got {value})")
        self.ways, self.shots, self.queries = int(ways), int(shots), int(queries)
        self.num_tasks, self.seed, self.within_group = int(num_tasks), int(seed), within_group
        self.item_classes = dataset.item_classes
        self.class_names = dataset.class_names
        self._check_and_index(dataset)

    def _check_and_index(self, dataset: FewShotDataset) -> None:
        per_class = dataset.items_per_class()
        need = self.shots + self.queries
        short = [(dataset.class_names[c], len(items)) for c, items in enumerate(per_class) if len(items) < need]
        if short:
            listed = ", ".join(f"'{name}' has {n}" for name, n in short[:5])
            more = f" and {len(short) - 5} more" if len(short) > 5 else ""
            raise DataError(
                f"{self.shots}-shot {self.queries}-query tasks need {need} images per class, but class {listed}"
                f"{more}; lower --shots/--queries or remove those classes"
            )
        if self.ways > dataset.num_classes:
            raise DataError(
                f"{self.ways}-way tasks need {self.ways} classes but the data has only {dataset.num_classes}; "
                f"use --ways {dataset.num_classes} or fewer"
            )
        groups = dataset.groups()
        if self.within_group:
            self.groups = [np.asarray(cs) for cs in groups.values() if len(cs) >= self.ways]
            if not self.groups:
                largest = max(groups, key=lambda g: len(groups[g]))
                raise DataError(
                    f"{self.ways}-way tasks within one alphabet need an alphabet with {self.ways} classes, but "
                    f"the largest alphabet, {largest}, has {len(groups[largest])} classes; use --ways "
                    f"{len(groups[largest])} or fewer, or drop --within-alphabet"
                )
        else:
            self.groups = [np.arange(dataset.num_classes)]
        # Padded [classes, max items] table so one argsort picks K+Q distinct items for all N classes at once.
        counts = np.array([len(items) for items in per_class])
        self._counts = counts
        self._table = np.zeros((dataset.num_classes, counts.max()), dtype=np.int64)
        for c, items in enumerate(per_class):
            self._table[c, : len(items)] = items

    def __len__(self) -> int:
        return self.num_tasks

    def spec(self, index: int) -> TaskSpec:
        """Task ``index`` (any non-negative integer, also beyond ``num_tasks``)."""
        rng = np.random.default_rng((self.seed, int(index)))
        pool = self.groups[rng.integers(len(self.groups))] if len(self.groups) > 1 else self.groups[0]
        classes = rng.choice(pool, size=self.ways, replace=False)
        keys = rng.random((self.ways, self._table.shape[1]))
        keys[np.arange(self._table.shape[1])[None, :] >= self._counts[classes][:, None]] = 2.0
        picked = np.argsort(keys, axis=1)[:, : self.shots + self.queries]
        items = np.take_along_axis(self._table[classes], picked, axis=1)
        return TaskSpec(classes, items[:, : self.shots], items[:, self.shots :])

    def specs(self, start: int = 0) -> list[TaskSpec]:
        return [self.spec(i) for i in range(start, start + self.num_tasks)]

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(self.num_tasks):
            spec = self.spec(i)
            yield np.concatenate([spec.support, spec.query], axis=1).reshape(-1).tolist()

    def collate(self, batch: list[tuple[torch.Tensor, int]]) -> Task:
        """Turn the ``N*(K+Q)`` ``(image, class)`` pairs of one task (``__iter__`` order) into a Task."""
        images = torch.stack([img for img, _ in batch]).unflatten(0, (self.ways, self.shots + self.queries))
        classes = [int(batch[j * (self.shots + self.queries)][1]) for j in range(self.ways)]
        return _assemble(images[:, : self.shots], images[:, self.shots :], classes, self.class_names)


def _assemble(
    support: torch.Tensor,
    query: torch.Tensor,
    classes: Sequence[int],
    class_names: Sequence[str],
    support_ids: list[str] | None = None,
    query_ids: list[str] | None = None,
) -> Task:
    """Build a Task from ``support`` ``[N, K, C, H, W]`` and ``query`` ``[N, Q, C, H, W]``."""
    ways, shots, queries = support.shape[0], support.shape[1], query.shape[1]
    labels = torch.arange(ways)
    return Task(
        support_images=support.flatten(0, 1),
        support_labels=labels.repeat_interleave(shots),
        query_images=query.flatten(0, 1),
        query_labels=labels.repeat_interleave(queries),
        class_ids=[int(c) for c in classes],
        class_names=[class_names[int(c)] for c in classes],
        support_ids=support_ids or [],
        query_ids=query_ids or [],
    )


def build_task(dataset: FewShotDataset, spec: TaskSpec) -> Task:
    """Load the images of ``spec`` (one gather when the dataset is preloaded) into a :class:`Task`."""
    shots = spec.support.shape[1]
    flat = np.concatenate([spec.support, spec.query], axis=1)
    images = dataset.load_many(flat.reshape(-1)).unflatten(0, flat.shape)
    ids = dataset.item_ids
    return _assemble(
        images[:, :shots],
        images[:, shots:],
        spec.classes,
        dataset.class_names,
        [ids[i] for i in spec.support.reshape(-1)],
        [ids[i] for i in spec.query.reshape(-1)],
    )


class EpisodeDataset(Dataset):
    """Map-style dataset whose item ``i`` is the Task of ``specs[i]``; lets DataLoader workers build tasks."""

    def __init__(self, dataset: FewShotDataset, specs: Sequence[TaskSpec]) -> None:
        self.dataset, self.specs = dataset, list(specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, index: int) -> Task:
        return build_task(self.dataset, self.specs[index])


def iterate_tasks(
    dataset: FewShotDataset, specs: Sequence[TaskSpec], num_workers: int = 0
) -> Iterator[Task]:
    """Yield the tasks of ``specs`` in order: directly from a preloaded tensor, else through DataLoader workers."""
    if dataset.images is not None or num_workers == 0:
        for spec in specs:
            yield build_task(dataset, spec)
        return
    loader = DataLoader(
        EpisodeDataset(dataset, specs),
        batch_size=None,
        num_workers=num_workers,
        persistent_workers=False,
    )
    yield from loader


# -- JSON task lists -----------------------------------------------------------------------------------
def tasks_to_json(dataset: FewShotDataset, specs: Sequence[TaskSpec]) -> list[dict]:
    """One object per task: ways, shots, queries and, per class, its name, alphabet and item ids."""
    out = []
    for spec in specs:
        ways, shots = spec.support.shape
        out.append(
            {
                "ways": int(ways),
                "shots": int(shots),
                "queries": int(spec.query.shape[1]),
                "classes": [
                    {
                        "name": dataset.class_names[c],
                        "alphabet": dataset.class_groups[c],
                        "support": [dataset.item_ids[i] for i in spec.support[j]],
                        "query": [dataset.item_ids[i] for i in spec.query[j]],
                    }
                    for j, c in enumerate(spec.classes)
                ],
            }
        )
    return out


def save_tasks(path: str | Path, dataset: FewShotDataset, specs: Sequence[TaskSpec]) -> None:
    """Write a task list to ``path`` as JSON (see :func:`tasks_to_json`)."""
    from fewshot.utils import atomic_write_text

    tasks = tasks_to_json(dataset, specs)  # one task per line: readable, diffable, and a third of indent=1's size
    atomic_write_text(Path(path), "[\n" + ",\n".join(json.dumps(t, separators=(",", ":")) for t in tasks) + "\n]\n")


def load_tasks(path: str | Path, dataset: FewShotDataset) -> list[TaskSpec]:
    """Read a task list written by :func:`save_tasks` and resolve its names against ``dataset``."""
    try:
        records = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise DataError(f"task list {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise DataError(f"task list {path} is not valid JSON ({err})") from None
    return tasks_from_json(records, dataset, source=str(path))


def tasks_from_json(records: list[dict], dataset: FewShotDataset, source: str = "task list") -> list[TaskSpec]:
    item_index = {item: i for i, item in enumerate(dataset.item_ids)}
    class_index = {name: c for c, name in enumerate(dataset.class_names)}
    specs = []
    for t, record in enumerate(records):
        try:
            classes = [class_index[c["name"]] for c in record["classes"]]
            support = [[item_index[i] for i in c["support"]] for c in record["classes"]]
            query = [[item_index[i] for i in c["query"]] for c in record["classes"]]
        except KeyError as err:
            raise DataError(
                f"{source}: task {t} names {err} which is not in this dataset; load the same dataset and split "
                "the list was made from"
            ) from None
        if len({len(s) for s in support}) != 1 or len({len(q) for q in query}) != 1:
            raise DataError(f"{source}: task {t} has classes with different numbers of support or query items")
        specs.append(TaskSpec(np.asarray(classes), np.asarray(support), np.asarray(query)))
    return specs
