from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot.backbones import Conv4, ResNet12, make_backbone
from fewshot.data import Task, TaskSampler, build_task, load_dataset
from fewshot.evaluation.evaluate import evaluate
from fewshot.methods import make_method
from fewshot.methods.relationnet import RelationNet, map_distance_logits, relation_mse_loss
from tests.helpers import assert_bf16_matches_fp32, assert_cached_evaluation_matches_per_task


def test_relation_mse_loss_by_hand():
    scores = torch.tensor([[0.9, 0.2, 0.1], [0.3, 0.6, 0.4]])
    labels = torch.tensor([0, 2])
    # targets [[1, 0, 0], [0, 0, 1]]: squared errors 0.01, 0.04, 0.01 and 0.09, 0.36, 0.36, averaged over 6 pairs
    expected = (0.1**2 + 0.2**2 + 0.1**2 + 0.3**2 + 0.6**2 + 0.6**2) / 6
    assert relation_mse_loss(scores, labels).item() == pytest.approx(expected)
    assert expected == pytest.approx(0.145)
    assert relation_mse_loss(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])).item() == 0.0


def test_embedding_keeps_maps_and_conv4_pools_only_twice():
    model = RelationNet(Conv4())
    assert model.backbone.flatten is False
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.backbone.modules()) == 2
    assert model.embed(torch.rand(3, 1, 28, 28)).shape == (3, 64, 7, 7)
    assert RelationNet(Conv4(in_channels=3)).embed(torch.rand(2, 3, 84, 84)).shape == (2, 64, 21, 21)
    # all four pools kept: 1x1 maps still go through the relation module
    all_pools = RelationNet(Conv4(), embedding_pool_layers=None)
    assert all_pools.embed(torch.rand(3, 1, 28, 28)).shape == (3, 64, 1, 1)
    assert all_pools(torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]), torch.rand(5, 1, 28, 28)).shape == (5, 4)
    # ResNet-12 keeps its pooling; its last width gives the relation module's input channels
    resnet = RelationNet(ResNet12(widths=(8, 8, 8, 16)))
    assert resnet.embed(torch.rand(2, 1, 28, 28)).shape == (2, 16, 2, 2)
    assert resnet.relation.conv1.in_channels == 32
    with pytest.raises(ValueError, match="embedding_pool_layers"):
        RelationNet(Conv4(), embedding_pool_layers=5)
    with pytest.raises(ValueError, match="loss"):
        RelationNet(Conv4(), loss="hinge")


def test_relation_score_of_each_pair_is_the_papers_module_on_the_concatenated_maps():
    """Score (query i, class c) = sigmoid(FC-ReLU-FC(pool(block2(block1(cat[class map c, query map i]))))), one pair at
    a time, as Sung et al. write it; the split first convolution must pair every query with every class."""
    torch.manual_seed(0)
    model = _spread_out(RelationNet(Conv4())).eval()
    relation = model.relation
    support, labels, query = torch.randn(6, 64, 7, 7), torch.tensor([0, 1, 2, 0, 1, 2]), torch.randn(4, 64, 7, 7)
    with torch.no_grad():
        logits, scores = model.classify(support, labels, query), model.relation_scores(support, labels, query)
        expected = torch.empty(4, 3)
        for i in range(4):
            for c in range(3):
                pair = torch.cat([support[labels == c].sum(0), query[i]])[None]  # [1, 128, 7, 7]
                x = F.max_pool2d(F.relu(relation.bn1(relation.conv1(pair))), 2)  # 7 -> 3
                x = F.max_pool2d(F.relu(relation.bn2(relation.conv2(x))), 2)  # 3 -> 1
                expected[i, c] = relation.fc2(F.relu(relation.fc1(x.flatten(1))))[0, 0]
    assert logits.shape == (4, 3)
    assert torch.allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert torch.allclose(scores, torch.sigmoid(expected))
    assert expected.std() > 1  # the pairs score differently, so a mix-up of pairs would show


def _spread_out(model: RelationNet) -> RelationNet:
    """Random running statistics and larger FC weights in the relation module: an untrained one scores every pair
    nearly alike in eval mode, which would make argmax-based checks depend on rounding."""
    with torch.no_grad():
        for bn in (model.relation.bn1, model.relation.bn2):
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        model.relation.fc1.weight.normal_()
        model.relation.fc2.weight.normal_()
    return model


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_k_shot_classify_equals_one_shot_with_the_summed_maps(mode):
    torch.manual_seed(0)
    model = _spread_out(RelationNet(Conv4())).train(mode == "train")
    support = torch.randn(9, 64, 7, 7)
    labels = torch.tensor([2, 0, 1, 1, 0, 2, 0, 2, 1])  # 3-way 3-shot, interleaved
    query = torch.randn(5, 64, 7, 7)
    summed = torch.stack([support[labels == c].sum(0) for c in range(3)])
    with torch.no_grad():
        k_shot = model.classify(support, labels, query)
        one_shot = model.classify(summed, torch.arange(3), query)
        from_means = model.classify(summed / 3, torch.arange(3), query)
    assert torch.allclose(k_shot, one_shot, atol=1e-5)
    assert not torch.allclose(k_shot, from_means, atol=1e-3)  # the sum, not the mean


def test_relation_module_equals_convolving_each_concatenated_pair():
    torch.manual_seed(0)
    module = _spread_out(RelationNet(Conv4())).relation.eval()
    class_maps, query_maps = torch.randn(3, 64, 7, 7), torch.randn(4, 64, 7, 7)
    pairs = torch.cat([class_maps[None].expand(4, -1, -1, -1, -1), query_maps[:, None].expand(-1, 3, -1, -1, -1)],
                      dim=2).flatten(0, 1)  # [4*3, 128, 7, 7]: [class_map, query_map] of each (query, class)
    with torch.no_grad():
        x = F.max_pool2d(F.relu(module.bn1(module.conv1(pairs))), 2)  # 7 -> 3
        x = F.max_pool2d(F.relu(module.bn2(module.conv2(x))), 2)  # 3 -> 1
        expected = module.fc2(F.relu(module.fc1(x.flatten(1)))).view(4, 3)
        assert torch.allclose(module(class_maps, query_maps), expected, atol=1e-5)


def _glyph_task(ways: int = 5, shots: int = 2, queries: int = 5) -> Task:
    data = load_dataset("glyphs", split="evaluation", glyph_classes=20)
    return build_task(data, TaskSampler(data, ways, shots, queries, 1).spec(0))


def test_losses_mse_by_default_and_cross_entropy_as_option():
    torch.manual_seed(0)
    task = _glyph_task()
    model = RelationNet(Conv4())
    loss, logits = model.loss(task)
    assert logits.shape == (25, 5)
    assert torch.allclose(loss, relation_mse_loss(torch.sigmoid(logits), task.query_labels))
    loss.backward()
    assert model.relation.conv1.weight.grad.abs().sum() > 0
    assert model.backbone.blocks[0][0].weight.grad.abs().sum() > 0
    ce_model = RelationNet(Conv4(), loss="ce")
    ce_loss, ce_logits = ce_model.loss(task)
    assert torch.allclose(ce_loss, F.cross_entropy(ce_logits, task.query_labels))


def test_auxiliary_prototypical_loss_adds_distance_cross_entropy():
    torch.manual_seed(0)
    support, query = torch.randn(4, 3, 2, 2), torch.randn(2, 3, 2, 2)
    labels = torch.tensor([0, 1, 1, 0])
    logits = map_distance_logits(support, labels, query)
    means = torch.stack([(support[0] + support[3]) / 2, (support[1] + support[2]) / 2])
    by_hand = torch.stack([torch.stack([-((q - m) ** 2).sum() / 4 for m in means]) for q in query])
    assert torch.allclose(logits, by_hand, atol=1e-5)

    task = _glyph_task()
    torch.manual_seed(1)
    plain = RelationNet(Conv4()).train()
    torch.manual_seed(1)
    with_aux = RelationNet(Conv4(), proto_weight=0.5).train()
    plain_loss, plain_logits = plain.loss(task)
    aux_loss, aux_logits = with_aux.loss(task)
    assert torch.allclose(plain_logits, aux_logits)  # prediction is the relation module's alone
    maps = with_aux.embed(torch.cat([task.support_images, task.query_images]))
    n = task.support_images.shape[0]
    aux = F.cross_entropy(map_distance_logits(maps[:n], task.support_labels, maps[n:]), task.query_labels)
    assert aux > 0 and torch.allclose(aux_loss, plain_loss + 0.5 * aux, atol=1e-5)
    with pytest.raises(ValueError, match="proto_weight"):
        RelationNet(Conv4(), proto_weight=-1)


def test_bf16_autocast_matches_fp32():
    """Train mode, as in training (an untrained model in eval mode gives near-constant scores)."""
    torch.manual_seed(0)
    task = _glyph_task()
    model = make_method("relationnet", make_backbone("conv4")).train()
    assert_bf16_matches_fp32(model, task)


def test_cached_map_evaluation_equals_per_task_evaluation():
    torch.manual_seed(0)
    data = load_dataset("glyphs", split="evaluation", glyph_classes=30)
    model = _spread_out(make_method("relationnet", make_backbone("conv4"))).eval()
    assert_cached_evaluation_matches_per_task(model, data, episodes=8)


def test_checkpoint_round_trip(tmp_path):
    from fewshot.training.checkpoint import ModelSpec, load_model, save_checkpoint

    spec = ModelSpec("relationnet", "conv4", {"loss": "ce"}, {}, (1, 28, 28))
    model = spec.build().eval()
    save_checkpoint(tmp_path / "model.pt", model, spec)
    loaded, _ = load_model(tmp_path / "model.pt")
    task = _glyph_task(ways=3, shots=1, queries=2)
    args = (task.support_images, task.support_labels, task.query_images)
    with torch.no_grad():
        assert torch.equal(model(*args), loaded(*args))
    assert loaded.loss_type == "ce" and loaded.embed(task.query_images).shape[1:] == (64, 7, 7)


@pytest.mark.slow
def test_relationnet_learns_unseen_glyph_classes_well_above_chance(tmp_path):
    from fewshot.commands import start_training
    from fewshot.training.checkpoint import load_model
    from tests.helpers import glyph_settings

    start_training(glyph_settings(method="relationnet", episodes=60, val_every=30, lr=2e-3), tmp_path / "run",
                   quiet=True)
    model, _ = load_model(tmp_path / "run")
    unseen = load_dataset("glyphs", split="evaluation", glyph_classes=60)
    after = evaluate(model, unseen, 5, 1, episodes=100, seed=1)
    assert after.accuracy > 0.6, after.summary()  # chance is 0.2
    task = build_task(unseen, TaskSampler(unseen, 5, 1, 1, 1).spec(0))
    assert model(task.support_images, task.support_labels, task.query_images).shape == (5, 5)


def test_mean_class_pooling_is_the_sum_divided_by_the_shots():
    torch.manual_seed(0)
    model = RelationNet(Conv4(), class_pooling="mean").eval()
    support, labels = torch.randn(6, 64, 7, 7), torch.tensor([0, 0, 0, 1, 1, 1])
    summed = torch.stack([support[labels == c].sum(0) for c in range(2)])
    assert torch.allclose(model.class_maps(support, labels), summed / 3, atol=1e-5)
    with pytest.raises(ValueError, match="class_pooling"):
        RelationNet(Conv4(), class_pooling="max")
