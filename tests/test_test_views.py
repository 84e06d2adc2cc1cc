"""Test-time augmentation (metric methods and head-only adaptation), and training tasks drawn within one alphabet."""

from __future__ import annotations

import pytest
import torch

from fewshot.commands import build_train_config, start_training
from fewshot.data.augment import AugmentConfig, augment
from fewshot.data.task import Task
from fewshot.evaluation.evaluate import embed_dataset
from fewshot.methods.base import class_means
from fewshot.methods.inner_loop import configure_batch_norm
from fewshot.training.checkpoint import ModelSpec, load_model
from fewshot.training.trainer import Trainer
from tests.helpers import blob_dataset, glyph_settings

SHIFT = AugmentConfig(rotation=10.0, shift=0.1)


def test_shared_augmentation_moves_every_image_alike():
    image = torch.zeros(1, 1, 12, 12)
    image[0, 0, 3:6, 4:9] = 1.0
    batch = image.repeat(4, 1, 1, 1)
    shared = augment(batch, SHIFT, torch.Generator().manual_seed(0), shared=True)
    assert torch.equal(shared, shared[:1].expand_as(shared))
    assert not torch.allclose(shared[0], image[0])
    each = augment(batch, SHIFT, torch.Generator().manual_seed(0))
    assert not torch.allclose(each[0], each[1])


def test_test_views_average_fixed_transforms_and_do_not_depend_on_the_batch():
    model = ModelSpec(image_shape=(1, 16, 16), test_views=6).build()
    images = torch.rand(5, 1, 16, 16)
    model.train()
    assert torch.equal(model.features(images), model.embed(images))  # training: no views
    model.eval()
    with torch.no_grad():
        averaged, plain = model.features(images), model.embed(images)
        assert not torch.allclose(averaged, plain)
        torch.testing.assert_close(model.features(images[3:]), averaged[3:])
        generator = torch.Generator().manual_seed(0)
        by_hand = plain + sum(model.embed(augment(images, model.test_augment, generator, shared=True))
                              for _ in range(5))
        torch.testing.assert_close(averaged, by_hand / 6)


def test_unit_length_methods_stay_unit_length_with_views():
    model = ModelSpec(method="siamese", image_shape=(1, 16, 16), test_views=3).build().eval()
    with torch.no_grad():
        norms = model.features(torch.rand(4, 1, 16, 16)).norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones(4))


def test_views_are_refused_without_fixed_features_and_without_a_transform():
    with pytest.raises(ValueError, match="adapts its backbone"):
        ModelSpec(method="maml", method_options={"ways": 5}, image_shape=(1, 16, 16), test_views=4).build()
    with pytest.raises(ValueError, match="adapts its backbone"):
        ModelSpec(method="protomaml", method_options={"adapt_body": True}, image_shape=(1, 16, 16),
                  test_views=4).build()
    with pytest.raises(ValueError, match="no per-image features"):
        ModelSpec(method="mann", image_shape=(1, 16, 16), test_views=4).build()
    with pytest.raises(ValueError, match="need an augmentation"):
        ModelSpec(image_shape=(1, 16, 16), test_views=4, test_augment="none").build()


def test_head_only_adaptation_starts_from_features_averaged_over_views():
    """Proto-MAML with no test step is the prototype classifier; with views, of features averaged over views, each
    view of the support and query images normalised with the view's support statistics."""
    torch.manual_seed(0)
    model = ModelSpec(method="protomaml", method_options={"test_inner_steps": 0}, image_shape=(1, 16, 16),
                      test_views=3).build()
    support, labels, query = torch.rand(6, 1, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2]), torch.rand(4, 1, 16, 16)
    model.eval()
    logits = model(support, labels, query)
    generator, total = torch.Generator().manual_seed(0), 0.0
    for view in range(3):
        images = torch.cat([support, query])
        if view:
            images = augment(images, model.test_augment, generator, shared=True)
        with configure_batch_norm(model.backbone, statistics_rows=6), torch.no_grad():
            total = total + model.backbone(images).flatten(1)
    features = total / 3
    prototypes = class_means(features[:6], labels, 3)
    torch.testing.assert_close(logits, 2 * features[6:] @ prototypes.T - prototypes.pow(2).sum(-1))
    model.set_test_views(1)
    assert not torch.allclose(model(support, labels, query), logits)
    # training never uses the views
    model.train()
    task = Task(support, labels, query, torch.tensor([0, 1, 2, 0]))
    with_views = model.loss(task)[0]
    model.set_test_views(3)
    torch.testing.assert_close(model.loss(task)[0], with_views)


def test_views_travel_with_the_checkpoint_and_can_be_overridden(tmp_path):
    settings = glyph_settings(episodes=4, test_views=4, test_augment="rotation=5,shift=0.05", image_size=16)
    start_training(settings, tmp_path / "run", quiet=True)
    model, spec = load_model(tmp_path / "run")
    assert (spec.test_views, model.test_views, model.test_augment.rotation) == (4, 4, 5.0)
    plain, _ = load_model(tmp_path / "run", test_views=1)
    data = blob_dataset(size=16)
    cpu = torch.device("cpu")
    cached, cached_plain = embed_dataset(model, data, cpu), embed_dataset(plain, data, cpu)
    assert not torch.allclose(cached, cached_plain)  # evaluation embeds through the views
    with torch.no_grad():
        torch.testing.assert_close(cached[:4], model.features(data.load_many(range(4))))


def test_within_alphabet_training_draws_each_task_from_one_alphabet(tmp_path):
    data = blob_dataset(num_classes=6)
    data.class_groups = ["a", "a", "a", "b", "b", "b"]
    settings = glyph_settings(episodes=2, within_alphabet=True, ways=3)
    trainer = Trainer(build_train_config(settings, data), data, None, tmp_path / "run")
    for i in range(20):
        classes = trainer.sampler.spec(i).classes
        assert len({data.class_groups[c] for c in classes}) == 1


def test_test_views_default_to_the_training_augmentation():
    data = blob_dataset()
    trained_with = build_train_config(glyph_settings(test_views=4, augment="rotation=7"), data).model
    assert trained_with.build().test_augment == AugmentConfig(rotation=7.0)
    unaugmented = build_train_config(glyph_settings(test_views=4), data).model.build()
    assert unaugmented.test_augment.rotation == 8.0  # the method's default transforms


def test_methods_without_cached_features_validate_with_one_view_and_keep_their_views(tmp_path, monkeypatch):
    """Views of a Proto-MAML multiply its backbone passes per validation task: validation uses one view, and the
    checkpoint keeps the views; a metric method validates with its views (they are cheap on cached features)."""
    import fewshot.training.trainer as trainer_module

    seen: list[tuple[str, int]] = []
    evaluate = trainer_module.evaluate

    def recording(model, *args, **kwargs):
        seen.append((type(model).__name__, model.test_views))
        return evaluate(model, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate", recording)
    for method in ("protomaml", "protonet"):
        settings = glyph_settings(method=method, ways=5, episodes=10, val_every=5, val_episodes=4, test_views=4,
                                  test_augment="rotation=5,shift=0.05", image_size=16)
        start_training(settings, tmp_path / method, quiet=True)
        model, spec = load_model(tmp_path / method)
        assert (spec.test_views, model.test_views) == (4, 4)
    assert seen == [("ProtoMAML", 1)] * 2 + [("ProtoNet", 4)] * 2
