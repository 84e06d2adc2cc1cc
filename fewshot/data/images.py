"""Decoding image files into tensors, with errors that name the file."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fewshot.data.base import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class CorruptImageError(DataError):
    """An image file that cannot be decoded."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path


def decode_image(
    source: str | Path | bytes,
    size: int | tuple[int, int],
    channels: int = 1,
    invert: bool = False,
    name: str | None = None,
) -> torch.Tensor:
    """Decode a file (or its bytes) to a ``[channels, H, W]`` float tensor in ``[0, 1]``.

    Args:
        size: output side, or ``(height, width)``; resized with an antialiasing filter.
        channels: 1 (grayscale) or 3 (RGB).
        invert: ``1 - pixel``; Omniglot uses it so that ink is 1 and paper 0.
        name: how to name the file in an error message (defaults to the path).
    """
    label = name or str(source if not isinstance(source, bytes) else "<bytes>")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            img.load()
            img = img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        reason = str(err) or type(err).__name__
        if isinstance(err, UnidentifiedImageError):
            reason = "not a readable image (unknown format or truncated file)"
        raise CorruptImageError(label, reason) from None
    height, width = (size, size) if isinstance(size, int) else size
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.LANCZOS if min(img.size) > 2 * height
                         else Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.float32) / 255.0
    if invert:
        array = 1.0 - array
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()
