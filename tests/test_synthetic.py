"""Tests of the procedural handwriting-like characters (fewshot.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fewshot.data.base import DataError, FewShotDataset
from fewshot.data.sampler import TaskSampler, build_task
from fewshot.data.synthetic import SyntheticGlyphs


def _per_class(ds: SyntheticGlyphs) -> torch.Tensor:
    """Preloaded images as ``[classes, images_per_class, H, W]``."""
    ds.preload()
    assert ds.images is not None
    return ds.images.reshape(ds.num_classes, ds.images_per_class, ds.image_size, ds.image_size)


@pytest.fixture(scope="module")
def glyphs() -> SyntheticGlyphs:
    return SyntheticGlyphs(num_classes=30, images_per_class=10, seed=0).preload()


# -- item table, names and groups -------------------------------------------------------------------------
def test_item_table_names_and_groups() -> None:
    ds = SyntheticGlyphs(num_classes=25, images_per_class=8, seed=3, num_groups=10, class_offset=40)
    assert isinstance(ds, FewShotDataset)
    assert len(ds) == 25 * 8 and ds.num_classes == 25
    assert ds.class_names[0] == "glyph00040" and ds.class_names[2] == "glyph00042"
    assert ds.item_ids[2 * 8 + 7] == "glyph00042/07"
    assert ds.class_groups[3] == "group3" and ds.class_groups[13] == "group3" and ds.class_groups[24] == "group4"
    assert sorted(ds.groups()) == [f"group{g}" for g in range(10)]
    assert ds.groups()["group3"] == [3, 13, 23]
    np.testing.assert_array_equal(ds.item_classes, np.repeat(np.arange(25), 8))
    assert len(set(ds.item_ids)) == len(ds)
    assert ds.describe() == "SyntheticGlyphs: 200 images, 25 classes, 10 groups"


def test_shape_dtype_and_range() -> None:
    for size in (28, 40):
        ds = SyntheticGlyphs(num_classes=6, images_per_class=4, image_size=size, seed=1)
        image = ds.load(5)
        assert image.shape == (1, size, size) and image.dtype == torch.float32
        assert ds.image_shape() == (1, size, size)
        images = ds.preload().images
        assert images is not None and images.shape == (24, 1, size, size) and images.dtype == torch.float32
        assert images.min() >= 0 and images.max() <= 1
        # Ink is 1 and paper 0: every image has solid ink, a minority of ink pixels, blank corners.
        flat = images.flatten(1)
        assert (flat.max(dim=1).values > 0.9).all()
        ink = (flat > 0.5).float().mean(dim=1)
        assert (ink > 0.02).all() and (ink < 0.35).all()
        assert images[:, :, 0, 0].max() < 0.5
        # Antialiased: intermediate grey levels exist.
        assert ((flat > 0.1) & (flat < 0.9)).float().mean() > 0.01


def test_load_item_matches_preload_and_out_of_range() -> None:
    lazy = SyntheticGlyphs(num_classes=5, images_per_class=6, seed=2)
    eager = SyntheticGlyphs(num_classes=5, images_per_class=6, seed=2)
    assert eager.preload() is eager
    assert eager.images is not None
    for i in range(len(lazy)):
        assert torch.equal(lazy.load_item(i), eager.images[i])
    assert torch.equal(lazy.load_many([3, 0, 29]), eager.load_many([3, 0, 29]))
    with pytest.raises(IndexError):
        lazy.load_item(len(lazy))


# -- determinism -----------------------------------------------------------------------------------------
def test_same_seed_gives_identical_images_across_constructions() -> None:
    a = SyntheticGlyphs(num_classes=8, images_per_class=5, seed=11).preload()
    b = SyntheticGlyphs(num_classes=8, images_per_class=5, seed=11).preload()
    assert a.images is not None and b.images is not None
    assert torch.equal(a.images, b.images)
    # Rendering again on demand (no cache of images) gives the same tensor too.
    assert torch.equal(SyntheticGlyphs(num_classes=8, images_per_class=5, seed=11).load_item(17), a.images[17])


def test_class_and_instance_do_not_depend_on_dataset_size() -> None:
    small = _per_class(SyntheticGlyphs(num_classes=3, images_per_class=4, seed=5))
    large = _per_class(SyntheticGlyphs(num_classes=12, images_per_class=9, seed=5))
    assert torch.equal(small, large[:3, :4])
    # Class c with offset k is class k + c without offset; names follow.
    shifted = SyntheticGlyphs(num_classes=2, images_per_class=4, seed=5, class_offset=7)
    assert shifted.class_names == ["glyph00007", "glyph00008"]
    assert torch.equal(_per_class(shifted), large[7:9, :4])


def test_different_seed_gives_different_images() -> None:
    a = _per_class(SyntheticGlyphs(num_classes=10, images_per_class=3, seed=0))
    b = _per_class(SyntheticGlyphs(num_classes=10, images_per_class=3, seed=1))
    differences = (a - b).abs().flatten(2).mean(dim=2)  # [classes, images]
    assert (differences > 0.01).all()


def test_different_seed_gives_different_characters() -> None:
    # Not just other jitter: class c of seed 1 is another character than class c of seed 0, so it is
    # farther from seed 0's images of class c than those are from each other.
    a = _per_class(SyntheticGlyphs(num_classes=12, images_per_class=6, seed=0)).flatten(2)
    b = _per_class(SyntheticGlyphs(num_classes=12, images_per_class=6, seed=1)).flatten(2)
    off_diagonal = ~torch.eye(6, dtype=torch.bool)
    within = torch.stack([torch.cdist(a[c], a[c])[off_diagonal].mean() for c in range(12)])
    across = torch.stack([torch.cdist(a[c], b[c]).mean() for c in range(12)])
    assert (across > within).float().mean() >= 0.9


def test_class_offset_gives_unseen_classes() -> None:
    train = SyntheticGlyphs(num_classes=10, images_per_class=3, seed=0)
    test = SyntheticGlyphs(num_classes=10, images_per_class=3, seed=0, class_offset=100_000)
    assert not set(train.class_names) & set(test.class_names)
    assert test.class_names[0] == "glyph100000" and test.item_ids[4] == "glyph100001/01"
    a, b = _per_class(train).flatten(2), _per_class(test).flatten(2)
    # No test image equals (or nearly equals) any train image.
    distances = torch.cdist(b.flatten(0, 1), a.flatten(0, 1))
    assert distances.min() > 1.0


# -- a learnable, non-trivial task -----------------------------------------------------------------------
def test_instances_vary_but_stay_closer_to_their_class(glyphs: SyntheticGlyphs) -> None:
    assert glyphs.images is not None
    x = glyphs.images.flatten(1)
    y = torch.as_tensor(glyphs.item_classes)
    same = (y[:, None] == y[None]) & ~torch.eye(len(y), dtype=torch.bool)
    other = y[:, None] != y[None]
    d = torch.cdist(x, x)
    # Images of one class visibly differ from each other (jitter, affine change, pen width)...
    assert d[same].min() > 1.0
    # ...but are closer to each other than to other classes' images, in L2 and in correlation.
    assert d[same].mean() < 0.9 * d[other].mean()
    centred = x - x.mean(dim=1, keepdim=True)
    centred = centred / centred.norm(dim=1, keepdim=True)
    corr = centred @ centred.T
    assert corr[same].mean() > corr[other].mean() + 0.15
    # For each class separately: its images correlate more with each other than with other classes.
    per_class_same = torch.stack([corr[y == c][:, y == c][~torch.eye(10, dtype=torch.bool)].mean() for c in range(30)])
    per_class_other = torch.stack([corr[y == c][:, y != c].mean() for c in range(30)])
    assert (per_class_same > per_class_other).float().mean() >= 0.9
    # Leave-one-out nearest neighbour on raw pixels is far above chance (1/30).
    nearest = (d + torch.eye(len(y)) * 1e9).argmin(dim=1)
    assert (y[nearest] == y).float().mean() > 0.6


def test_distinct_classes_are_distinct(glyphs: SyntheticGlyphs) -> None:
    first = _per_class(glyphs)[:, 0].flatten(1)  # image 0 of every class
    d = torch.cdist(first, first) + torch.eye(len(first)) * 1e9
    assert d.min() > 1.0


# -- use with the sampler ----------------------------------------------------------------------------------
def test_within_group_tasks() -> None:
    ds = SyntheticGlyphs(num_classes=20, images_per_class=6, seed=0, num_groups=4).preload()
    sampler = TaskSampler(ds, ways=5, shots=1, queries=2, num_tasks=5, seed=0, within_group=True)
    for i in range(5):
        spec = sampler.spec(i)
        assert len({ds.class_groups[c] for c in spec.classes}) == 1
        task = build_task(ds, spec)
        assert task.support_images.shape == (5, 1, 28, 28)
        assert task.query_images.shape == (10, 1, 28, 28)
    sub = ds.subset([1, 5, 9])
    assert sub.class_names == ["glyph00001", "glyph00005", "glyph00009"]
    assert ds.images is not None and torch.equal(sub.load(0), ds.images[6])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_classes": 0},
        {"images_per_class": 0},
        {"image_size": 4},
        {"num_groups": 0},
        {"seed": -1},
        {"class_offset": -5},
    ],
)
def test_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(DataError):
        SyntheticGlyphs(**kwargs)
