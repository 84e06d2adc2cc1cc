from __future__ import annotations

import pytest
import torch

from fewshot.backbones import Conv4
from fewshot.data import Task, load_dataset
from fewshot.evaluation.sequence import instance_accuracy, presentation_index
from fewshot.methods.mann import MANN, content_read, least_used, lru_write


def _small(**options) -> MANN:
    return MANN(Conv4(hidden=8), hidden_size=16, memory_slots=6, slot_size=4, read_heads=1, **options)


def test_least_used_marks_the_slots_of_smallest_usage():
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.05], [0.0, 1.0, 2.0, 3.0]])
    assert torch.equal(least_used(usage, 1), torch.tensor([[0.0, 0, 0, 1], [1, 0, 0, 0]]))
    assert torch.equal(least_used(usage, 2), torch.tensor([[0.0, 1, 0, 1], [1, 1, 0, 0]]))


def test_a_write_under_lru_goes_to_the_least_used_slot():
    memory = torch.arange(12.0).view(1, 4, 3)
    usage = torch.tensor([[0.9, 0.1, 0.5, 0.7]])  # slot 1 is the least used
    previous_read = torch.tensor([[[0.0, 0.0, 1.0, 0.0]]])  # the head read slot 2 last step
    key = torch.tensor([[[7.0, -1.0, 2.0]]])
    written, weights = lru_write(memory, usage, previous_read, torch.tensor([[-30.0]]), key)  # gate ~ 0: LRU
    assert torch.allclose(weights, torch.tensor([[[0.0, 1.0, 0.0, 0.0]]]), atol=1e-6)
    assert torch.allclose(written[0, 1], key[0, 0])  # cleared, then written
    assert torch.equal(written[0, [0, 2, 3]], memory[0, [0, 2, 3]])  # every other slot untouched
    # gate ~ 1: the write goes where the head read last, adding to what is there (slot 1 is still cleared)
    written, _ = lru_write(memory, usage, previous_read, torch.tensor([[30.0]]), key)
    assert torch.allclose(written[0, 2], memory[0, 2] + key[0, 0])
    assert torch.equal(written[0, 1], torch.zeros(3)) and torch.equal(written[0, [0, 3]], memory[0, [0, 3]])


def test_a_key_equal_to_a_slot_reads_that_slot():
    memory = torch.eye(5).unsqueeze(0) * torch.arange(1.0, 6.0).view(1, 5, 1)  # orthogonal slots, any length
    keys = memory[:, [3]] * 0.1  # cosine addressing ignores the key's length
    weights = content_read(keys, memory, torch.tensor([[50.0]]))
    assert weights.argmax(-1).item() == 3 and weights[0, 0, 3] > 0.99
    assert torch.allclose(weights @ memory, memory[:, [3]], atol=0.05)
    assert torch.allclose(content_read(keys, memory, torch.tensor([[1.0]])).sum(-1), torch.ones(1, 1))


def test_each_step_sees_the_label_of_the_previous_step_only():
    torch.manual_seed(0)
    model = _small().eval()
    features, labels = torch.randn(1, 6, 8), torch.tensor([[0, 1, 2, 0, 1, 2]])  # Conv4(hidden=8): D = 8
    base, _ = model.run_sequence(features, labels)
    changed = labels.clone()
    changed[0, 3] = 4
    logits, _ = model.run_sequence(features, changed)
    assert torch.equal(logits[0, :4], base[0, :4])  # step 3's own label is not an input of steps 0..3
    assert not torch.allclose(logits[0, 4], base[0, 4])  # step 4 receives it


def test_training_loss_scores_every_step_of_a_seeded_shuffle_and_returns_query_logits():
    torch.manual_seed(0)
    model = _small()
    support, query = torch.rand(6, 1, 28, 28), torch.rand(3, 1, 28, 28)
    task = Task(support, torch.tensor([0, 0, 1, 1, 2, 2]), query, torch.tensor([2, 0, 1]), seed=5)
    loss, logits = model.loss(task)
    again, logits_again = model.loss(task)
    assert logits.shape == (3, 3) and torch.equal(loss, again) and torch.equal(logits, logits_again)
    # the same sequence built by hand: one shuffle of support and query, cross-entropy over all 9 steps
    order = torch.randperm(9, generator=torch.Generator().manual_seed(5))
    images, labels = torch.cat([support, query])[order], torch.cat([task.support_labels, task.query_labels])[order]
    sequence = model.sequence_logits(images[None], labels[None])[0, :, :3]
    assert torch.allclose(loss, torch.nn.functional.cross_entropy(sequence, labels), atol=1e-6)
    position = {int(item): step for step, item in enumerate(order)}
    assert torch.allclose(logits, sequence[[position[6], position[7], position[8]]], atol=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_forward_classifies_queries_as_independent_continuations():
    torch.manual_seed(0)
    model = _small().eval()
    support, labels, query = torch.rand(6, 1, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2]), torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        logits = model(support, labels, query)
        alone = model(support, labels, query[2:3])
    assert logits.shape == (4, 3)
    assert torch.allclose(logits[2:3], alone, atol=1e-5)  # other queries do not leak into a query's answer
    with pytest.raises(ValueError, match="at most 5"):
        model(torch.rand(6, 1, 28, 28), torch.arange(6), query)


def test_options_are_checked():
    for options, message in (({"ways": 0}, "ways"), ({"read_heads": 200}, "read_heads"),
                             ({"usage_decay": 1.5}, "usage_decay")):
        with pytest.raises(ValueError, match=message):
            MANN(Conv4(), **options)


def test_presentation_index_counts_appearances_of_each_class():
    labels = torch.tensor([[2, 0, 2, 2, 1, 0]])
    assert presentation_index(labels).tolist() == [[1, 1, 2, 3, 1, 2]]


class _Oracle(torch.nn.Module):
    """Wrong on a class's first presentation, right afterwards: what a perfect memory does at best."""

    def sequence_logits(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        seen = presentation_index(labels) > 1
        guess = torch.where(seen, labels, (labels + 1) % 5)
        return torch.nn.functional.one_hot(guess, 5).float()


def test_instance_accuracy_scores_each_presentation():
    data = load_dataset("glyphs", split="evaluation", glyph_classes=10)
    table = instance_accuracy(_Oracle(), data, ways=5, instances=4, episodes=20, seed=3)
    assert list(table) == [1, 2, 3, 4]
    assert table[1][0] == 0.0 and all(table[k][0] == 1.0 for k in (2, 3, 4))
    with pytest.raises(ValueError, match="sequence method"):
        instance_accuracy(torch.nn.Identity(), data)


@pytest.mark.slow
def test_mann_learns_glyph_sequences_above_chance(tmp_path):
    from fewshot.commands import start_training
    from fewshot.training.checkpoint import load_model
    from tests.helpers import glyph_settings

    settings = glyph_settings(method="mann", ways=3, shots=4, queries=1, meta_batch=16, episodes=500, val_every=500,
                              val_ways=3, lr=3e-3, lr_schedule="constant", image_size=16, backbone_options="hidden=16",
                              method_options="hidden_size=64,memory_slots=32,slot_size=16,read_heads=1")
    start_training(settings, tmp_path / "run", quiet=True)
    model, _ = load_model(tmp_path / "run")
    unseen = load_dataset("glyphs", split="evaluation", image_size=16, glyph_classes=30)
    table = instance_accuracy(model, unseen, ways=3, instances=5, episodes=100, seed=1)
    later = sum(table[k][0] for k in (3, 4, 5)) / 3
    assert later > 0.55, table  # chance is 1/3; the 1st presentation can only be guessed
    assert later > table[1][0] + 0.1, table  # what the memory adds beyond guessing by elimination
