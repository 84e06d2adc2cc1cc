from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fewshot.data import DataError, TaskSampler, TensorDataset, build_task, iterate_tasks, load_tasks, save_tasks
from fewshot.data.sampler import EpisodeDataset


def make_dataset(counts: list[int], groups: list[str] | None = None) -> TensorDataset:
    labels = np.repeat(np.arange(len(counts)), counts)
    images = torch.arange(len(labels), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()
    return TensorDataset(images, labels, class_groups=groups, item_ids=[f"img{i}.png" for i in range(len(labels))])


def test_task_shapes_labels_and_disjoint_support_query():
    ds = make_dataset([10] * 12)
    sampler = TaskSampler(ds, ways=5, shots=3, queries=4, num_tasks=20, seed=1)
    for spec in sampler.specs():
        task = build_task(ds, spec)
        assert task.support_images.shape == (15, 1, 2, 2)
        assert task.query_images.shape == (20, 1, 2, 2)
        assert task.support_labels.tolist() == [j for j in range(5) for _ in range(3)]
        assert task.query_labels.tolist() == [j for j in range(5) for _ in range(4)]
        assert len(set(task.class_ids)) == 5
        # images encode their own item index: every item belongs to its class, no item twice
        items = torch.cat([task.support_images, task.query_images])[:, 0, 0, 0].long().tolist()
        assert len(set(items)) == len(items)
        labels = torch.cat([task.support_labels, task.query_labels])
        for item, label in zip(items, labels.tolist(), strict=True):
            assert ds.item_classes[item] == task.class_ids[label]
        assert not set(task.support_ids) & set(task.query_ids)


def test_same_seed_same_tasks_other_seed_differs():
    ds = make_dataset([8] * 30)
    a = [s.support.tolist() + s.query.tolist() for s in TaskSampler(ds, 5, 1, 2, 50, seed=3).specs()]
    b = [s.support.tolist() + s.query.tolist() for s in TaskSampler(ds, 5, 1, 2, 50, seed=3).specs()]
    c = [s.support.tolist() + s.query.tolist() for s in TaskSampler(ds, 5, 1, 2, 50, seed=4).specs()]
    assert a == b
    assert a != c


def test_tasks_identical_in_another_process():
    code = (
        "import numpy as np, torch\n"
        "from fewshot.data import TaskSampler, TensorDataset\n"
        "ds = TensorDataset(torch.zeros(240, 1, 1, 1), np.repeat(np.arange(30), 8))\n"
        "print([s.support.tolist() for s in TaskSampler(ds, 5, 1, 2, 5, seed=9).specs()])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    ds = TensorDataset(torch.zeros(240, 1, 1, 1), np.repeat(np.arange(30), 8))
    assert out.strip() == str([s.support.tolist() for s in TaskSampler(ds, 5, 1, 2, 5, seed=9).specs()])


def test_dataloader_workers_give_the_same_tasks():
    ds = make_dataset([6] * 20)
    sampler = TaskSampler(ds, 4, 2, 2, num_tasks=6, seed=5)
    direct = [build_task(ds, s) for s in sampler.specs()]
    ds.images, images = None, ds.images  # force per-item loading through workers
    ds.load_item = lambda i: images[i]  # type: ignore[method-assign]
    loaded = list(DataLoader(EpisodeDataset(ds, sampler.specs()), batch_size=None, num_workers=2))
    via_sampler = list(DataLoader(ds, batch_sampler=sampler, collate_fn=sampler.collate, num_workers=2))
    for a, b, c in zip(direct, loaded, via_sampler, strict=True):
        assert torch.equal(a.support_images, b.support_images)
        assert torch.equal(a.query_images, c.query_images)
        assert a.class_ids == b.class_ids == c.class_ids


def test_within_group_draws_one_group_and_skips_small_groups():
    groups = ["A"] * 6 + ["B"] * 3 + ["C"] * 5
    ds = make_dataset([5] * 14, groups)
    seen = set()
    for spec in TaskSampler(ds, 5, 1, 1, 100, seed=0, within_group=True).specs():
        task_groups = {groups[c] for c in spec.classes}
        assert len(task_groups) == 1
        seen |= task_groups
    assert seen == {"A", "C"}  # B has only 3 classes


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"ways": 0}, "ways must be at least 1"),
        ({"shots": 0}, "shots must be at least 1"),
        ({"queries": 0}, "queries must be at least 1"),
        ({"ways": 11}, "only 10"),
        ({"shots": 4, "queries": 3}, "'class3' has 6"),
    ],
)
def test_bad_arguments_name_the_numbers(kwargs, needle):
    ds = make_dataset([8, 8, 8, 6, 8, 8, 8, 8, 8, 8])
    args = {"ways": 5, "shots": 1, "queries": 1, **kwargs}
    with pytest.raises(DataError, match=needle):
        TaskSampler(ds, args["ways"], args["shots"], args["queries"], num_tasks=1)


def test_within_group_too_many_ways_names_largest_group():
    ds = make_dataset([3] * 7, ["A"] * 4 + ["B"] * 3)
    with pytest.raises(DataError, match=r"largest alphabet, A, has 4 classes"):
        TaskSampler(ds, 5, 1, 1, 1, within_group=True)


def test_save_and_load_task_list_round_trip(tmp_path):
    ds = make_dataset([7] * 9, ["A"] * 5 + ["B"] * 4)
    specs = TaskSampler(ds, 3, 2, 2, 10, seed=2).specs()
    path = tmp_path / "tasks.json"
    save_tasks(path, ds, specs)
    record = json.loads(path.read_text())[0]
    assert record["ways"] == 3 and record["shots"] == 2 and record["queries"] == 2
    assert set(record["classes"][0]) == {"name", "alphabet", "support", "query"}
    loaded = load_tasks(path, ds)
    for a, b in zip(specs, loaded, strict=True):
        assert np.array_equal(a.classes, b.classes)
        assert np.array_equal(a.support, b.support)
        assert np.array_equal(a.query, b.query)
    other = make_dataset([7] * 3)
    with pytest.raises(DataError, match="not in this dataset"):
        load_tasks(path, other)


def test_iterate_tasks_matches_build_task_in_process_and_in_dataloader_workers():
    from fewshot.data.synthetic import SyntheticGlyphs

    lazy = SyntheticGlyphs(10, images_per_class=5, image_size=16, seed=0)  # not preloaded: workers decode
    assert lazy.images is None
    specs = TaskSampler(lazy, 5, 1, 3, 4, seed=0).specs()
    for workers in (0, 2):
        tasks = list(iterate_tasks(lazy, specs, num_workers=workers))
        assert len(tasks) == len(specs)
        for task, spec in zip(tasks, specs, strict=True):  # in order, and the same images as built here
            expected = build_task(lazy, spec)
            assert torch.equal(task.support_images, expected.support_images)
            assert torch.equal(task.query_images, expected.query_images)
            assert torch.equal(task.query_labels, expected.query_labels)


def test_sampling_is_cheap_next_to_a_training_step():
    """60-way 1-shot 5-query tasks from a 1000-class preloaded set: well under 2 ms each."""
    import time

    ds = make_dataset([20] * 1000)
    sampler = TaskSampler(ds, 60, 1, 5, num_tasks=200, seed=0)
    start = time.perf_counter()
    for spec in sampler.specs():
        build_task(ds, spec)
    per_task = (time.perf_counter() - start) / 200
    assert per_task < 2e-3, f"{per_task * 1e3:.2f} ms per task"
