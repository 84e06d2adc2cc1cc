from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot.data.augment import AugmentConfig, affine_theta, augment, augment_task, elastic_field
from fewshot.data.task import Task


def _close(actual: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5, rtol: float = 0.0) -> None:
    """Like ``torch.testing.assert_close`` (whose first call costs ~0.5 s of lazy imports)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual - expected).abs()
    bound = atol + rtol * expected.abs()
    assert (err <= bound).all(), f"max error {err.max().item():.3g} (atol={atol}, rtol={rtol})"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _warp(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _blob_images(batch: int = 8, size: int = 28) -> torch.Tensor:
    """Glyph-like test images: a few random strokes (boxes) of ink 1 on paper 0, away from the borders."""
    g = _gen(123)
    images = torch.zeros(batch, 1, size, size)
    for b in range(batch):
        for _ in range(3):
            r, c = torch.randint(6, size - 10, (2,), generator=g).tolist()
            h, w = torch.randint(2, 5, (2,), generator=g).tolist()
            images[b, 0, r : r + h, c : c + w] = 1.0
    return images


def _one(value: float) -> torch.Tensor:
    return torch.tensor([value])


# -- config ---------------------------------------------------------------------------------------------


def test_identity_config_returns_input_object():
    x = torch.rand(4, 1, 28, 28)
    config = AugmentConfig()
    assert not config.enabled
    assert augment(x, config, _gen()) is x
    task = Task(x[:2], torch.tensor([0, 1]), x[2:], torch.tensor([0, 1]))
    assert augment_task(task, config, _gen()) is task


@pytest.mark.parametrize(
    "config",
    [
        AugmentConfig(rotation=1.0),
        AugmentConfig(shear=1.0),
        AugmentConfig(scale=(0.9, 1.0)),
        AugmentConfig(scale=(1.2, 1.2)),  # a fixed zoom is not the identity
        AugmentConfig(shift=0.01),
        AugmentConfig(elastic_alpha=0.5),
    ],
)
def test_each_parameter_enables(config):
    assert config.enabled


def test_elastic_sigma_alone_does_not_enable():
    assert not AugmentConfig(elastic_sigma=2.0).enabled


def test_enabled_but_identity_draws_reproduce_input():
    # Enabled configs whose transform is (numerically) the identity must give back the pixels: the sampling
    # grid sits exactly on the pixel centres.
    x = torch.rand(5, 3, 12, 17)
    for config in (AugmentConfig(elastic_alpha=1e-7), AugmentConfig(rotation=1e-7), AugmentConfig(shift=1e-9)):
        assert config.enabled
        y = augment(x, config, _gen())
        assert y is not x and y.shape == x.shape and y.dtype == x.dtype
        _close(y, x, atol=1e-5, rtol=0)


def test_empty_batch_and_bad_input():
    config = AugmentConfig(rotation=10)
    empty = torch.zeros(0, 1, 28, 28)
    assert augment(empty, config, _gen()).shape == (0, 1, 28, 28)
    with pytest.raises(ValueError, match="B, C, H, W"):
        augment(torch.zeros(1, 28, 28), config, _gen())
    with pytest.raises(TypeError, match="floating"):
        augment(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), config, _gen())


@pytest.mark.parametrize(
    "kwargs",
    [{"rotation": -1.0}, {"shear": 90.0}, {"scale": (1.1, 0.9)}, {"scale": (0.0, 1.0)}, {"shift": float("nan")},
     {"elastic_alpha": -1.0}, {"elastic_sigma": 0.0}],
)
def test_invalid_config_rejected(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AugmentConfig(**kwargs)


# -- from_string ------------------------------------------------------------------------------------------


def test_from_string_full_spec():
    config = AugmentConfig.from_string("rotation=10,shear=5,scale=0.9:1.1,shift=0.1,elastic=8:4")
    assert config == AugmentConfig(rotation=10, shear=5, scale=(0.9, 1.1), shift=0.1, elastic_alpha=8,
                                   elastic_sigma=4)
    assert AugmentConfig.from_string(config.to_string()) == config


def test_from_string_variants():
    assert AugmentConfig.from_string("none") == AugmentConfig()
    assert AugmentConfig.from_string("") == AugmentConfig()
    assert AugmentConfig.from_string(" Rotation = 15 , ") == AugmentConfig(rotation=15)
    assert AugmentConfig.from_string("elastic=2") == AugmentConfig(elastic_alpha=2)  # default sigma
    assert AugmentConfig.from_string("elastic_alpha=2,elastic_sigma=3") == AugmentConfig(elastic_alpha=2,
                                                                                          elastic_sigma=3)
    assert AugmentConfig().to_string() == "none"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rotate=10", r"'rotate=10'.*valid keys: rotation=DEG, shear=DEG, scale=LO:HI, shift=FRAC"),
        ("rotation", r"'rotation'.*valid keys"),
        ("rotation=ten", r"rotation='ten' is not a number.*valid keys"),
        ("scale=1.1", r"scale needs LO:HI"),
        ("shift=0.1:0.2", r"shift takes one number"),
        ("elastic=1:2:3", r"elastic needs ALPHA or ALPHA:SIGMA"),
        ("rotation=5,rotation=6", r"rotation given twice"),
        ("scale=1.1:0.9", r"scale must be 0 < lo <= hi"),
        ("elastic=2:4,elastic_sigma=3", r"not both|elastic=ALPHA:SIGMA or"),
    ],
)
def test_from_string_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        AugmentConfig.from_string(spec)


# -- randomness -----------------------------------------------------------------------------------------


def test_seed_reproduces_and_different_seeds_differ():
    x = _blob_images()
    config = AugmentConfig(rotation=15, shear=5, scale=(0.9, 1.1), shift=0.1, elastic_alpha=1.0)
    a, b = augment(x, config, _gen(7)), augment(x, config, _gen(7))
    assert torch.equal(a, b)
    c = augment(x, config, _gen(8))
    assert not torch.allclose(a, c)
    # one random transform per image: identical inputs come out different
    same = augment(x[:1].expand(4, -1, -1, -1).contiguous(), config, _gen(7))
    assert not torch.allclose(same[0], same[1])


def test_augment_task_changes_images_only():
    x = _blob_images(10)
    task = Task(x[:4], torch.tensor([0, 1, 0, 1]), x[4:], torch.tensor([0, 1, 0, 1, 0, 1]), [3, 5], ["a", "b"])
    out = augment_task(task, AugmentConfig(rotation=20, shift=0.1), _gen(1))
    assert out is not task
    assert out.support_images.shape == task.support_images.shape
    assert out.query_images.shape == task.query_images.shape
    assert not torch.allclose(out.support_images, task.support_images)
    assert not torch.allclose(out.query_images, task.query_images)
    assert out.support_labels is task.support_labels and out.query_labels is task.query_labels
    assert out.class_names == ["a", "b"] and out.class_ids == [3, 5]
    assert torch.equal(task.support_images, x[:4])  # input untouched


# -- geometry -------------------------------------------------------------------------------------------


def test_affine_theta_matches_affine_grid_path():
    # augment builds its grid with one GEMM instead of affine_grid: check they agree on a non-square batch.
    x = torch.rand(6, 2, 20, 30)
    config = AugmentConfig(rotation=30, shear=10, scale=(0.8, 1.2), shift=0.1)
    y = augment(x, config, _gen(3))
    u = torch.rand(6, 5, generator=_gen(3))  # augment's first draw
    theta = affine_theta((2 * u[:, 0] - 1) * 30, (2 * u[:, 1] - 1) * 10, 0.8 + 0.4 * u[:, 2],
                         (2 * u[:, 3] - 1) * 3.0, (2 * u[:, 4] - 1) * 2.0, 20, 30)
    _close(y, _warp(x, theta), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("dx", "dy"), [(3, 0), (0, -2), (-4, 5)])
def test_shift_equals_roll(dx, dy):
    # positive x moves content right, positive y moves it down, by exactly that many pixels (non-square image)
    x = torch.zeros(1, 1, 20, 30)
    x[0, 0, 8:11, 12:14] = 1.0
    x[0, 0, 9, 16] = 0.5
    theta = affine_theta(_one(0.0), _one(0.0), _one(1.0), _one(float(dx)), _one(float(dy)), 20, 30)
    _close(_warp(x, theta), torch.roll(x, (dy, dx), dims=(2, 3)), atol=1e-5, rtol=0)


def test_public_shift_moves_centre_of_mass_within_range():
    x = torch.zeros(16, 1, 28, 28)
    x[:, :, 12:16, 12:16] = 1.0  # centred blob: centre of mass 13.5
    y = augment(x, AugmentConfig(shift=0.1), _gen(0))
    coords = torch.arange(28.0)
    mass = y.sum(dim=(1, 2, 3))
    cx = (y.sum(dim=2)[:, 0] * coords).sum(1) / mass
    cy = (y.sum(dim=3)[:, 0] * coords).sum(1) / mass
    _close(mass, torch.full((16,), 16.0), atol=1e-3, rtol=0)  # bilinear shift keeps ink
    assert ((cx - 13.5).abs() <= 2.8 + 1e-4).all() and ((cy - 13.5).abs() <= 2.8 + 1e-4).all()
    assert (cx - 13.5).abs().max() > 1.0  # and it does move


@pytest.mark.parametrize(("angle", "k"), [(90.0, 1), (-90.0, -1), (180.0, 2)])
def test_rotation_matches_rot90(angle, k):
    # positive angles rotate counterclockwise on screen, like torch.rot90(x, 1, dims=(-2, -1))
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 2:5, 3:12] = 1.0  # an asymmetric "L"
    x[0, 0, 2:13, 3:6] = 1.0
    theta = affine_theta(_one(angle), _one(0.0), _one(1.0), _one(0.0), _one(0.0), 16, 16)
    _close(_warp(x, theta), torch.rot90(x, k, dims=(2, 3)), atol=1e-5, rtol=0)


def test_scale_and_shear_directions():
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 10] = 1.0  # centre pixel (the transform's fixed point is the image centre, 10.0 here)
    x[0, 0, 10, 14] = 1.0  # 4 px right of it
    theta = affine_theta(_one(0.0), _one(0.0), _one(0.5), _one(0.0), _one(0.0), 21, 21)
    y = _warp(x, theta)
    assert y[0, 0, 10, 10] > 0.5 and y[0, 0, 10, 12] > 0.3 and y[0, 0, 10, 14] < 1e-6  # shrinks toward centre
    z = torch.zeros(1, 1, 21, 21)
    z[0, 0, 16, 10] = 1.0  # 6 px below the centre
    theta = affine_theta(_one(0.0), _one(45.0), _one(1.0), _one(0.0), _one(0.0), 21, 21)
    _close(_warp(z, theta), torch.roll(z, 6, dims=3), atol=1e-5, rtol=0)  # x' = x + y


def test_rotation_of_round_blob_is_harmless():
    # a centred disc looks the same under any rotation: a check of the public path that needs no sign
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    disc = (((yy - 13.5) ** 2 + (xx - 13.5) ** 2) < 36).float().expand(8, 1, 28, 28).contiguous()
    y = augment(disc, AugmentConfig(rotation=180), _gen(5))
    assert (y - disc).abs().mean() < 0.02
    _close(y.sum(dim=(1, 2, 3)), disc.sum(dim=(1, 2, 3)), rtol=0.02, atol=0)


# -- elastic --------------------------------------------------------------------------------------------


def test_elastic_keeps_ink_mass_and_changes_image():
    from fewshot.data.synthetic import SyntheticGlyphs

    glyphs = SyntheticGlyphs(num_classes=16, images_per_class=1, seed=0)
    x = torch.stack([glyphs.load_item(i) for i in range(16)])
    # Gentle distortion: each glyph keeps its ink within 20%. (Elastic maps stretch and compress locally, so
    # strong ones change a single glyph's ink more; alpha=1.5 px RMS, about Simard et al.'s, moves it ~15%.)
    y = augment(x, AugmentConfig(elastic_alpha=0.5, elastic_sigma=4.0), _gen(2))
    ratio = y.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert ((ratio > 0.8) & (ratio < 1.2)).all(), ratio
    assert (y - x).abs().sum(dim=(1, 2, 3)).min() > 1.0  # every image is distorted
    assert y.min() >= 0.0 and y.max() <= 1.0 + 1e-6
    # Stronger: compression and stretching balance over a batch.
    y = augment(x, AugmentConfig(elastic_alpha=1.5, elastic_sigma=4.0), _gen(2))
    assert abs(float(y.sum() / x.sum()) - 1.0) < 0.05


def test_elastic_field_statistics():
    field = elastic_field(400, 24, 20, alpha=2.0, sigma=3.0, generator=_gen(0))
    assert field.shape == (400, 2, 24, 20)
    rms = field.pow(2).mean().sqrt()
    assert 1.85 < rms < 2.15  # alpha is the RMS displacement in pixels, also near the borders
    edge = field[..., 0].pow(2).mean().sqrt()
    assert 1.8 < edge < 2.2
    neighbours = (field[..., 1:] * field[..., :-1]).mean() / field.pow(2).mean()
    assert neighbours > 0.9  # smooth: neighbouring displacements nearly equal (exp(-1/36) ~ 0.97)
