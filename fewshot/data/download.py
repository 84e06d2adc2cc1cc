"""Downloading a release file with a checksum check, and a clear message when offline."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from fewshot.data.base import DataError


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, destination: Path, checksum: tuple[str, str], timeout: float = 30.0) -> Path:
    """Fetch ``url`` to ``destination`` and verify ``checksum = (algorithm, hex digest)``.

    The file appears at ``destination`` only once complete and verified. Raises :class:`DataError` when the
    network is unreachable (saying where to put the file by hand) or when the checksum does not match.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    algorithm, expected = checksum
    with tempfile.NamedTemporaryFile(dir=destination.parent, suffix=".part", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, tmp)
        except (urllib.error.URLError, OSError) as err:
            tmp.close()
            tmp_path.unlink(missing_ok=True)
            raise DataError(
                f"could not download {url} ({getattr(err, 'reason', err)}); if this machine is offline, "
                f"download it elsewhere and put it at {destination}"
            ) from None
    actual = file_digest(tmp_path, algorithm)
    if actual != expected:
        tmp_path.unlink(missing_ok=True)
        raise DataError(f"{url} downloaded with {algorithm} {actual}, expected {expected}; try again later")
    tmp_path.replace(destination)
    return destination
