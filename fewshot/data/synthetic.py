"""Procedurally generated handwriting-like characters: the built-in data of the demo and of fast tests.

Each class is a character made of a few smooth pen strokes (Catmull-Rom splines through random control
points, later strokes often starting on an earlier one, as in handwriting). Each image of a class redraws
those strokes with jittered control points, a small random affine change (rotation, scale, shear, shift)
and a random pen width, like different people writing the same character. Images are rendered at 4x
resolution with PIL and box-filtered down, so they are antialiased; ink is 1 and paper 0, as for Omniglot.

Everything is a pure function of the seed: class ``k`` (``k = class_offset + c``) depends only on
``(seed, k)`` and its image ``i`` only on ``(seed, k, i)``, so a class looks the same whatever
``num_classes`` is, and a large ``class_offset`` gives a disjoint set of unseen classes.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import torch
from PIL import Image, ImageDraw

from fewshot.data.base import DataError, FewShotDataset

_SUPERSAMPLE = 4  # render at 4x and box-filter down: antialiasing
_SAMPLES_PER_SEGMENT = 8  # points drawn per spline segment between two control points

# Catmull-Rom basis: point(t) = [1, t, t^2, t^3] @ M @ [P0, P1, P2, P3] for the segment from P1 to P2.
_T = np.linspace(0.0, 1.0, _SAMPLES_PER_SEGMENT, endpoint=False)
_CATMULL_ROM = np.stack([np.ones_like(_T), _T, _T**2, _T**3], axis=1) @ (
    0.5 * np.array([[0, 2, 0, 0], [-1, 0, 1, 0], [2, -5, 4, -1], [-1, 3, -3, 1]], dtype=np.float64)
)  # [_SAMPLES_PER_SEGMENT, 4]

# Stream tags that keep the class and instance random streams apart.
_CLASS_STREAM = 0
_INSTANCE_STREAM = 1


@cache
def _spline_matrix(num_points: int) -> np.ndarray:
    """Linear map from ``num_points`` control points to the samples of their Catmull-Rom spline.

    Returns ``W`` ``[s, num_points]`` with ``curve = W @ points``; the end tangents mirror the second and
    second-to-last points. Rows sum to 1, so the spline of an affine image of the points is the affine image
    of the spline: jitter and affine changes can be applied to control points only.
    """
    # Padded points [2*P0 - P1, P0, ..., Pm-1, 2*Pm-1 - Pm-2] as a linear function of the points.
    m = num_points
    pad = np.zeros((m + 2, m))
    pad[1:-1] = np.eye(m)
    pad[0, 0], pad[0, 1] = 2.0, -1.0
    pad[-1, -1], pad[-1, -2] = 2.0, -1.0
    rows = [_CATMULL_ROM @ pad[g : g + 4] for g in range(m - 1)]  # each [_SAMPLES_PER_SEGMENT, m]
    rows.append(np.eye(m)[-1:])  # the last control point itself
    matrix = np.concatenate(rows)
    matrix.flags.writeable = False  # shared through the cache
    return matrix


def _path(stroke: np.ndarray) -> np.ndarray:
    """Sampled spline ``[s, 2]`` through the control points ``stroke`` ``[m, 2]``."""
    return _spline_matrix(len(stroke)) @ stroke


class Glyph:
    """The strokes of one character: control points ``[M, 2]`` (all strokes, canvas units in ``[0, 1]``)
    and, for drawing, the spline operator ``[S, M]`` and where each stroke's samples start and end."""

    def __init__(self, strokes: list[np.ndarray]) -> None:
        self.strokes = strokes
        self.points = np.concatenate(strokes)  # [M, 2]
        self.centred = self.points - 0.5  # about the canvas centre, where the affine changes act
        blocks = [_spline_matrix(len(s)) for s in strokes]
        self.operator = np.zeros((sum(b.shape[0] for b in blocks), len(self.points)))  # block diagonal
        r = c = 0
        self.bounds: list[tuple[int, int]] = []
        for b in blocks:
            self.operator[r : r + b.shape[0], c : c + b.shape[1]] = b
            self.bounds.append((r, r + b.shape[0]))
            r, c = r + b.shape[0], c + b.shape[1]

    def curves(self, points: np.ndarray | None = None) -> list[np.ndarray]:
        """Sampled pen paths, one ``[s, 2]`` array per stroke, of the control points ``points`` ``[M, 2]``."""
        samples = self.operator @ (self.points if points is None else points)
        return [samples[a:b] for a, b in self.bounds]


def _stroke(rng: np.random.Generator, start: np.ndarray, heading: float) -> np.ndarray:
    """Control points ``[m, 2]`` of one pen stroke from ``start``: a bar, an arc, a wave or a corner."""
    kind = rng.choice(["bar", "bar", "arc", "arc", "wave", "corner"])
    if kind == "bar":
        steps, turns = [rng.uniform(0.35, 0.7)], [0.0]
    elif kind == "arc":  # from a gentle bow to almost a full circle
        n = int(rng.integers(3, 7))
        turn = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0)
        steps, turns = list(rng.uniform(0.13, 0.22, n)), [0.0] + [turn] * (n - 1)
    elif kind == "wave":  # an S: turns one way, then the other
        n = int(rng.integers(4, 6))
        turn = rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.1)
        steps = list(rng.uniform(0.14, 0.22, n))
        turns = [0.0] + [turn if j < n // 2 else -turn for j in range(1, n)]
    else:  # a corner (L, V) whose tip the spline rounds a little
        corner = rng.choice([-1.0, 1.0]) * rng.uniform(1.3, 2.4)
        steps, turns = list(rng.uniform(0.25, 0.45, 2)), [0.0, corner]
    points = [start]
    for step, turn in zip(steps, turns, strict=True):
        heading += turn + rng.normal(0.0, 0.1)
        points.append(points[-1] + step * np.array([np.cos(heading), np.sin(heading)]))
    return np.stack(points)


def class_glyph(seed: int, class_key: int) -> Glyph:
    """The strokes of character ``class_key``, a pure function of ``(seed, class_key)``.

    Two to four strokes (bars, arcs, waves, corners); most strokes after the first start on an earlier one,
    across it; a stroke that would mostly retrace earlier ink is redrawn. The character is then centred and
    scaled so that its longer side spans 55-70% of the canvas.
    """
    rng = np.random.default_rng((seed, _CLASS_STREAM, class_key))
    strokes: list[np.ndarray] = []
    ink = np.zeros((0, 2))  # samples of the strokes so far
    for s in range(int(rng.choice([2, 2, 3, 3, 3, 4]))):
        for _attempt in range(10):
            if s > 0 and rng.random() < 0.7:
                # Start on an earlier stroke's path and leave it at a wide angle, as at a pen junction.
                j = int(rng.integers(len(ink)))
                tangent = ink[min(j + 1, len(ink) - 1)] - ink[max(j - 1, 0)]
                heading = np.arctan2(tangent[1], tangent[0]) + rng.choice([-1.0, 1.0]) * rng.uniform(0.9, 2.2)
                start = ink[j].copy()
            else:
                heading, start = rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 0.75, size=2)
            stroke = _stroke(rng, start, heading)
            if not strokes:
                break
            new = _path(stroke)[_SAMPLES_PER_SEGMENT // 2 :]
            near = np.linalg.norm(new[:, None] - ink[None], axis=2).min(axis=1) < 0.07
            if near.mean() < 0.25:
                break
        strokes.append(stroke)
        ink = np.concatenate([ink, _path(stroke)])
    # Centre the drawn character and scale its longer side to a random 55-70% of the canvas.
    low, high = ink.min(axis=0), ink.max(axis=0)
    scale = min(rng.uniform(0.55, 0.7) / max(float((high - low).max()), 1e-6), 4.0)
    centre = (low + high) / 2
    return Glyph([(s - centre) * scale + 0.5 for s in strokes])


def render_instance(glyph: Glyph, seed: int, class_key: int, index: int, size: int) -> np.ndarray:
    """Image ``index`` of character ``glyph``: ``[size, size]`` uint8, ink 255 and paper 0.

    A pure function of its arguments: control-point jitter, affine change and pen width all come from the
    random stream ``(seed, class_key, index)``.
    """
    rng = np.random.default_rng((seed, _INSTANCE_STREAM, class_key, index))
    z = rng.standard_normal(6 + glyph.points.size).tolist()
    # Small random affine change about the canvas centre: rotation, anisotropic scale, shear, shift.
    angle, sx, sy, shear = math.radians(6.0 * z[0]), math.exp(0.07 * z[1]), math.exp(0.07 * z[2]), 0.12 * z[3]
    cos, sin = math.cos(angle), math.sin(angle)
    big = size * _SUPERSAMPLE
    # (rotation @ shear @ diag(sx, sy)).T, scaled to supersampled pixels; points are row vectors.
    affine_t = big * np.array([[cos * sx, sin * sx], [(cos * shear - sin) * sy, (sin * shear + cos) * sy]])
    offset = big * (0.5 + 0.03 * np.array(z[4:6]))
    jitter = 0.02 * np.array(z[6:]).reshape(glyph.points.shape)
    samples = (glyph.operator @ ((glyph.centred + jitter) @ affine_t + offset)).tolist()
    width_px = (1.2 + 0.9 * float(rng.random())) * size / 28  # pen width in output pixels, as for Omniglot
    width = max(1, round(width_px * _SUPERSAMPLE))
    radius = width / 2
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    for a, b in glyph.bounds:
        # The spline is densely sampled and smooth, so plain joints leave no visible gaps (and are fast).
        draw.line([tuple(p) for p in samples[a:b]], fill=255, width=width)
        for x, y in (samples[a], samples[b - 1]):  # round pen caps at both ends
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    return np.array(canvas.reduce(_SUPERSAMPLE))  # a writable copy, for torch.from_numpy


def _to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 images (any shape) as float32 in ``[0, 1]``; one conversion shared by load_item and preload."""
    return torch.from_numpy(images).to(torch.float32).div_(255.0)


class SyntheticGlyphs(FewShotDataset):
    """Procedural handwriting-like characters; item ``c * images_per_class + i`` is image ``i`` of class c.

    Images are ``[1, image_size, image_size]`` float32 tensors in ``[0, 1]`` (ink 1, paper 0), rendered on
    demand by :meth:`load_item` or all at once by :meth:`preload`.

    Args:
        num_classes: number of characters.
        images_per_class: images (writers) per character.
        image_size: side of the square images in pixels.
        seed: selects the whole family of characters; different seeds give different characters.
        num_groups: classes are put in groups ``"group{c % num_groups}"`` (alphabets, for within-group tasks).
        class_offset: class ``c`` is character ``class_offset + c``, named ``"glyph{class_offset + c:05d}"``;
            use non-overlapping ranges of offsets for disjoint train and test characters.
    """

    def __init__(
        self,
        num_classes: int = 200,
        images_per_class: int = 20,
        image_size: int = 28,
        seed: int = 0,
        num_groups: int = 10,
        class_offset: int = 0,
    ) -> None:
        for name, value, least in (
            ("num_classes", num_classes, 1),
            ("images_per_class", images_per_class, 1),
            ("image_size", image_size, 8),
            ("num_groups", num_groups, 1),
            ("seed", seed, 0),
            ("class_offset", class_offset, 0),
        ):
            if int(value) < least:
                raise DataError(f"SyntheticGlyphs: {name} must be at least {least} (got {value})")
        self.images_per_class, self.image_size = int(images_per_class), int(image_size)
        self.seed, self.class_offset, self.num_groups = int(seed), int(class_offset), int(num_groups)
        keys = [self.class_offset + c for c in range(int(num_classes))]
        self.class_keys = keys
        self._glyphs: dict[int, Glyph] = {}
        super().__init__(
            [f"glyph{k:05d}/{i:02d}" for k in keys for i in range(self.images_per_class)],
            np.repeat(np.arange(len(keys)), self.images_per_class),
            [f"glyph{k:05d}" for k in keys],
            [f"group{c % self.num_groups}" for c in range(len(keys))],
        )

    def glyph(self, class_index: int) -> Glyph:
        """The strokes of class ``class_index`` (its control points, in canvas units)."""
        if class_index not in self._glyphs:
            self._glyphs[class_index] = class_glyph(self.seed, self.class_keys[class_index])
        return self._glyphs[class_index]

    def _render(self, index: int) -> np.ndarray:
        """Item ``index`` as ``[image_size, image_size]`` uint8."""
        c, i = divmod(int(index), self.images_per_class)
        return render_instance(self.glyph(c), self.seed, self.class_keys[c], i, self.image_size)

    def load_item(self, index: int) -> torch.Tensor:
        """Render item ``index`` as a ``[1, image_size, image_size]`` float32 tensor."""
        if not 0 <= int(index) < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} items")
        return _to_float(self._render(index)).unsqueeze(0)

    def preload(self, progress: bool = False) -> SyntheticGlyphs:
        """Render every image into one ``[n, 1, image_size, image_size]`` tensor; returns ``self``."""
        if self.images is None and len(self):
            out = np.empty((len(self), 1, self.image_size, self.image_size), dtype=np.uint8)
            indices = range(len(self))
            if progress:
                from tqdm import tqdm

                indices = tqdm(indices, desc="rendering SyntheticGlyphs", unit="img", leave=False)
            for index in indices:
                out[index, 0] = self._render(index)
            self.images = _to_float(out)
        return self
