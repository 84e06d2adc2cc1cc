"""Omniglot (Lake et al. 2015), read from the official release zips or their extracted folders."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from fewshot.data.base import DataError, FewShotDataset
from fewshot.data.download import download_file
from fewshot.data.images import decode_image

RELEASE_URL = "https://github.com/brendenlake/omniglot/raw/master/python"


@dataclass(frozen=True)
class ReleaseFile:
    stem: str  # zip name without .zip; also its top-level folder
    checksum: tuple[str, str]  # (algorithm, hex digest) of the zip


# md5 sums of the full sets are the ones published with the release's users (e.g. torchvision);
# the minimal sets' sha256 were computed from the release files.
RELEASE_FILES = {
    "background": ReleaseFile("images_background", ("md5", "68d2efa1b9178cc56df9314c21c6e718")),
    "evaluation": ReleaseFile("images_evaluation", ("md5", "6b91aef0f799c5bb55b94e3f2daec811")),
    "minimal1": ReleaseFile(
        "images_background_small1", ("sha256", "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4")
    ),
    "minimal2": ReleaseFile(
        "images_background_small2", ("sha256", "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f")
    ),
}
SPLITS = {
    "background": ["background"],
    "evaluation": ["evaluation"],
    "minimal1": ["minimal1"],
    "minimal2": ["minimal2"],
    "minimal": ["minimal1", "minimal2"],
}
ROTATIONS = (0, 90, 180, 270)

# Decoded images per (file, size), so that several datasets over the same files decode them once.
_CACHE: dict[tuple, tuple[list[str], torch.Tensor]] = {}


def _read_release(root: Path, release: ReleaseFile, image_size: int) -> tuple[list[str], torch.Tensor]:
    """Item ids (``stem/Alphabet/characterNN/file.png``) and images ``[n, 1, S, S]`` of one release file."""
    folder, archive = root / release.stem, root / f"{release.stem}.zip"
    source = folder if folder.is_dir() else archive
    key = (str(source.resolve()), source.stat().st_mtime_ns, image_size)
    if key in _CACHE:
        return _CACHE[key]
    ids: list[str] = []
    images: list[torch.Tensor] = []
    if source is folder:
        for path in sorted(folder.glob("*/*/*.png")):
            ids.append(path.relative_to(root).as_posix())
            images.append(decode_image(path, image_size, invert=True))
    else:
        try:
            with zipfile.ZipFile(archive) as zf:
                names = sorted(n for n in zf.namelist() if n.endswith(".png") and len(PurePosixPath(n).parts) == 4)
                for name in names:
                    ids.append(name)
                    images.append(decode_image(zf.read(name), image_size, invert=True, name=f"{archive}:{name}"))
        except zipfile.BadZipFile:
            raise DataError(f"{archive} is not a valid zip file; delete it and download it again") from None
    if not ids:
        raise DataError(f"{source} holds no Omniglot images (expected {release.stem}/<alphabet>/<character>/*.png)")
    _CACHE[key] = (ids, torch.stack(images))
    return _CACHE[key]


def ensure_release(root: Path, part: str, download: bool) -> None:
    """Make sure ``root`` holds the release file of ``part`` (zip or folder), downloading it if allowed."""
    release = RELEASE_FILES[part]
    if (root / release.stem).is_dir() or (root / f"{release.stem}.zip").is_file():
        return
    if not download:
        raise DataError(
            f"Omniglot split needs {release.stem}.zip (or its extracted folder) in {root}; put it there "
            f"(from {RELEASE_URL}/{release.stem}.zip) or pass download=True / --download"
        )
    download_file(f"{RELEASE_URL}/{release.stem}.zip", root / f"{release.stem}.zip", release.checksum)


class Omniglot(FewShotDataset):
    """Omniglot characters as classes, alphabets as groups, ink = 1.

    Args:
        root: folder holding the release zips (``images_background.zip``, ``images_evaluation.zip``,
            ``images_background_small1.zip``, ``images_background_small2.zip``) or their extracted folders.
        split: ``background``, ``evaluation``, ``minimal1``, ``minimal2`` or ``minimal`` (the union of the two
            minimal sets, 8 alphabets and 242 characters; characters in both appear once).
        image_size: side of the square images (28 by default; the originals are 105).
        rotations: add the 90, 180 and 270 degree rotations of each character as classes of their own
            (same alphabet), the usual training augmentation; off by default.
        flips: add the mirror image (left-right) of each character, rotated copies included, as a class of
            its own (same alphabet); doubles the classes; off by default.
        download: fetch missing release files (checksum-verified) when online.

    Class names are ``"Alphabet/characterNN"`` (``"…/rot90"`` for rotated copies); item ids are the paths
    inside the release, e.g. ``images_background_small2/Korean/character07/0401_01.png``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "minimal",
        image_size: int = 28,
        rotations: bool = False,
        download: bool = False,
        flips: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise DataError(f"unknown Omniglot split '{split}'; choose one of {', '.join(SPLITS)}")
        root = Path(root).expanduser()
        if not root.is_dir() and not download:
            raise DataError(
                f"Omniglot root {root} does not exist; point --root at the folder holding the release zips"
            )
        self.root, self.split, self.image_size = root, split, image_size
        self.rotations, self.flips = rotations, flips
        ids: list[str] = []
        chunks: list[torch.Tensor] = []
        seen: set[str] = set()
        for part in SPLITS[split]:
            ensure_release(root, part, download)
            part_ids, part_images = _read_release(root, RELEASE_FILES[part], image_size)
            characters = ["/".join(PurePosixPath(item).parts[1:3]) for item in part_ids]
            keep = [i for i, c in enumerate(characters) if c not in seen]
            seen |= set(characters)
            ids += [part_ids[i] for i in keep]
            chunks.append(part_images[keep])
        characters = ["/".join(PurePosixPath(item).parts[1:3]) for item in ids]
        class_names = sorted(set(characters))
        index = {name: c for c, name in enumerate(class_names)}
        item_classes = np.array([index[c] for c in characters])
        images = torch.cat(chunks)
        if rotations:
            item_classes = np.concatenate([item_classes + r * len(class_names) for r in range(len(ROTATIONS))])
            ids = [f"{item}@rot{angle}" if angle else item for angle in ROTATIONS for item in ids]
            class_names = [f"{name}/rot{angle}" if angle else name for angle in ROTATIONS for name in class_names]
            images = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(len(ROTATIONS))])
        if flips:
            item_classes = np.concatenate([item_classes, item_classes + len(class_names)])
            ids = ids + [f"{item}@flip" for item in ids]
            class_names = class_names + [f"{name}/flip" for name in class_names]
            images = torch.cat([images, torch.flip(images, dims=(3,))])
        super().__init__(ids, item_classes, class_names, [name.split("/")[0] for name in class_names])
        self.images = images.contiguous()

    def load_item(self, index: int) -> torch.Tensor:
        assert self.images is not None
        return self.images[index]
