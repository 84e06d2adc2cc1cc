from __future__ import annotations

import pytest
import torch

from fewshot.backbones import feature_dim, make_backbone
from fewshot.data import TaskSampler, build_task, load_dataset
from fewshot.evaluation.evaluate import evaluate
from fewshot.methods import ProtoNet, make_method
from fewshot.methods.base import class_means
from tests.helpers import assert_cached_evaluation_matches_per_task


def test_class_means():
    features = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 1])
    assert torch.allclose(class_means(features, labels), torch.tensor([[2.0, 1.0], [5.0, 5.0]]))


def test_euclidean_logits_are_minus_squared_distance_to_prototypes():
    torch.manual_seed(0)
    model = ProtoNet(torch.nn.Identity())
    support, labels, query = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2]), torch.randn(5, 4)
    prototypes = torch.stack([support[labels == c].mean(0) for c in range(3)])
    expected = -torch.cdist(query, prototypes) ** 2
    assert torch.allclose(model.classify(support, labels, query), expected, atol=1e-5)


def test_cosine_logits_and_learnable_scale():
    model = ProtoNet(torch.nn.Identity(), distance="cosine", cosine_scale=5.0)
    support, labels, query = torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), torch.randn(2, 3)
    prototypes = torch.stack([support[labels == c].mean(0) for c in range(2)])
    expected = 5.0 * torch.nn.functional.cosine_similarity(query[:, None], prototypes[None], dim=2)
    logits = model.classify(support, labels, query)
    assert torch.allclose(logits, expected, atol=1e-5)
    logits.sum().backward()
    assert model.scale.grad is not None
    with pytest.raises(ValueError, match="distance"):
        ProtoNet(torch.nn.Identity(), distance="manhattan")


def test_learnable_euclidean_scale_multiplies_the_distances_and_learns():
    torch.manual_seed(0)
    plain, scaled = ProtoNet(torch.nn.Identity()), ProtoNet(torch.nn.Identity(), euclidean_scale=0.25)
    support, labels, query = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2]), torch.randn(5, 4)
    logits = scaled.classify(support, labels, query)
    assert torch.allclose(logits, 0.25 * plain.classify(support, labels, query), atol=1e-6)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1])).backward()
    assert scaled.scale.grad is not None and scaled.scale.grad.abs() > 0
    assert plain.scale is None and not list(plain.parameters())
    for bad in ({"euclidean_scale": 0.0}, {"euclidean_scale": 1.0, "distance": "cosine"}):
        with pytest.raises(ValueError, match="euclidean_scale"):
            ProtoNet(torch.nn.Identity(), **bad)


@pytest.mark.parametrize("name", ["conv4", "resnet12"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_backbones_take_any_channels_and_size(name, shape):
    options = {"widths": (8, 8, 8, 8)} if name == "resnet12" else {}
    backbone = make_backbone(name, in_channels=shape[0], **options)
    dim = feature_dim(backbone, shape)
    assert backbone.eval()(torch.rand(3, *shape)).shape == (3, dim)


def test_conv4_pools_option_keeps_a_spatial_map():
    three = make_backbone("conv4", pools=3)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in three.modules()) == 3
    assert feature_dim(three, (1, 28, 28)) == 64 * 3 * 3
    assert three(torch.rand(2, 1, 8, 8)).shape == (2, 64)  # 8x8 needs only three pools
    with pytest.raises(ValueError, match="pools"):
        make_backbone("conv4", pools=5)


def test_speed_options_match_the_plain_path():
    """channels-last gives the same logits; bf16 autocast stays within about 1% on a real glyph task.

    Train mode (batch statistics), as in training: features then have unit scale, as after any training.
    """
    torch.manual_seed(0)
    model = make_method("protonet", make_backbone("conv4")).train()
    data = load_dataset("glyphs", split="evaluation", glyph_classes=20)
    task = build_task(data, TaskSampler(data, 5, 2, 5, 1).spec(0))
    support, labels, query = task.support_images, task.support_labels, task.query_images
    with torch.no_grad():
        plain = model(support, labels, query)
        fast = model.to(memory_format=torch.channels_last)(
            support.contiguous(memory_format=torch.channels_last), labels,
            query.contiguous(memory_format=torch.channels_last),
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(support, labels, query)
    assert torch.allclose(plain, fast, rtol=1e-4, atol=1e-3)
    assert (half.float() - plain).abs().max() <= 0.03 * plain.abs().max()
    assert (half.argmax(1) == plain.argmax(1)).float().mean() >= 0.9


def test_cached_feature_evaluation_equals_per_task_evaluation():
    torch.manual_seed(0)
    data = load_dataset("glyphs", split="evaluation", glyph_classes=30)
    model = make_method("protonet", make_backbone("conv4")).eval()
    assert_cached_evaluation_matches_per_task(model, data, episodes=20)


@pytest.mark.slow
def test_protonet_learns_unseen_glyph_classes_well_above_chance(tmp_path):
    from fewshot.commands import start_training
    from fewshot.training.checkpoint import load_model
    from tests.helpers import glyph_settings

    start_training(glyph_settings(episodes=150, val_every=50, lr=2e-3), tmp_path / "run", quiet=True)
    model, _ = load_model(tmp_path / "run")
    unseen = load_dataset("glyphs", split="evaluation", glyph_classes=60)
    before = evaluate(make_method("protonet", make_backbone("conv4")), unseen, 5, 1, episodes=200, seed=1)
    after = evaluate(model, unseen, 5, 1, episodes=200, seed=1)
    assert after.accuracy > 0.6, after.summary()  # chance is 0.2
    assert after.accuracy > before.accuracy + 0.1
    task = build_task(unseen, TaskSampler(unseen, 5, 1, 1, 1).spec(0))
    assert model(task.support_images, task.support_labels, task.query_images).shape == (5, 5)

