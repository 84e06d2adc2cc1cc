"""Lake et al. (2015)'s 20-way within-alphabet one-shot classification runs.

The runs ship as ``all_runs.zip`` in ``python/one-shot-classification`` of github.com/brendenlake/omniglot.
It holds folders ``run01`` … ``run20`` (possibly under a top-level ``all_runs/``), each with::

    training/class01.png … class20.png   one image per class (the support set)
    test/item01.png … item20.png         the queries
    class_labels.txt                     lines "run01/test/item01.png run01/training/class08.png"

The paths in ``class_labels.txt`` are relative to the folder that holds the runs. Images are black ink on
white; they are read inverted, so ink is 1 and paper 0 (as in the Omniglot reader).
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from fewshot.data.base import DataError
from fewshot.data.images import IMAGE_SUFFIXES, decode_image
from fewshot.data.task import Task

_RUN_NAME = re.compile(r"run\d+", re.IGNORECASE)
_WHERE = (
    "get all_runs.zip from python/one-shot-classification of https://github.com/brendenlake/omniglot and "
    "pass the zip itself or the folder it extracts to"
)


def _natural_key(name: str) -> list:
    """Sort key that orders ``class2`` before ``class10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


class _Source:
    """The files of the runs, as paths relative to the folder that holds them (``run01/test/item01.png``)."""

    def __init__(
        self,
        files: list[str],
        read: Callable[[str], bytes],
        describe: Callable[[str], str],
        close: Callable[[], None] = lambda: None,
    ) -> None:
        self.files = set(files)
        self.read = read  # relative path -> bytes
        self.describe = describe  # relative path -> how to name it in messages
        self.close = close

    def runs(self) -> list[str]:
        return sorted({f.split("/", 1)[0] for f in self.files}, key=_natural_key)

    def listdir(self, folder: str) -> list[str]:
        """Image files directly inside ``folder`` (relative), in natural order."""
        prefix = folder.rstrip("/") + "/"
        names = [f for f in self.files if f.startswith(prefix) and "/" not in f[len(prefix) :]]
        return sorted((f for f in names if _is_image(f.rsplit("/", 1)[-1])), key=_natural_key)


def _split_base(parts: Sequence[str]) -> tuple[tuple[str, ...], str] | None:
    """``("all_runs", "run01", "test", "item01.png")`` -> ``(("all_runs",), "run01/test/item01.png")``."""
    for i, part in enumerate(parts[:-1]):
        if _RUN_NAME.fullmatch(part):
            return tuple(parts[:i]), "/".join(parts[i:])
    return None


def _pick_base(found: dict[tuple[str, ...], list[str]], where: Path) -> tuple[tuple[str, ...], list[str]]:
    """Choose the folder holding the runs: the shallowest one that has any."""
    if not found:
        raise DataError(
            f"no one-shot runs (folders run01, run02, … with training/ and test/) in {where}; {_WHERE}"
        )
    base = min(found, key=lambda b: (len(b), b))
    return base, found[base]


def _zip_source(path: Path) -> _Source:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{path} is not a readable zip file ({err}); {_WHERE}") from None
    found: dict[tuple[str, ...], list[str]] = {}
    for member in archive.namelist():
        parts = PurePosixPath(member).parts
        if member.endswith("/") or any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        split = _split_base(parts)
        if split is not None:
            found.setdefault(split[0], []).append(split[1])
    if not found:
        archive.close()
    base, files = _pick_base(found, path)
    prefix = "".join(p + "/" for p in base)

    def read(rel: str) -> bytes:
        return archive.read(prefix + rel)

    return _Source(files, read, lambda rel: f"{prefix}{rel} in {path}", archive.close)


def _run_dirs(folder: Path) -> list[Path]:
    return [d for d in folder.iterdir() if d.is_dir() and _RUN_NAME.fullmatch(d.name)]


def _folder_source(path: Path) -> _Source:
    # ``path`` is the folder holding the runs, one level above it (holding ``all_runs/``), or a single run.
    if _RUN_NAME.fullmatch(path.name) and (path / "class_labels.txt").is_file():
        base, run_dirs = path.parent, [path]
    else:
        base, run_dirs = path, _run_dirs(path)
        subs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
        for sub in subs if not run_dirs else []:
            if _run_dirs(sub):
                base, run_dirs = sub, _run_dirs(sub)
                break
    files = []
    for run in run_dirs:
        for f in run.rglob("*"):
            rel = f.relative_to(base)
            if f.is_file() and not any(p.startswith(".") for p in rel.parts):
                files.append(rel.as_posix())
    if not files:
        _pick_base({}, path)

    def read(rel: str) -> bytes:
        return (base / rel).read_bytes()

    return _Source(files, read, lambda rel: str(base / rel))


def _open(path: Path) -> _Source:
    if not path.exists():
        raise DataError(f"the one-shot classification runs {path} do not exist; {_WHERE}")
    if path.is_dir():
        return _folder_source(path)
    if zipfile.is_zipfile(path):
        return _zip_source(path)
    raise DataError(f"{path} is neither a folder nor a zip file; {_WHERE}")


def _read_labels(source: _Source, run: str, support_ids: list[str], query_ids: list[str]) -> torch.Tensor:
    """Query labels ``[M]`` (index into ``support_ids``) from ``run/class_labels.txt``."""
    label_file = f"{run}/class_labels.txt"
    if label_file not in source.files:
        raise DataError(f"{source.describe(label_file)} is missing; each run needs its class_labels.txt")
    text = source.read(label_file).decode("utf-8", errors="replace")
    support_index = {s: i for i, s in enumerate(support_ids)}
    labels: dict[str, int] = {}

    def resolve(name: str, lineno: int) -> str:
        # Paths are relative to the folder holding the runs; accept ones relative to the run folder too.
        name = name.replace("\\", "/")
        name = name[2:] if name.startswith("./") else name
        for candidate in (name, f"{run}/{name}"):
            if candidate in source.files:
                return candidate
        raise DataError(
            f"{source.describe(label_file)} line {lineno} names {name}, which is not in the runs "
            "(the file is missing); re-extract or re-download all_runs.zip"
        )

    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise DataError(
                f"{source.describe(label_file)} line {lineno} is malformed: {line.strip()!r}; expected "
                f"'{run}/test/itemNN.png {run}/training/classNN.png'"
            )
        query, answer = resolve(fields[0], lineno), resolve(fields[1], lineno)
        if query not in query_ids:
            raise DataError(
                f"{source.describe(label_file)} line {lineno}: {query} is not a test image of {run}"
            )
        if answer not in support_index:
            raise DataError(
                f"{source.describe(label_file)} line {lineno}: {answer} is not a training image of {run}"
            )
        if query in labels:
            raise DataError(f"{source.describe(label_file)} line {lineno}: {query} is labelled twice")
        labels[query] = support_index[answer]
    unlabelled = [q for q in query_ids if q not in labels]
    if unlabelled:
        raise DataError(
            f"{source.describe(label_file)} gives no label for {len(unlabelled)} test image(s), e.g. "
            f"{unlabelled[0]}"
        )
    return torch.tensor([labels[q] for q in query_ids], dtype=torch.int64)


def load_lake_runs(
    path: str | Path, image_size: int | tuple[int, int] = 28, channels: int = 1
) -> list[tuple[str, Task]]:
    """Read every run of ``all_runs.zip`` (or its extracted folder) as a one-shot :class:`Task`.

    Returns ``(run name, task)`` pairs sorted by run name. Each task has ``support_images`` ``[N, 1, S, S]``
    (the N training images, labels ``0..N-1`` in ``class01..`` order), ``query_images`` ``[M, 1, S, S]``
    (``item01..`` order) and ``query_labels`` ``[M]`` from ``class_labels.txt``; ``S = image_size`` (or
    ``(H, W)``), ink 1; ``channels=3`` repeats the gray level for a model trained on RGB images.
    """
    source = _open(Path(path))
    try:
        return [(run, _read_run(source, run, image_size, channels)) for run in source.runs()]
    finally:
        source.close()


def _read_run(source: _Source, run: str, image_size: int | tuple[int, int], channels: int) -> Task:
    """One run as a Task (see :func:`load_lake_runs`)."""
    support_ids = source.listdir(f"{run}/training")
    query_ids = source.listdir(f"{run}/test")
    for kind, ids in (("training", support_ids), ("test", query_ids)):
        if not ids:
            raise DataError(f"{source.describe(f'{run}/{kind}')} has no images; {_WHERE}")
    query_labels = _read_labels(source, run, support_ids, query_ids)

    def decode(rel: str) -> torch.Tensor:
        return decode_image(source.read(rel), image_size, channels=channels, invert=True,
                            name=source.describe(rel))

    return Task(
        support_images=torch.stack([decode(s) for s in support_ids]),
        support_labels=torch.arange(len(support_ids)),
        query_images=torch.stack([decode(q) for q in query_ids]),
        query_labels=query_labels,
        class_ids=list(range(len(support_ids))),
        class_names=[PurePosixPath(s).stem for s in support_ids],
        support_ids=support_ids,
        query_ids=query_ids,
    )


def write_lake_runs(
    root: str | Path,
    runs: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor | Sequence[int]]],
) -> Path:
    """Write runs in the format of ``all_runs`` (the folder holding ``run01``, ``run02``, …) under ``root``.

    Each run is ``(support [N, 1, H, W], query [M, 1, H, W], query_labels [M])`` with images in ``[0, 1]``,
    ink 1; they are saved as black-on-white PNGs like the originals. Useful to evaluate on your own runs
    with the same reader, and to make test data. Returns ``root``.
    """
    root = Path(root)
    for r, (support, query, labels) in enumerate(runs, start=1):
        run = f"run{r:02d}"
        labels = [int(x) for x in torch.as_tensor(labels).reshape(-1).tolist()]
        if len(labels) != len(query):
            raise DataError(f"{run}: {len(query)} query images but {len(labels)} labels")
        if any(not 0 <= x < len(support) for x in labels):
            raise DataError(f"{run}: query labels must be in 0..{len(support) - 1}")
        lines = []
        for kind, stem, images in (("training", "class", support), ("test", "item", query)):
            (root / run / kind).mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images, start=1):
                array = image.detach().float().cpu().reshape(image.shape[-2:]).clamp(0, 1).numpy()
                pixels = np.round((1.0 - array) * 255.0).astype(np.uint8)
                Image.fromarray(pixels).save(root / run / kind / f"{stem}{i:02d}.png")
        for i, label in enumerate(labels, start=1):
            lines.append(f"{run}/test/item{i:02d}.png {run}/training/class{label + 1:02d}.png")
        (root / run / "class_labels.txt").write_text("\n".join(lines) + "\n")
    return root
