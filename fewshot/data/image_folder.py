"""Users' own images: one folder per class, ``root/<class name>/*.png|jpg|jpeg|bmp``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from fewshot.data.base import DataError, FewShotDataset
from fewshot.data.images import IMAGE_SUFFIXES, CorruptImageError, decode_image

_SUFFIXES = ", ".join(IMAGE_SUFFIXES)


def is_image_file(path: Path) -> bool:
    """A visible file whose suffix is an image suffix (case-insensitive)."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _images_in(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted((f for f in folder.iterdir() if is_image_file(f)), key=lambda f: f.name)


def _check_size(image_size: int | tuple[int, int]) -> int | tuple[int, int]:
    sides = (image_size,) if isinstance(image_size, int) else tuple(image_size)
    if len(sides) not in (1, 2) or any(not isinstance(s, int) or s < 1 for s in sides):
        raise DataError(f"image_size must be a positive int or (height, width), not {image_size!r}")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


class ImageFolder(FewShotDataset):
    """A few-shot dataset from ``root/<class name>/<image files>``, decoded once and kept in memory.

    Class names are the folder names, sorted; each class is its own group. Item ids are paths relative to
    ``root`` (``"cat/001.png"``). Files with other suffixes and hidden files are ignored; an image file that
    cannot be decoded is corrupt. ``self.images`` is ``[n, channels, H, W]`` in ``[0, 1]``.

    Args:
        root: the folder holding one folder per class.
        image_size: output side, or ``(height, width)``; every image is resized to it.
        channels: 1 (grayscale) or 3 (RGB); images are converted as needed.
        invert: ``1 - pixel`` (dark ink on light paper becomes 1, like Omniglot).
        on_corrupt: ``"error"`` raises :class:`CorruptImageError` naming the file; ``"skip"`` warns, leaves
            the file out and records it in ``self.skipped``.
        allow_empty: drop class folders without (readable) images, with a warning, instead of raising.
    """

    def __init__(
        self,
        root: str | Path,
        image_size: int | tuple[int, int] = 28,
        channels: int = 1,
        invert: bool = False,
        on_corrupt: str = "error",
        allow_empty: bool = False,
    ) -> None:
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), not {channels!r}")
        if on_corrupt not in ("error", "skip"):
            raise DataError(f"on_corrupt must be 'error' or 'skip', not {on_corrupt!r}")
        self.root = Path(root)
        self.image_size = _check_size(image_size)
        self.channels, self.invert = channels, invert
        self.skipped: list[str] = []  # item ids of corrupt files left out (on_corrupt="skip")

        class_dirs = self._class_dirs()
        paths: list[Path] = []
        classes: list[int] = []
        images: list[torch.Tensor] = []
        names: list[str] = []
        for folder in class_dirs:
            found = _images_in(folder)
            kept = []
            for path in found:
                try:
                    images.append(self._decode(path))
                except CorruptImageError:
                    if on_corrupt == "error":
                        raise
                    self.skipped.append(path.relative_to(self.root).as_posix())
                    warnings.warn(f"skipping corrupt image {path}", stacklevel=2)
                    continue
                kept.append(path)
            if not kept:
                self._empty_class(folder, corrupt=len(found), allow_empty=allow_empty)
                continue
            paths += kept
            classes += [len(names)] * len(kept)
            names.append(folder.name)
        if not names:
            raise DataError(
                f"no class folder in {self.root} has a readable image; every class needs at least one image"
            )
        super().__init__([p.relative_to(self.root).as_posix() for p in paths], classes, names)
        self.paths = paths
        self.images = torch.stack(images)

    def _class_dirs(self) -> list[Path]:
        root = self.root
        if not root.exists():
            raise DataError(f"image folder {root} does not exist; expected {root}/<class name>/<images>")
        if not root.is_dir():
            hint = " (extract the archive first)" if root.suffix.lower() in (".zip", ".tar", ".gz") else ""
            raise DataError(f"{root} is a file, not a folder{hint}; expected {root}/<class name>/<images>")
        dirs = sorted(
            (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name
        )
        if not dirs:
            loose = ""
            if _images_in(root):
                loose = " (it holds images directly: move them into one folder per class)"
            raise DataError(f"no class folders in {root}{loose}; expected {root}/<class name>/<images>")
        return dirs

    def _empty_class(self, folder: Path, corrupt: int, allow_empty: bool) -> None:
        """Warn about (allow_empty) or reject a class folder left without images."""
        what = f"has no images ({_SUFFIXES})"
        if corrupt:
            what = f"has no readable images ({corrupt} corrupt skipped)"
        if allow_empty:
            warnings.warn(f"dropping class folder {folder}: it {what}", stacklevel=3)
            return
        hint = ""
        if any(d.is_dir() for d in folder.iterdir()):
            hint = " (subfolders are not searched: point root at the folder holding the class folders)"
        raise DataError(
            f"class folder {folder} {what}{hint}; every class needs at least one image: add images or remove "
            "the folder (in Python, ImageFolder(..., allow_empty=True) drops empty classes with a warning)"
        )

    def _decode(self, path: Path) -> torch.Tensor:
        return decode_image(path, self.image_size, channels=self.channels, invert=self.invert, name=str(path))

    def load_item(self, index: int) -> torch.Tensor:
        """Image of item ``index`` decoded from its file, ``[channels, H, W]``."""
        return self._decode(self.paths[index])


def list_image_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image files named by ``paths``: files as given, folders expanded (non-recursively, sorted).

    Raises :class:`DataError` for a path that does not exist, a file that is not an image, or a folder
    without images.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[Path] = []
    for item in map(Path, paths):
        if not item.exists():
            raise DataError(f"{item} does not exist")
        if item.is_dir():
            found = _images_in(item)
            if not found:
                raise DataError(f"folder {item} has no images ({_SUFFIXES})")
            out += found
        elif item.suffix.lower() in IMAGE_SUFFIXES:
            out.append(item)
        else:
            raise DataError(f"{item} is not an image file (expected {_SUFFIXES})")
    return out
