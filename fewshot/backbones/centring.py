"""Moving each image's ink so that its centre of mass sits at the image centre."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def centre_of_mass(images: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` non-negative ink -> ``[B, 2]`` centre of mass ``(y, x)`` in pixels (image centre if blank)."""
    mass = images.float().sum(1)  # [B, H, W]
    height, width = mass.shape[-2:]
    total = mass.sum((1, 2))
    rows = torch.arange(height, dtype=mass.dtype, device=mass.device)
    cols = torch.arange(width, dtype=mass.dtype, device=mass.device)
    centre = torch.tensor([(height - 1) / 2, (width - 1) / 2], dtype=mass.dtype, device=mass.device)
    y = (mass.sum(2) * rows).sum(1) / total.clamp_min(1e-12)
    x = (mass.sum(1) * cols).sum(1) / total.clamp_min(1e-12)
    return torch.where((total > 0)[:, None], torch.stack([y, x], 1), centre)


def centre_ink(images: torch.Tensor) -> torch.Tensor:
    """Translate each image of ``[B, C, H, W]`` (ink > 0 on paper 0) by a sub-pixel shift so that its centre
    of mass is the image centre; bilinear, paper fills what comes in from outside."""
    height, width = images.shape[-2:]
    centre = torch.tensor([(height - 1) / 2, (width - 1) / 2], device=images.device)
    shift = centre - centre_of_mass(images)  # pixels to move the ink by, (y, x)
    theta = torch.zeros(images.shape[0], 2, 3, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    # the output pixel at p samples the input at p - shift; normalised units are 2 / side per pixel
    theta[:, 0, 2] = -shift[:, 1] * 2 / width
    theta[:, 1, 2] = -shift[:, 0] * 2 / height
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False).to(images.dtype)


class InkCentring(nn.Module):
    """``[B, C, H, W]`` -> the same images, each moved so that its ink's centre of mass is at the centre.

    Drawers place a character differently in its box (on Omniglot `minimal` at 28x28 the centre of mass of one
    character's 20 drawings varies by about 1.5 pixels in each direction), and that offset is noise to a
    one-shot comparison. It has no parameters; images must have ink > 0 on a paper of 0 (Omniglot's layout).
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return centre_ink(images)
