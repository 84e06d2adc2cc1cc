from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fewshot.backbones import make_backbone
from fewshot.data import Task, TaskSampler, build_task, load_dataset
from fewshot.evaluation.evaluate import evaluate
from fewshot.methods import make_method
from fewshot.methods.losses import contrastive_loss, pair_bce_loss, pairwise_distances, triplet_loss
from fewshot.methods.siamese import SiameseNet

# -- losses on hand-worked examples -----------------------------------------------------------------------------


def test_contrastive_loss_by_hand():
    # (0,0) and (0,1) share class 0, (3,4) is class 1. Distances: d01 = 5, d02 = 1, d12 = sqrt(9 + 9) = sqrt(18).
    # margin 6: pair (0,1) negative: (6 - 5)^2 = 1; pair (0,2) positive: 1^2 = 1;
    # pair (1,2) negative: (6 - sqrt(18))^2 = 36 - 12 sqrt(18) + 18 = 54 - 36 sqrt(2). Mean over the 3 pairs.
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    expected = (1 + 1 + 54 - 36 * math.sqrt(2)) / 3  # 1.69610
    assert contrastive_loss(points, labels, margin=6.0).item() == pytest.approx(expected, abs=1e-5)
    # margin 4: both negatives are beyond it and cost nothing; only the positive pair's 1^2 remains.
    assert contrastive_loss(points, labels, margin=4.0).item() == pytest.approx(1 / 3, abs=1e-6)


# Four points on a line: A=0, B=2 (class 0), C=1, D=2.4 (class 1); margin 0.8.
# Distances: AB = 2 and CD = 1.4 (positives); AC = 1, AD = 2.4, BC = 1, BD = 0.4 (negatives).
LINE = torch.tensor([[0.0], [2.0], [1.0], [2.4]])
LINE_LABELS = torch.tensor([0, 0, 1, 1])


def test_triplet_loss_mining_rules_by_hand():
    # batch_hard, per anchor max(0, farthest positive - closest negative + 0.8):
    #   A: 2 - min(1, 2.4) + 0.8 = 1.8;  B: 2 - min(1, 0.4) + 0.8 = 2.4
    #   C: 1.4 - min(1, 1) + 0.8 = 1.2;  D: 1.4 - min(2.4, 0.4) + 0.8 = 1.8      mean 7.2 / 4 = 1.8
    assert triplet_loss(LINE, LINE_LABELS, 0.8, "batch_hard").item() == pytest.approx(1.8, abs=1e-5)
    # semi_hard, per (anchor, positive): the closest negative with d_ap < d_an < d_ap + 0.8, else the closest one:
    #   A->B: d_ap 2, band (2, 2.8) holds D (2.4): 2 - 2.4 + 0.8 = 0.4
    #   B->A: d_ap 2, negatives 1 and 0.4, none in the band -> closest 0.4: 2 - 0.4 + 0.8 = 2.4
    #   C->D: d_ap 1.4, negatives 1 and 1, band (1.4, 2.2) empty -> 1: 1.4 - 1 + 0.8 = 1.2
    #   D->C: d_ap 1.4, negatives 2.4 (beyond the band) and 0.4 -> 0.4: 1.4 - 0.4 + 0.8 = 1.8   mean 5.8 / 4 = 1.45
    assert triplet_loss(LINE, LINE_LABELS, 0.8, "semi_hard").item() == pytest.approx(1.45, abs=1e-5)
    # all 8 triplets (anchor, positive, negative):
    #   A,B,C 2-1+.8 = 1.8   A,B,D 2-2.4+.8 = 0.4   B,A,C 1.8   B,A,D 2-0.4+.8 = 2.4
    #   C,D,A 1.4-1+.8 = 1.2   C,D,B 1.2   D,C,A 1.4-2.4+.8 = -0.2 -> 0   D,C,B 1.4-0.4+.8 = 1.8     sum 10.6 / 8
    assert triplet_loss(LINE, LINE_LABELS, 0.8, "all").item() == pytest.approx(1.325, abs=1e-5)


def test_triplet_loss_is_zero_when_classes_are_far_apart_and_without_positives():
    far = torch.tensor([[0.0], [0.1], [5.0], [5.2]])
    for mining in ("batch_hard", "semi_hard", "all"):
        assert triplet_loss(far, LINE_LABELS, 1.0, mining).item() == 0.0
        no_positive = triplet_loss(LINE.clone().requires_grad_(), torch.tensor([0, 1, 2, 3]), 1.0, mining)
        assert no_positive.item() == 0.0
        no_positive.backward()  # still a graph, not a NaN
    with pytest.raises(ValueError, match=r"'batch_hard'.*\(got 'hardest'\)"):
        triplet_loss(LINE, LINE_LABELS, 1.0, "hardest")


def test_pair_bce_loss_matches_torch_on_the_upper_triangle():
    torch.manual_seed(0)
    logits = torch.randn(5, 5)
    labels = torch.tensor([0, 0, 1, 1, 2])
    positive_pairs = [(0, 1), (2, 3)]
    negative_pairs = [(i, j) for i in range(5) for j in range(i + 1, 5) if (i, j) not in positive_pairs]
    assert len(negative_pairs) == 8

    def bce(pairs, target):
        values = torch.stack([logits[i, j] for i, j in pairs])
        return F.binary_cross_entropy_with_logits(values, torch.full_like(values, target))

    expected = 0.5 * bce(positive_pairs, 1.0) + 0.5 * bce(negative_pairs, 0.0)
    assert pair_bce_loss(logits, labels).item() == pytest.approx(expected.item(), abs=1e-6)
    # the lower triangle and the diagonal are never read
    assert pair_bce_loss(logits.triu(1) + 100 * torch.ones(5, 5).tril(), labels).item() == pytest.approx(
        expected.item(), abs=1e-6
    )


def test_gradients_are_finite_when_embeddings_coincide():
    base = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [0.0, 3.0]])  # rows 0-2 coincide
    labels = torch.tensor([0, 0, 1, 1])  # 0 = 1 is a positive pair at d = 0, 0 = 2 a negative one
    losses = {
        "contrastive": lambda x: contrastive_loss(x, labels, 1.0),
        **{m: (lambda x, m=m: triplet_loss(x, labels, 1.0, m)) for m in ("batch_hard", "semi_hard", "all")},
        "bce": lambda x: pair_bce_loss(-pairwise_distances(x, x), labels),
    }
    for name, loss in losses.items():
        points = base.clone().requires_grad_()
        value = loss(points)
        value.backward()
        assert torch.isfinite(value), name
        assert torch.isfinite(points.grad).all(), name
    model = SiameseNet(torch.nn.Identity(), loss="triplet")
    images = base.clone().requires_grad_()
    model.embed(images).sum().backward()  # through the L2 normalisation
    assert torch.isfinite(images.grad).all()


# -- classify ---------------------------------------------------------------------------------------------------


def test_nearest_and_mean_aggregation_pick_different_classes():
    # Query at 1 on a line; class 0 support at 0 and 10, class 1 at 3 and 4.
    # nearest: class 0 is at distance 1, class 1 at 2 -> class 0; logits (-1, -2).
    # mean:    class 0 (1 + 9) / 2 = 5, class 1 (2 + 3) / 2 = 2.5 -> class 1; logits (-5, -2.5).
    support = torch.tensor([[0.0, 0.0], [10.0, 0.0], [3.0, 0.0], [4.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[1.0, 0.0]])
    nearest = SiameseNet(torch.nn.Identity(), aggregate="nearest").classify(support, labels, query)
    mean = SiameseNet(torch.nn.Identity(), aggregate="mean").classify(support, labels, query)
    assert torch.allclose(nearest, torch.tensor([[-1.0, -2.0]]), atol=1e-5)
    assert torch.allclose(mean, torch.tensor([[-5.0, -2.5]]), atol=1e-5)


@pytest.mark.parametrize("aggregate", ["nearest", "mean"])
def test_bce_head_logits_are_w_dot_abs_difference_plus_b(aggregate):
    torch.manual_seed(0)
    model = SiameseNet(torch.nn.Identity(), loss="bce", aggregate=aggregate)
    support, labels, query = torch.randn(6, 4), torch.tensor([2, 0, 1, 0, 2, 1]), torch.randn(3, 4)
    logits = model.classify(support, labels, query)  # the head learns its input size here: 4
    head = model.head
    pair = head((query[:, None] - support[None]).abs()).squeeze(-1)  # [3, 6]
    reduce = (lambda x: x.max(1).values) if aggregate == "nearest" else (lambda x: x.mean(1))
    expected = torch.stack([reduce(pair[:, labels == c]) for c in range(3)], dim=1)
    assert torch.allclose(logits, expected, atol=1e-5)
    logits.sum().backward()
    assert head.weight.grad is not None and head.bias.grad is not None


@pytest.mark.parametrize(("loss", "aggregate"), [("triplet", "nearest"), ("contrastive", "mean"), ("bce", "nearest")])
def test_batched_classify_equals_per_episode_classify(loss, aggregate):
    torch.manual_seed(0)
    model = SiameseNet(torch.nn.Identity(), loss=loss, aggregate=aggregate)
    support, query = torch.randn(4, 6, 8), torch.randn(4, 5, 8)
    labels = torch.stack([torch.randperm(6) % 3 for _ in range(4)])  # shuffled 3-way 2-shot
    batched = model.classify(support, labels, query)
    assert batched.shape == (4, 5, 3)
    for e in range(4):
        assert torch.allclose(batched[e], model.classify(support[e], labels[e], query[e]), atol=1e-5)


def test_classify_runs_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    support, labels, query = torch.randn(6, 8) * 10, torch.tensor([0, 0, 1, 1, 2, 2]), torch.randn(5, 8) * 10
    for loss in ("triplet", "bce"):
        model = SiameseNet(torch.nn.Identity(), loss=loss)
        plain = model.classify(support, labels, query)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model.classify(support.bfloat16(), labels, query.bfloat16())
        assert half.dtype == torch.float32
        assert torch.allclose(half, model.classify(support.bfloat16().float(), labels, query.bfloat16().float()))
        assert (half.argmax(1) == plain.argmax(1)).all()


# -- the method -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"loss": "hinge"}, "loss must be one of 'contrastive', 'triplet', 'bce' \\(got 'hinge'\\)"),
        ({"mining": "hardest"}, "mining must be one of 'batch_hard', 'semi_hard', 'all' \\(got 'hardest'\\)"),
        ({"aggregate": "max"}, "aggregate must be one of 'nearest', 'mean' \\(got 'max'\\)"),
        ({"margin": 0}, "margin must be a positive number \\(got 0\\)"),
        ({"embedding_dim": 0}, "embedding_dim must be a positive integer or None \\(got 0\\)"),
    ],
)
def test_bad_options_are_refused_with_the_choices(options, message):
    with pytest.raises(ValueError, match=message):
        SiameseNet(torch.nn.Identity(), **options)
    with pytest.raises(ValueError, match=message):
        make_method("siamese", torch.nn.Identity(), **options)


@pytest.mark.parametrize("loss", ["contrastive", "triplet", "bce"])
def test_loss_trains_and_reloads_with_an_inferred_projection_head(loss):
    """The head's input size is read on first use, after a fused optimizer (and channels-last) saw the weights,
    and from the state dict when a fresh model loads a checkpoint."""
    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(2)
    task = Task(torch.rand(8, 1, 28, 28), labels, torch.rand(8, 1, 28, 28), labels)

    def build() -> SiameseNet:
        return SiameseNet(make_backbone("conv4", hidden=16), loss=loss, embedding_dim=8)

    model = build().to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    for _ in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value, logits = model.loss(task)
        assert logits.shape == (8, 4) and torch.isfinite(value)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert model.projection.weight.shape == (8, 16)
    fresh = build()
    fresh.load_state_dict(model.state_dict())
    model.eval()
    fresh.eval()
    with torch.no_grad():
        expected = model(task.support_images, task.support_labels, task.query_images)
        assert torch.allclose(fresh(task.support_images, task.support_labels, task.query_images), expected, atol=1e-5)


# -- learning ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("options", "episodes"), [("loss=triplet", 50), ("loss=contrastive", 50)])
def test_siamese_learns_unseen_glyph_classes_well_above_chance(tmp_path, options, episodes):
    from fewshot.commands import start_training
    from fewshot.training.checkpoint import load_model
    from tests.helpers import glyph_settings

    settings = glyph_settings(method="siamese", method_options=options, episodes=episodes, val_every=episodes, lr=2e-3)
    start_training(settings, tmp_path / "run", quiet=True)
    model, spec = load_model(tmp_path / "run")
    assert isinstance(model, SiameseNet) and spec.method_options == {"loss": options.split("=")[1]}
    unseen = load_dataset("glyphs", split="evaluation", glyph_classes=60)
    torch.manual_seed(0)
    before = evaluate(
        make_method("siamese", make_backbone("conv4"), loss=model.loss_name), unseen, 5, 1, episodes=200, seed=1
    )
    after = evaluate(model, unseen, 5, 1, episodes=200, seed=1)
    assert after.accuracy > 0.6, after.summary()  # chance is 0.2
    assert after.accuracy > before.accuracy + 0.1
    task = build_task(unseen, TaskSampler(unseen, 5, 1, 1, 1).spec(0))
    assert model(task.support_images, task.support_labels, task.query_images).shape == (5, 5)
    # Not collapsed: unseen classes lie apart on the unit sphere at the scale of the margin (0.5), not at the
    # hundredth of it where the batch-hard triplets of the siamese recipe until session 39 left every image.
    with torch.no_grad():
        features = model.embed(torch.cat([task.support_images, task.query_images]))
    assert torch.pdist(features[:5]).median() > 0.1
