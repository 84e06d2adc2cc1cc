"""The reader of Lake et al.'s one-shot classification runs (all_runs.zip), on small synthetic runs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.data.base import DataError
from fewshot.data.images import CorruptImageError
from fewshot.data.lake_runs import load_lake_runs, write_lake_runs

SIZE = 12


def _binary_images(rng: np.random.Generator, n: int) -> torch.Tensor:
    """``[n, 1, SIZE, SIZE]`` sparse binary strokes (ink 1), each image different."""
    images = (rng.random((n, 1, SIZE, SIZE)) < 0.15).astype(np.float32)
    images[np.arange(n), 0, 0, np.arange(n) % SIZE] = 1.0  # a mark that keeps images distinct
    return torch.from_numpy(images)


def _runs(num_runs: int = 3, ways: int = 5, queries: int = 5, seed: int = 0):
    """Runs with a shuffled (non-identity) query -> class mapping."""
    rng = np.random.default_rng(seed)
    runs = []
    for _ in range(num_runs):
        labels = torch.from_numpy(rng.permutation(np.arange(queries) % ways))
        runs.append((_binary_images(rng, ways), _binary_images(rng, queries), labels))
    return runs


def _zip(folder: Path, zip_path: Path, prefix: str) -> Path:
    """Zip the runs under ``folder`` as ``zip_path``, with member names ``prefix + run01/...``."""
    with zipfile.ZipFile(zip_path, "w") as archive:
        if prefix:
            archive.writestr(prefix, "")  # a directory entry, as zip tools write them
        for f in sorted(folder.rglob("*")):
            archive.write(f, prefix + f.relative_to(folder).as_posix())
    return zip_path


@pytest.fixture
def runs():
    return _runs()


@pytest.fixture
def all_runs(tmp_path, runs) -> Path:
    return write_lake_runs(tmp_path / "all_runs", runs)


def test_reads_every_run_with_labels_from_class_labels(all_runs, runs):
    loaded = load_lake_runs(all_runs, image_size=SIZE)
    assert [name for name, _ in loaded] == ["run01", "run02", "run03"]
    for (name, task), (support, query, labels) in zip(loaded, runs, strict=True):
        assert task.support_images.shape == (5, 1, SIZE, SIZE)
        assert task.query_images.shape == (5, 1, SIZE, SIZE)
        assert task.support_labels.tolist() == [0, 1, 2, 3, 4]
        assert task.query_labels.dtype == torch.int64
        assert task.query_labels.tolist() == labels.tolist()
        assert task.class_names == ["class01", "class02", "class03", "class04", "class05"]
        assert task.support_ids[0] == f"{name}/training/class01.png"
        assert task.query_ids == [f"{name}/test/item{i:02d}.png" for i in range(1, 6)]
        # Ink polarity: written black on white, read back as ink 1 on paper 0, exactly.
        assert torch.equal(task.support_images, support)
        assert torch.equal(task.query_images, query)


def test_labels_follow_the_file_not_the_line_order(all_runs, runs):
    label_file = all_runs / "run02" / "class_labels.txt"
    lines = label_file.read_text().split("\n")
    label_file.write_text("\n".join(reversed(lines)))  # also starts with a blank line
    _, task = load_lake_runs(all_runs, image_size=SIZE)[1]
    assert task.query_labels.tolist() == runs[1][2].tolist()
    # The query images are matched to the right training image: item i is class label[i].
    written = {line.split()[0]: line.split()[1] for line in lines if line}
    for q, label in zip(task.query_ids, task.query_labels.tolist(), strict=True):
        assert written[q] == task.support_ids[label]


def test_original_polarity_black_ink_on_white(all_runs):
    pixels = np.asarray(Image.open(all_runs / "run01" / "training" / "class01.png"))
    assert pixels.dtype == np.uint8 and pixels.ndim == 2
    assert (pixels == 255).mean() > 0.5  # mostly white paper, like the originals
    _, task = load_lake_runs(all_runs, image_size=SIZE)[0]
    assert task.support_images.mean() < 0.5  # read back: mostly 0


def test_resizes_to_image_size(all_runs):
    _, task = load_lake_runs(all_runs, image_size=8)[0]
    assert task.support_images.shape == (5, 1, 8, 8)
    assert task.support_images.min() >= 0 and task.support_images.max() <= 1


@pytest.mark.parametrize("prefix", ["", "all_runs/"])
def test_zip_equals_folder(tmp_path, all_runs, prefix):
    zipped = _zip(all_runs, tmp_path / "all_runs.zip", prefix)
    from_folder = load_lake_runs(all_runs, image_size=SIZE)
    from_zip = load_lake_runs(zipped, image_size=SIZE)
    assert [n for n, _ in from_zip] == [n for n, _ in from_folder]
    for (_, a), (_, b) in zip(from_folder, from_zip, strict=True):
        assert torch.equal(a.support_images, b.support_images)
        assert torch.equal(a.query_images, b.query_images)
        assert torch.equal(a.query_labels, b.query_labels)
        assert a.support_ids == b.support_ids and a.query_ids == b.query_ids


def test_folder_one_level_above_and_single_run(tmp_path, all_runs, runs):
    # ``tmp_path`` holds ``all_runs/``, as after extracting a zip with the top-level folder.
    assert [n for n, _ in load_lake_runs(tmp_path, image_size=SIZE)] == ["run01", "run02", "run03"]
    ((name, task),) = load_lake_runs(all_runs / "run02", image_size=SIZE)
    assert name == "run02" and task.query_labels.tolist() == runs[1][2].tolist()


def test_counts_files_instead_of_assuming_20(tmp_path):
    rng = np.random.default_rng(1)
    support, query = _binary_images(rng, 12), _binary_images(rng, 3)
    root = write_lake_runs(tmp_path / "runs", [(support, query, torch.tensor([11, 0, 5]))])
    ((_, task),) = load_lake_runs(root, image_size=SIZE)
    assert task.support_images.shape[0] == 12 and task.ways == 12
    assert task.class_names[9:] == ["class10", "class11", "class12"]
    assert task.query_labels.tolist() == [11, 0, 5]


def test_missing_path_says_where_to_get_it(tmp_path):
    with pytest.raises(DataError, match=r"all_runs\.zip.*brendenlake/omniglot") as err:
        load_lake_runs(tmp_path / "nowhere.zip")
    assert "nowhere.zip" in str(err.value)


def test_no_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no one-shot runs"):
        load_lake_runs(tmp_path / "empty")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(DataError, match="no one-shot runs"):
        load_lake_runs(tmp_path / "other.zip")
    (tmp_path / "plain.txt").write_text("x")
    with pytest.raises(DataError, match="neither a folder nor a zip"):
        load_lake_runs(tmp_path / "plain.txt")


def test_class_labels_naming_a_missing_file(all_runs, tmp_path):
    (all_runs / "run03" / "training" / "class04.png").unlink()
    assert "run03/training/class04.png" in (all_runs / "run03" / "class_labels.txt").read_text()
    with pytest.raises(DataError, match=r"run03/training/class04\.png") as err:
        load_lake_runs(all_runs, image_size=SIZE)
    assert "class_labels.txt" in str(err.value) and "missing" in str(err.value)
    # Same error from the zip, naming the member.
    zipped = _zip(all_runs, tmp_path / "all_runs.zip", "all_runs/")
    with pytest.raises(DataError, match=r"run03/training/class04\.png"):
        load_lake_runs(zipped, image_size=SIZE)


def test_malformed_and_incomplete_class_labels(all_runs):
    label_file = all_runs / "run01" / "class_labels.txt"
    good = label_file.read_text()
    label_file.write_text(good + "run01/test/item01.png\n")
    with pytest.raises(DataError, match=r"run01/class_labels\.txt line 6 is malformed"):
        load_lake_runs(all_runs, image_size=SIZE)
    label_file.write_text("\n".join(good.splitlines()[1:]))
    with pytest.raises(DataError, match=r"no label for 1 test image.*item01\.png"):
        load_lake_runs(all_runs, image_size=SIZE)
    label_file.unlink()
    with pytest.raises(DataError, match=r"run01/class_labels\.txt is missing"):
        load_lake_runs(all_runs, image_size=SIZE)


def test_corrupt_image_is_named(all_runs):
    (all_runs / "run02" / "test" / "item03.png").write_bytes(b"not a png")
    with pytest.raises(CorruptImageError, match=r"run02/test/item03\.png") as err:
        load_lake_runs(all_runs, image_size=SIZE)
    assert err.value.path.endswith("run02/test/item03.png")
