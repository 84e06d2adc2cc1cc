from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fewshot.backbones import Conv4, make_backbone
from fewshot.data import Task, TaskSampler, build_task, load_dataset
from fewshot.evaluation.evaluate import evaluate
from fewshot.methods import make_method
from fewshot.methods.matchingnet import MatchingNet
from tests.helpers import assert_bf16_matches_fp32

SUPPORT = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
SUPPORT_LABELS = torch.tensor([0, 1, 1, 2])
QUERY = torch.tensor([[1.0, 0.0], [0.6, 0.8]])


def test_attention_is_softmax_of_scaled_cosines_and_logits_are_log_class_sums():
    model = MatchingNet(torch.nn.Identity(), scale=2.0, learn_scale=False)
    # cosines by hand: query [1, 0] -> 1, 0, 1/sqrt(2), -1; query [0.6, 0.8] -> 0.6, 0.8, 1.4/sqrt(2), -0.6
    cosines = torch.tensor([[1.0, 0.0, 1 / math.sqrt(2), -1.0], [0.6, 0.8, 1.4 / math.sqrt(2), -0.6]])
    weights = torch.exp(2.0 * cosines)
    attention = weights / weights.sum(1, keepdim=True)
    assert torch.allclose(model.attention(SUPPORT, SUPPORT_LABELS, QUERY), attention, atol=1e-6)
    per_class = torch.stack([attention[:, 0], attention[:, 1] + attention[:, 2], attention[:, 3]], dim=1)
    logits = model.classify(SUPPORT, SUPPORT_LABELS, QUERY)
    assert torch.allclose(logits, torch.log(per_class), atol=1e-6)
    assert torch.allclose(model(SUPPORT, SUPPORT_LABELS, QUERY), logits)  # forward: embed (identity) + classify
    # the first query's attention, by hand: exp(2), exp(0), exp(sqrt(2)), exp(-2) over their sum
    total = math.exp(2) + 1 + math.exp(math.sqrt(2)) + math.exp(-2)
    assert logits[0].exp().tolist() == pytest.approx(
        [math.exp(2) / total, (1 + math.exp(math.sqrt(2))) / total, math.exp(-2) / total], rel=1e-5
    )


def test_loss_is_nll_of_the_weighted_label_distribution():
    model = MatchingNet(torch.nn.Identity(), scale=3.0)
    task = Task(SUPPORT, SUPPORT_LABELS, QUERY, torch.tensor([0, 1]))
    loss, logits = model.loss(task)
    attention = model.attention(SUPPORT, SUPPORT_LABELS, QUERY)
    probability_of_truth = torch.stack([attention[0, 0], attention[1, 1] + attention[1, 2]])
    assert torch.allclose(loss, -probability_of_truth.log().mean(), atol=1e-6)
    assert torch.allclose(logits.exp().sum(1), torch.ones(2))
    loss.backward()
    assert isinstance(model.scale, torch.nn.Parameter) and model.scale.grad is not None
    assert "scale" in dict(MatchingNet(torch.nn.Identity(), learn_scale=False).named_buffers())


def test_support_order_does_not_change_logits_without_fce():
    torch.manual_seed(0)
    model = MatchingNet(torch.nn.Identity())
    support, labels, query = torch.randn(12, 16), torch.arange(4).repeat(3), torch.randn(7, 16)
    permutation = torch.randperm(12)
    logits = model.classify(support, labels, query)
    assert torch.allclose(model.classify(support[permutation], labels[permutation], query), logits, atol=1e-5)


def test_fce_reads_the_support_in_label_order():
    """With one shot, the support set sorted by label is the same whatever order it came in."""
    torch.manual_seed(0)
    model = MatchingNet(torch.nn.Identity(), fce=True, feature_dim=16)
    support, labels, query = torch.randn(5, 16), torch.arange(5), torch.randn(7, 16)
    permutation = torch.randperm(5)
    logits = model.classify(support, labels, query)
    assert torch.allclose(model.classify(support[permutation], labels[permutation], query), logits, atol=1e-5)
    assert not torch.allclose(MatchingNet(torch.nn.Identity()).classify(support, labels, query), logits, atol=1e-3)


def _glyph_task(ways: int = 5, shots: int = 2, queries: int = 3, size: int = 28) -> Task:
    data = load_dataset("glyphs", split="evaluation", glyph_classes=20, image_size=size)
    return build_task(data, TaskSampler(data, ways, shots, queries, 1).spec(0))


def test_fce_output_shape_and_gradients_reach_both_lstms():
    torch.manual_seed(0)
    model = MatchingNet(Conv4(), fce=True, fce_steps=3)
    assert model.feature_dim == 64
    task = _glyph_task()
    loss, logits = model.loss(task)
    assert logits.shape == (15, 5)
    assert torch.allclose(logits.exp().sum(1), torch.ones(15), atol=1e-5)
    loss.backward()
    for name in ("support_lstm", "query_lstm"):
        for parameter_name, parameter in getattr(model, name).named_parameters():
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"{name}.{parameter_name}"
    assert model.backbone.blocks[0][0].weight.grad.abs().sum() > 0


def test_fce_feature_size_is_measured_or_given():
    with pytest.raises(ValueError, match="feature_dim"):
        MatchingNet(torch.nn.Identity(), fce=True)
    task = _glyph_task(ways=3, shots=1, queries=1, size=32)  # Conv-4 gives 64 * 2 * 2 = 256 features
    args = (task.support_images, task.support_labels, task.query_images)
    with pytest.raises(ValueError, match="feature_dim=256"):
        MatchingNet(Conv4(), fce=True)(*args)
    assert MatchingNet(Conv4(), fce=True, feature_dim=256)(*args).shape == (3, 3)
    assert MatchingNet(Conv4(), fce=True, image_size=32)(*args).shape == (3, 3)  # measured at that size
    assert MatchingNet(Conv4(), fce=False)(*args).shape == (3, 3)  # without FCE any feature size works


def test_fce_checkpoint_round_trip(tmp_path):
    from fewshot.training.checkpoint import ModelSpec, load_model, save_checkpoint

    torch.manual_seed(0)
    spec = ModelSpec("matchingnet", "conv4", {"fce": True}, {}, (1, 28, 28))
    model = spec.build()
    model.loss(_glyph_task())[0].backward()  # one step, so the saved weights are not the initial ones
    with torch.no_grad():
        for parameter in model.parameters():
            parameter -= 0.01 * parameter.grad
    model.eval()
    save_checkpoint(tmp_path / "model.pt", model, spec)
    loaded, _ = load_model(tmp_path / "model.pt", channels_last=False)  # the saved layout: bit for bit
    assert any(key.startswith("support_lstm.") for key in loaded.state_dict())
    task = _glyph_task(ways=4, shots=2, queries=2)
    args = (task.support_images, task.support_labels, task.query_images)
    with torch.no_grad():
        assert torch.equal(model(*args), loaded(*args))
        assert not torch.equal(spec.build().eval()(*args), loaded(*args))


@pytest.mark.parametrize("fce", [False, True])
def test_bf16_autocast_matches_fp32(fce):
    torch.manual_seed(0)
    task = _glyph_task()
    model = make_method("matchingnet", make_backbone("conv4"), fce=fce).train()
    assert_bf16_matches_fp32(model, task)


def test_loss_is_the_papers_negative_log_of_the_attended_label():
    """-log sum_{i in true class} softmax_i(scale * cos(q, s_i)), computed by hand, on raw features."""
    torch.manual_seed(0)
    model = MatchingNet(torch.nn.Identity(), scale=3.0)
    support, labels, query = torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 2]), torch.randn(4, 8)
    task = Task(support, labels, query, torch.tensor([0, 1, 2, 0]))
    loss, _ = model.loss(task)
    expected = 0.0
    for q, y in zip(query, task.query_labels, strict=True):
        cosines = torch.stack([F.cosine_similarity(q, s, dim=0) for s in support])
        attention = torch.softmax(3.0 * cosines, dim=0)
        expected -= torch.log(attention[labels == y].sum()) / len(query)
    assert torch.allclose(loss, expected, atol=1e-6)


def _learns(tmp_path, **settings) -> None:
    from fewshot.commands import start_training
    from fewshot.training.checkpoint import load_model
    from tests.helpers import glyph_settings

    start_training(glyph_settings(method="matchingnet", **settings), tmp_path / "run", quiet=True)
    model, spec = load_model(tmp_path / "run")
    unseen = load_dataset("glyphs", split="evaluation", glyph_classes=60)
    torch.manual_seed(0)
    before = evaluate(spec.build(), unseen, 5, 1, episodes=100, seed=1)  # same architecture, untrained
    after = evaluate(model, unseen, 5, 1, episodes=100, seed=1)
    assert after.accuracy > 0.6, after.summary()  # chance is 0.2
    assert after.accuracy > before.accuracy + 0.05, (before.accuracy, after.accuracy)
    task = build_task(unseen, TaskSampler(unseen, 5, 1, 1, 1).spec(0))
    assert model(task.support_images, task.support_labels, task.query_images).shape == (5, 5)


@pytest.mark.slow
def test_matchingnet_learns_unseen_glyph_classes_well_above_chance(tmp_path):
    _learns(tmp_path, episodes=60, val_every=30, lr=2e-3)


@pytest.mark.slow
def test_matchingnet_with_fce_learns_unseen_glyph_classes_well_above_chance(tmp_path):
    _learns(tmp_path, episodes=30, val_every=30, lr=2e-3, method_options="fce=True")
