"""Transductive inference: a task's unlabelled queries refine its classes (soft k-means on the features)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot.backbones import make_backbone
from fewshot.data import load_dataset
from fewshot.methods import ProtoNet, make_method
from fewshot.methods.base import balance_weights
from fewshot.methods.siamese import SiameseNet
from fewshot.training.checkpoint import ModelSpec, load_model, save_checkpoint
from tests.helpers import assert_cached_evaluation_matches_per_task


def _offset_support_task() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two query clusters at (0, 0) and (2, 0) whose one support image each lies 1 off centre, both to the right:
    alone, the supports misclassify the queries of class 1 that lie left of its centre."""
    generator = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    support = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    query = centres.repeat_interleave(8, 0) + 0.3 * torch.randn(16, 2, generator=generator)
    return support, torch.tensor([0, 1]), query, torch.arange(2).repeat_interleave(8)


def test_protonet_queries_pull_the_prototypes_to_their_clusters():
    support, labels, query, query_labels = _offset_support_task()
    model = ProtoNet(torch.nn.Identity()).eval()
    inductive = model.classify_task(support, labels, query)
    assert torch.equal(inductive, model.classify(support, labels, query))
    assert (inductive.argmax(1) == query_labels).float().mean() < 0.9
    model.set_transductive_steps(5)
    assert (model.classify_task(support, labels, query).argmax(1) == query_labels).all()
    # One step by hand (soft k-means): a prototype is its support plus the queries weighted by their probability of
    # its class at the model's temperature.
    model.set_transductive_steps(1, temperature=2.0)
    weights = (inductive / 2.0).softmax(1)
    prototypes = (support + weights.T @ query) / (1 + weights.sum(0))[:, None]
    expected = -torch.cdist(query, prototypes) ** 2
    assert torch.allclose(model.classify_task(support, labels, query), expected, atol=1e-5)
    # The queries' order does not matter; batched episodes give the same logits; training ignores the steps.
    order = torch.randperm(len(query), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(model.classify_task(support, labels, query[order]), expected[order], atol=1e-5)
    batched = model.classify_task(support.expand(3, -1, -1), labels.expand(3, -1), query.expand(3, -1, -1))
    assert torch.allclose(batched[1], expected, atol=1e-5)
    assert torch.equal(model.train().classify_task(support, labels, query), inductive)


def test_every_support_image_moves_with_its_class_and_unit_features_stay_unit():
    torch.manual_seed(0)
    model = SiameseNet(torch.nn.Identity(), loss="triplet", aggregate="mean").eval()
    support = F.normalize(torch.randn(4, 3), dim=-1)
    labels, query = torch.tensor([0, 0, 1, 1]), F.normalize(torch.randn(5, 3), dim=-1)
    inductive = model.classify(support, labels, query)
    model.set_transductive_steps(1, temperature=0.5)
    weights = (inductive * 2 / 0.5).softmax(1)  # the temperature is divided by the 2 shots per class
    shift = (weights.T @ query - weights.sum(0)[:, None] * torch.stack([support[:2].mean(0), support[2:].mean(0)]))
    shift = shift / (2 + weights.sum(0))[:, None]  # new class mean minus old, for 2 shots per class
    moved = F.normalize(support + shift[labels], dim=-1)
    assert torch.allclose(model.classify_task(support, labels, query), model.classify(moved, labels, query), atol=1e-5)


def test_the_temperature_is_divided_by_the_mean_shots_per_class_also_when_classes_differ():
    torch.manual_seed(0)
    model = ProtoNet(torch.nn.Identity()).eval()
    support, labels = torch.randn(4, 3), torch.tensor([0, 0, 0, 1])  # 3 shots and 1: 2 per class on average
    query = torch.randn(6, 3)
    model.set_transductive_steps(1, temperature=3.0)
    weights = (model.classify(support, labels, query) / 1.5).softmax(1)
    sums = torch.stack([support[:3].sum(0), support[3]])
    prototypes = (sums + weights.T @ query) / (torch.tensor([3.0, 1.0]) + weights.sum(0))[:, None]
    assert torch.allclose(model.classify_task(support, labels, query), -torch.cdist(query, prototypes) ** 2, atol=1e-5)


@pytest.mark.parametrize("method", ["protonet", "memorynet", "matchingnet", "relationnet", "siamese"])
def test_cached_evaluation_matches_task_by_task_with_transductive_steps(method):
    torch.manual_seed(0)
    model = make_method(method, make_backbone("conv4", hidden=8), **({"image_size": 28} if method in (
        "memorynet", "matchingnet") else {})).eval()
    model.set_transductive_steps(3)
    data = load_dataset("glyphs", split="evaluation", glyph_classes=20)
    assert_cached_evaluation_matches_per_task(model, data)
    model.eval()  # the helper's wrapper leaves it in training mode
    with torch.no_grad():  # and the steps change the logits, so the check above checked them
        task_features = model.features(data.load_many(range(10)))
        labels = torch.arange(5).repeat(1)
        refined = model.classify_task(task_features[:5], labels, task_features[5:])
        assert not torch.allclose(refined, model.classify(task_features[:5], labels, task_features[5:]))


def test_balanced_weights_give_every_class_the_same_share_and_each_query_a_distribution():
    weights = torch.rand(3, 12, 4, generator=torch.Generator().manual_seed(0)).softmax(-1)
    balanced = balance_weights(weights, 50)
    assert torch.allclose(balanced.sum(-1), torch.ones(3, 12), atol=1e-6)
    assert torch.allclose(balanced.sum(-2), torch.full((3, 4), 3.0), atol=1e-4)
    # Already balanced weights stay as they are; the scaling keeps each query's order of the classes' odds ratios.
    even = torch.eye(4).repeat(3, 1) * 0.6 + 0.1
    assert torch.allclose(balance_weights(even, 5), even, atol=1e-6)
    ratio = balanced[..., 0] / balanced[..., 1]
    assert torch.equal(ratio.argsort(-1), (weights[..., 0] / weights[..., 1]).argsort(-1))


def test_balancing_assigns_queries_to_different_classes_when_they_are_spread_evenly():
    """Two classes on a line, supports at 0 and 10, their one query each at 4 and 4.9: both lie nearer class 0, so
    plain soft k-means gives both to it; with each class's share of the queries held equal, the farther one goes to
    class 1."""
    model = ProtoNet(torch.nn.Identity()).eval()
    support, labels, query = torch.tensor([[0.0], [10.0]]), torch.tensor([0, 1]), torch.tensor([[4.0], [4.9]])
    model.set_transductive_steps(10, temperature=10.0)
    assert model.classify_task(support, labels, query).argmax(1).tolist() == [0, 0]
    model.set_transductive_steps(10, balance=10)
    assert model.classify_task(support, labels, query).argmax(1).tolist() == [0, 1]
    # The same queries with a third that belongs to class 0 as well: a prior that does not hold pulls it away.
    assert model.classify_task(support, labels, torch.tensor([[4.0], [4.9], [1.0]])).argmax(1).tolist() != [0, 0, 0]


def test_balanced_refinement_predicts_with_the_balanced_probabilities_of_its_last_scores():
    """Supports at 0 and 10, queries at 4 and 4.5, one balanced step at temperature 10: the refined prototypes still
    score both queries nearer class 0, and the prediction (the log of those scores' probabilities, balanced as in
    the step) gives the farther query to class 1, each class the same share."""
    model = ProtoNet(torch.nn.Identity()).eval()
    support, labels, query = torch.tensor([[0.0], [10.0]]), torch.tensor([0, 1]), torch.tensor([[4.0], [4.5]])
    model.set_transductive_steps(1, temperature=10.0, balance=10)
    weights = balance_weights((model.classify(support, labels, query) / 10.0).softmax(1), 10)
    prototypes = (support + weights.T @ query) / (1 + weights.sum(0))[:, None]
    last = -torch.cdist(query, prototypes) ** 2
    assert last.argmax(1).tolist() == [0, 0]
    logits = model.classify_task(support, labels, query)
    assert torch.allclose(logits, balance_weights((last / 10.0).softmax(1), 10).log(), atol=1e-5)
    assert logits.argmax(1).tolist() == [0, 1]
    assert torch.allclose(logits.softmax(1).sum(0), torch.ones(2), atol=1e-3)
    model.balanced_prediction = False  # as SiameseNet: balanced steps, the last scores as they are
    assert torch.allclose(model.classify_task(support, labels, query), last, atol=1e-5)
    assert not SiameseNet.balanced_prediction and ProtoNet.balanced_prediction
    model.set_transductive_steps(1, temperature=10.0, balance=0)  # unbalanced: its own last scores, as they are
    assert model.classify_task(support, labels, query).argmax(1).tolist() == [0, 0]


def test_transductive_steps_travel_in_the_checkpoint_and_are_refused_where_unsupported(tmp_path):
    spec = ModelSpec("protonet", "conv4", {}, {"hidden": 8}, transductive_steps=4, transductive_temperature=0.5,
                     transductive_balance=3)
    model = spec.build()
    assert (model.transductive_steps, model.transductive_temperature, model.transductive_balance) == (4, 0.5, 3)
    save_checkpoint(tmp_path / "best.pt", model, spec)
    assert load_model(tmp_path)[0].transductive_temperature == 0.5
    assert load_model(tmp_path)[0].transductive_balance == 3
    inductive = load_model(tmp_path, transductive_steps=0)[0]  # 0 steps alone: each query on its own
    assert (inductive.transductive_steps, inductive.transductive_balance) == (0, 0)
    assert load_model(tmp_path, transductive_steps=0, transductive_balance=3)[0].transductive_balance == 3
    assert load_model(tmp_path, transductive_temperature=0.1)[0].transductive_temperature == 0.1
    assert load_model(tmp_path, transductive_balance=0)[0].transductive_balance == 0
    old = {k: v for k, v in spec.to_dict().items() if not k.startswith("transductive_")}  # before the options
    assert (ModelSpec.from_dict(old).transductive_steps, ModelSpec.from_dict(old).transductive_balance) == (0, 0)
    with pytest.raises(ValueError, match="0 or more"):
        model.set_transductive_steps(-1)
    with pytest.raises(ValueError, match="temperature must be positive"):
        model.set_transductive_steps(2, temperature=0.0)
    with pytest.raises(ValueError, match="Sinkhorn iterations"):
        model.set_transductive_steps(2, balance=-1)
    with pytest.raises(ValueError, match="no per-image features"):
        make_method("maml", make_backbone("conv4", hidden=8), ways=5).set_transductive_steps(2)


def test_balanced_prediction_without_steps_balances_the_inductive_probabilities():
    """Supports at 0 and 10, queries at 4 and 4.5: inductively both are class 0; balanced with no refinement step, the
    logits are the log of the inductive probabilities (at the temperature divided by the shots) balanced over the
    classes, and the farther query goes to class 1. Not in training, and not for a method that balances only its
    steps."""
    model = ProtoNet(torch.nn.Identity()).eval()
    support, labels, query = torch.tensor([[0.0], [10.0]]), torch.tensor([0, 1]), torch.tensor([[4.0], [4.5]])
    inductive = model.classify(support, labels, query)
    model.set_transductive_steps(0, temperature=10.0, balance=10)
    logits = model.classify_task(support, labels, query)
    assert torch.allclose(logits, balance_weights((inductive / 10.0).softmax(1), 10).log(), atol=1e-5)
    assert inductive.argmax(1).tolist() == [0, 0] and logits.argmax(1).tolist() == [0, 1]
    two_shots = torch.tensor([0, 0, 1, 1])
    assert torch.allclose(model.classify_task(support.repeat_interleave(2, 0), two_shots, query),
                          balance_weights((inductive / 5.0).softmax(1), 10).log(), atol=1e-5)
    assert torch.equal(model.train().classify_task(support, labels, query), inductive)
    with pytest.raises(ValueError, match="balances only its transductive steps"):
        SiameseNet(torch.nn.Identity()).set_transductive_steps(0, balance=10)
    with pytest.raises(ValueError, match="balances only its transductive steps"):
        make_method("mann", make_backbone("conv4", hidden=8)).set_transductive_steps(0, balance=10)


@pytest.mark.parametrize("method", ["protomaml", "maml"])
def test_optimization_methods_balance_their_adapted_logits(method):
    """MAML's family has no features to refine, but balances its prediction: eval-mode logits are the log of the
    adapted logits' probabilities balanced over the classes, every class then holds the same share of the queries;
    the balance stays in the checkpoint's spec and out of training."""
    torch.manual_seed(0)
    spec = ModelSpec(method, "conv4", {"ways": 5} if method == "maml" else {}, {"hidden": 8}, (1, 16, 16),
                     transductive_temperature=0.5, transductive_balance=20)
    model = spec.build().eval()
    assert spec.transductive and model.transductive_steps == 0
    support, labels = torch.rand(5, 1, 16, 16), torch.arange(5)
    query = support.repeat(2, 1, 1, 1) + 0.3 * torch.rand(10, 1, 16, 16)  # two per class
    balanced = model(support, labels, query)
    model.transductive_balance = 0
    adapted = model(support, labels, query)
    assert torch.allclose(balanced, balance_weights((adapted / 0.5).softmax(1), 20).log(), atol=1e-5)
    assert torch.allclose(balanced.softmax(1).sum(0), torch.full((5,), 2.0), atol=1e-2)
    model.transductive_balance = 20
    model.train()
    assert model.balance_prediction(adapted) is adapted
