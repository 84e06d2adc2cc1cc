"""ImageFolder (root/<class>/<images>) and list_image_files, on small generated images."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.data.base import DataError
from fewshot.data.image_folder import ImageFolder, list_image_files
from fewshot.data.images import CorruptImageError


def _save(path: Path, value: int = 0, rgb: bool = False, size: int = 10) -> Path:
    """An image of constant gray ``value`` (or an RGB one, red channel ``value``) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if rgb:
        pixels = np.zeros((size, size, 3), dtype=np.uint8)
        pixels[..., 0] = value
        pixels[..., 2] = 255
    else:
        pixels = np.full((size, size), value, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    """Classes ``zebra`` (2 images), ``cat`` (3, mixed suffixes and sizes), ``dog`` (1 RGB), plus clutter."""
    root = tmp_path / "pets"
    _save(root / "zebra" / "b.png", 0)
    _save(root / "zebra" / "a.png", 255)
    _save(root / "cat" / "001.png", 51)
    _save(root / "cat" / "002.JPG", 102, size=16)
    _save(root / "cat" / "003.bmp", 153, rgb=True)
    _save(root / "dog" / "x.jpeg", 200, rgb=True)
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "cat" / "._001.png").write_bytes(b"macOS resource fork, not a png")
    (root / "README.md").write_text("loose file in root")
    (root / ".hidden_class").mkdir()
    _save(root / ".hidden_class" / "h.png")
    return root


def test_classes_sorted_and_items(root):
    data = ImageFolder(root, image_size=8)
    assert data.class_names == ["cat", "dog", "zebra"]
    assert data.class_groups == data.class_names
    assert data.item_ids == [
        "cat/001.png",
        "cat/002.JPG",
        "cat/003.bmp",
        "dog/x.jpeg",
        "zebra/a.png",
        "zebra/b.png",
    ]
    assert data.item_classes.tolist() == [0, 0, 0, 1, 2, 2]
    assert data.images is not None and data.images.shape == (6, 1, 8, 8)
    # zebra/a.png is white (1.0), zebra/b.png black (0.0): the right pixels belong to the right ids.
    assert torch.allclose(data.load(4), torch.ones(1, 8, 8))
    assert torch.allclose(data.load(5), torch.zeros(1, 8, 8))
    assert torch.allclose(data.load(0), torch.full((1, 8, 8), 51 / 255), atol=1e-6)
    image, label = data[3]
    assert label == 1 and image.shape == (1, 8, 8)


def test_grayscale_vs_rgb_and_size(root):
    gray = ImageFolder(root, image_size=8, channels=1)
    rgb = ImageFolder(root, image_size=(6, 9), channels=3)
    assert gray.image_shape() == (1, 8, 8)
    assert rgb.images.shape == (6, 3, 6, 9)
    dog = rgb.item_ids.index("dog/x.jpeg")
    red, green, blue = rgb.images[dog].mean(dim=(1, 2)).tolist()
    assert red == pytest.approx(200 / 255, abs=0.03) and green < 0.03 and blue > 0.97
    # A grayscale file read as RGB repeats its gray level in all three channels.
    a = rgb.item_ids.index("zebra/a.png")
    assert torch.allclose(rgb.images[a], torch.ones(3, 6, 9))


def test_invert(root):
    data = ImageFolder(root, image_size=8, invert=True)
    assert torch.allclose(data.load(data.item_ids.index("zebra/b.png")), torch.ones(1, 8, 8))
    assert torch.allclose(data.load(data.item_ids.index("zebra/a.png")), torch.zeros(1, 8, 8))


def test_load_item_matches_preloaded(root):
    data = ImageFolder(root, image_size=8, channels=3)
    for i in range(len(data)):
        assert torch.equal(data.load_item(i), data.images[i])


def test_corrupt_image_error_names_the_path(root):
    bad = root / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(CorruptImageError, match=r"broken\.png") as err:
        ImageFolder(root)
    assert err.value.path == str(bad)


def test_corrupt_image_skipped_with_warning(root):
    (root / "dog" / "broken.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=r"dog/broken\.png"):
        data = ImageFolder(root, image_size=8, on_corrupt="skip")
    assert data.skipped == ["dog/broken.png"]
    assert "dog/broken.png" not in data.item_ids
    assert len(data) == 6 and data.images.shape[0] == 6


def test_class_left_without_readable_images(root):
    (root / "dog" / "x.jpeg").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"dog has no readable images \(1 corrupt skipped\)"):
            ImageFolder(root, on_corrupt="skip")
    with pytest.warns(UserWarning) as record:
        data = ImageFolder(root, on_corrupt="skip", allow_empty=True)
    assert data.class_names == ["cat", "zebra"]
    assert any("dropping class folder" in str(w.message) for w in record)


def test_empty_class_folder(root):
    empty = root / "emu"
    empty.mkdir()
    (empty / "info.txt").write_text("no images here")
    with pytest.raises(DataError, match="every class needs at least one image") as err:
        ImageFolder(root)
    assert str(empty) in str(err.value)
    assert "add images or remove the folder" in str(err.value)  # what a command-line user can do
    with pytest.warns(UserWarning, match="emu"):
        data = ImageFolder(root, allow_empty=True)
    assert data.class_names == ["cat", "dog", "zebra"]
    assert data.item_classes.tolist() == [0, 0, 0, 1, 2, 2]


def test_nested_images_hint(tmp_path):
    _save(tmp_path / "data" / "train" / "cat" / "1.png")
    with pytest.raises(DataError, match="subfolders are not searched"):
        ImageFolder(tmp_path / "data")


def test_root_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "missing")
    (tmp_path / "data.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"not a folder \(extract"):
        ImageFolder(tmp_path / "data.zip")
    _save(tmp_path / "flat" / "1.png")
    with pytest.raises(DataError, match=r"no class folders.*one folder per class"):
        ImageFolder(tmp_path / "flat")
    with pytest.raises(DataError, match="channels"):
        ImageFolder(tmp_path / "flat", channels=2)
    with pytest.raises(DataError, match="on_corrupt"):
        ImageFolder(tmp_path / "flat", on_corrupt="ignore")


def test_list_image_files(root, tmp_path):
    single = _save(tmp_path / "q.PNG")
    files = list_image_files([single, root / "cat"])
    assert files == [single, root / "cat" / "001.png", root / "cat" / "002.JPG", root / "cat" / "003.bmp"]
    assert list_image_files(str(root / "zebra")) == [root / "zebra" / "a.png", root / "zebra" / "b.png"]
    with pytest.raises(DataError, match=r"nothing\.png does not exist"):
        list_image_files([single, tmp_path / "nothing.png"])
    with pytest.raises(DataError, match="has no images"):
        list_image_files(root)  # only class folders and a README, no images directly inside
    with pytest.raises(DataError, match="not an image file"):
        list_image_files(root / "README.md")
