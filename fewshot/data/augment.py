"""Batched, on-tensor image augmentation for episodic training (torch only).

Each image gets its own random affine change (rotation, shear, scale, shift) and, optionally, an elastic
distortion (Simard et al., 2003): a random displacement field smoothed by a Gaussian. Both are folded into
one sampling grid, so a whole batch costs one GEMM (the affine grid) and one ``grid_sample`` (bilinear, zeros
padding: paper is 0 and ink 1, so what comes in from outside the image is paper).

Conventions (pixel units, ``y`` pointing down as displayed): a positive angle rotates counterclockwise on
screen (as ``torch.rot90(x, 1, dims=(-2, -1))``); a positive shift moves the content right / down (as
``torch.roll``); shear is along ``x`` (``x' = x + tan(shear) * y``); all about the image centre.

All randomness comes from the ``torch.Generator`` passed in, so a seeded generator reproduces the output
exactly. The same draws are used whatever the configured magnitudes (each parameter is ``magnitude * u`` for
a fixed uniform ``u``), so two configurations with the same seed differ only in strength.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from fewshot.data.task import Task

_KEYS = ("rotation", "shear", "scale", "shift", "elastic", "elastic_alpha", "elastic_sigma")
_KEY_HELP = (
    "rotation=DEG, shear=DEG, scale=LO:HI, shift=FRAC, elastic=ALPHA[:SIGMA] (or elastic_alpha=PX, "
    "elastic_sigma=PX); or 'none'"
)


@dataclass
class AugmentConfig:
    """Ranges of the random image changes; the default is the identity (``enabled`` is False).

    Attributes:
        rotation: maximum rotation in degrees; each image is rotated by ``U(-rotation, rotation)``.
        shear: maximum shear angle in degrees (along x), drawn as ``U(-shear, shear)``.
        scale: ``(lo, hi)`` range of the isotropic scale factor, drawn as ``U(lo, hi)``.
        shift: maximum translation as a fraction of the side, drawn per axis as ``U(-shift, shift)``.
        elastic_alpha: typical (RMS, per axis) elastic displacement in pixels; 0 turns it off. About 1.3 with
            ``elastic_sigma=4`` is the strength of Simard et al.'s ``alpha=34, sigma=4`` on 28x28 digits;
            several pixels scramble small glyphs (the field also stretches and compresses strokes locally).
        elastic_sigma: standard deviation in pixels of the Gaussian that smooths the displacement field
            (larger: smoother, more global distortions).
    """

    rotation: float = 0.0
    shear: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    shift: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0

    def __post_init__(self) -> None:
        for name in ("rotation", "shear", "shift", "elastic_alpha", "elastic_sigma"):
            setattr(self, name, float(getattr(self, name)))
        lo, hi = self.scale
        self.scale = (float(lo), float(hi))
        checks = (
            ("rotation", self.rotation, 0.0 <= self.rotation <= 180.0, "in [0, 180]"),
            ("shear", self.shear, 0.0 <= self.shear < 90.0, "in [0, 90)"),
            ("scale", self.scale, 0.0 < self.scale[0] <= self.scale[1] < math.inf, "0 < lo <= hi"),
            ("shift", self.shift, 0.0 <= self.shift <= 1.0, "in [0, 1]"),
            ("elastic_alpha", self.elastic_alpha, 0.0 <= self.elastic_alpha < math.inf, ">= 0"),
            ("elastic_sigma", self.elastic_sigma, 0.0 < self.elastic_sigma < math.inf, "> 0"),
        )
        for name, value, ok, need in checks:  # comparisons with NaN are False, so NaN is rejected too
            if not ok:
                raise ValueError(f"AugmentConfig: {name} must be {need} (got {value})")

    @property
    def affine(self) -> bool:
        """Whether the affine part (rotation, shear, scale, shift) is not the identity."""
        return self.rotation > 0 or self.shear > 0 or self.scale != (1.0, 1.0) or self.shift > 0

    @property
    def enabled(self) -> bool:
        """False when every change is the identity (then :func:`augment` returns its input)."""
        return self.affine or self.elastic_alpha > 0

    @classmethod
    def from_string(cls, spec: str) -> AugmentConfig:
        """Parse a CLI spec such as ``"rotation=10,shear=5,scale=0.9:1.1,shift=0.1,elastic=1.5:4"``.

        ``"none"`` or ``""`` gives the identity. Unlisted keys keep their defaults. Raises ``ValueError``
        naming the bad part and listing the valid keys.
        """
        text = spec.strip()
        if text.lower() in ("", "none", "off"):
            return cls()
        values: dict[str, object] = {}
        seen: set[str] = set()
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, raw = part.partition("=")
            key, raw = key.strip().lower(), raw.strip()
            if not sep or key not in _KEYS:
                raise ValueError(f"augment spec {spec!r}: unknown item {part!r}; valid keys: {_KEY_HELP}")
            if key in seen:
                raise ValueError(f"augment spec {spec!r}: {key} given twice")
            seen.add(key)
            try:
                numbers = [float(x) for x in raw.split(":")]
            except ValueError:
                raise ValueError(
                    f"augment spec {spec!r}: {key}={raw!r} is not a number; valid keys: {_KEY_HELP}"
                ) from None
            if key == "scale":
                if len(numbers) != 2:
                    raise ValueError(f"augment spec {spec!r}: scale needs LO:HI, e.g. scale=0.9:1.1 (got {raw!r})")
                values["scale"] = (numbers[0], numbers[1])
            elif key == "elastic":
                if len(numbers) not in (1, 2):
                    raise ValueError(f"augment spec {spec!r}: elastic needs ALPHA or ALPHA:SIGMA (got {raw!r})")
                values["elastic_alpha"] = numbers[0]
                if len(numbers) == 2:
                    values["elastic_sigma"] = numbers[1]
            elif len(numbers) != 1:
                raise ValueError(f"augment spec {spec!r}: {key} takes one number (got {raw!r})")
            else:
                values[key] = numbers[0]
        if "elastic" in seen and seen & {"elastic_alpha", "elastic_sigma"}:
            raise ValueError(f"augment spec {spec!r}: give elastic=ALPHA:SIGMA or elastic_alpha=/elastic_sigma=")
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValueError as error:
            raise ValueError(f"augment spec {spec!r}: {error}") from None

    def to_string(self) -> str:
        """The spec that :meth:`from_string` parses back into this configuration (``"none"`` if identity)."""
        if not self.enabled:
            return "none"
        default = AugmentConfig()
        parts = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("elastic") or value == getattr(default, f.name):
                continue
            parts.append(f"scale={value[0]:g}:{value[1]:g}" if f.name == "scale" else f"{f.name}={value:g}")
        if self.elastic_alpha > 0:
            parts.append(f"elastic={self.elastic_alpha:g}:{self.elastic_sigma:g}")
        return ",".join(parts)


def affine_theta(
    angle: torch.Tensor,
    shear: torch.Tensor,
    scale: torch.Tensor,
    shift_x: torch.Tensor,
    shift_y: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """``affine_grid`` matrices ``[B, 2, 3]`` for per-image forward transforms.

    Args:
        angle: ``[B]`` rotation in degrees (positive: counterclockwise on screen).
        shear: ``[B]`` x-shear angle in degrees.
        scale: ``[B]`` isotropic scale factor.
        shift_x, shift_y: ``[B]`` translation in pixels (positive: right, down).
        height, width: image size, so that the transform is in pixels (no stretch on non-square images).

    The forward map (about the centre, pixel units) is ``p -> R S_h S p + t``; ``affine_grid`` wants the map
    from output to input coordinates in normalised units, ``D^-1 M^-1 D`` and ``-D^-1 M^-1 t`` with
    ``D = diag(W/2, H/2)``.
    """
    a, tan_shear = torch.deg2rad(angle), torch.tan(torch.deg2rad(shear))
    cos, sin = torch.cos(a), torch.sin(a)
    # M^-1 = S^-1 Sh^-1 R^-1 with R = [[cos, sin], [-sin, cos]], Sh = [[1, tan_shear], [0, 1]], S = scale * I.
    inv_scale = 1.0 / scale
    m00 = (cos - tan_shear * sin) * inv_scale
    m01 = (-sin - tan_shear * cos) * inv_scale
    m10 = sin * inv_scale
    m11 = cos * inv_scale
    half_w, half_h = width / 2.0, height / 2.0
    tx = -(m00 * shift_x + m01 * shift_y) / half_w
    ty = -(m10 * shift_x + m11 * shift_y) / half_h
    row0 = torch.stack([m00, m01 * (half_h / half_w), tx], dim=-1)
    row1 = torch.stack([m10 * (half_w / half_h), m11, ty], dim=-1)
    return torch.stack([row0, row1], dim=1)


@functools.lru_cache(maxsize=32)
def _gaussian_operator(size: int, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of lattice noise onto ``size`` pixels: a ``[size, L]`` matrix, unit-norm rows.

    The lattice has spacing ``max(1, sigma)`` pixels (pixel centres when ``sigma <= 1``) and reaches
    ``3 sigma`` beyond both borders. Applied to white noise on the lattice it gives a smooth field with unit
    variance at every pixel and covariance ``exp(-d^2 / (4 sigma^2))`` at distance ``d``: the same field as
    Gaussian-blurring white noise at every pixel (the coarser lattice loses only spectral content above
    ``1 / (2 sigma)``, where the Gaussian's power is below ``exp(-pi^2)``), from far fewer random numbers,
    and without the weaker field that zero-padded blurring gives near the borders.
    Cached: do not modify the result.
    """
    step = max(1.0, sigma)
    before = math.ceil(3.0 * sigma / step)
    count = 2 * before + math.ceil((size - 1) / step) + 1
    lattice = (torch.arange(count, dtype=torch.float64) - before) * step
    pixels = torch.arange(size, dtype=torch.float64)
    kernel = torch.exp(-0.5 * ((pixels[:, None] - lattice[None, :]) / sigma) ** 2)
    return (kernel / kernel.norm(dim=1, keepdim=True)).float()


def elastic_field(
    batch: int, height: int, width: int, alpha: float, sigma: float, generator: torch.Generator
) -> torch.Tensor:
    """Random smooth displacement fields ``[B, 2, H, W]`` (x then y) in pixels, on the generator's device.

    White Gaussian noise smoothed separably by a Gaussian of std ``sigma`` pixels (two matrix products
    with the operators of :func:`_gaussian_operator`: a separable Gaussian blur, done as GEMMs because
    ``conv2d`` with one channel and a wide kernel is ~50x slower on CPU), times ``alpha``: each
    component is a stationary Gaussian field with RMS ``alpha`` pixels.
    """
    blur_h = _gaussian_operator(height, float(sigma)).to(generator.device)  # [H, Lh]
    blur_w = _gaussian_operator(width, float(sigma)).to(generator.device)  # [W, Lw]
    lh, lw = blur_h.shape[1], blur_w.shape[1]
    # White noise is white in any layout: draw it as [Lh, 2B * Lw] so that both passes are plain 2-D GEMMs
    # (a broadcast batched matmul is much slower on CPU).
    noise = torch.randn(lh, batch * 2 * lw, generator=generator, device=generator.device)
    field = ((blur_h @ noise).view(height * batch * 2, lw) @ (blur_w.T * alpha)).view(height, batch, 2, width)
    return field.permute(1, 2, 0, 3).contiguous()


def augment(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator, shared: bool = False
) -> torch.Tensor:
    """Randomly transform each image of a batch.

    Args:
        images: ``[B, C, H, W]`` floating point, paper 0 (anything outside the image samples as 0).
        config: the ranges; when ``not config.enabled`` the input itself is returned.
        generator: source of all randomness (its device, usually CPU, is where the draws are made; they are
            then moved to the images' device).
        shared: one draw applied to every image of the batch (test-time views: an image's view then does not
            depend on the other images of its batch).

    Returns:
        ``[B, C, H, W]`` on the images' device and dtype.
    """
    if not config.enabled:
        return images
    if images.dim() != 4:
        raise ValueError(f"augment: expected images [B, C, H, W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"augment: expected floating point images, got {images.dtype}")
    batch, _, height, width = images.shape
    if batch == 0:
        return images
    gen_device = generator.device
    draws = 1 if shared else batch
    u = torch.rand(draws, 5, generator=generator, device=gen_device)  # always drawn: same stream for any config
    lo, hi = config.scale
    theta = affine_theta(
        angle=(2.0 * u[:, 0] - 1.0) * config.rotation,
        shear=(2.0 * u[:, 1] - 1.0) * config.shear,
        scale=lo + (hi - lo) * u[:, 2],
        shift_x=(2.0 * u[:, 3] - 1.0) * (config.shift * width),
        shift_y=(2.0 * u[:, 4] - 1.0) * (config.shift * height),
        height=height,
        width=width,
    )
    dtype = images.dtype if images.dtype in (torch.float32, torch.float64) else torch.float32
    # The sampling grid, channel-first [B, 2, H*W]: theta @ [x; y; 1] over the pixel centres (what
    # affine_grid computes, but one GEMM is ~15x faster on CPU), plus the elastic displacement.
    theta = theta.expand(batch, 2, 3).to(images.device, dtype).reshape(batch * 2, 3)
    base = _base_grid(height, width).to(images.device, dtype)
    if config.elastic_alpha > 0:
        field = elastic_field(draws, height, width, config.elastic_alpha, config.elastic_sigma, generator)
        field = field.expand(batch, 2, height, width)
        to_grid = torch.tensor([2.0 / width, 2.0 / height], device=field.device).view(1, 2, 1, 1)  # pixels -> grid
        offset = (field * to_grid).to(images.device, dtype).reshape(batch * 2, height * width)
        grid = torch.addmm(offset, theta, base)
    else:
        grid = theta @ base
    grid = grid.view(batch, 2, height, width).permute(0, 2, 3, 1)  # [B, H, W, 2] (a view: grid_sample takes it)
    out = F.grid_sample(images.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.to(images.dtype)


@functools.lru_cache(maxsize=32)
def _base_grid(height: int, width: int) -> torch.Tensor:
    """``[3, H*W]`` homogeneous normalised coordinates ``(x, y, 1)`` of the pixel centres (row-major),
    as ``affine_grid`` with ``align_corners=False`` uses them. Cached: do not modify the result."""
    xs = (torch.arange(width, dtype=torch.float64) * 2 + 1) / width - 1
    ys = (torch.arange(height, dtype=torch.float64) * 2 + 1) / height - 1
    grid = torch.stack([xs.expand(height, width), ys[:, None].expand(height, width), torch.ones(height, width)])
    return grid.reshape(3, height * width).float()


def augment_task(task: Task, config: AugmentConfig, generator: torch.Generator) -> Task:
    """A copy of ``task`` with support and query images augmented (one batch; labels untouched).

    Returns ``task`` itself when ``not config.enabled``.
    """
    if not config.enabled:
        return task
    n = task.support_images.shape[0]
    both = augment(torch.cat([task.support_images, task.query_images]), config, generator)
    return replace(task, support_images=both[:n], query_images=both[n:])
