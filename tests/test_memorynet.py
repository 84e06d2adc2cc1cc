from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fewshot.backbones import Conv4
from fewshot.cli import main
from fewshot.data import Task, TaskSampler, build_task, load_dataset
from fewshot.methods.memorynet import Memory, MemoryNet
from tests.helpers import (
    assert_bf16_matches_fp32,
    assert_cached_evaluation_matches_per_task,
    train_on_glyphs_and_score_unseen,
    write_png,
)


def _identity_net(**options) -> MemoryNet:
    return MemoryNet(torch.nn.Flatten(), key_size=None, image_size=2, **{"learn_temperature": False, **options})


def test_a_query_equal_to_a_stored_key_reads_back_that_keys_value():
    model = _identity_net(temperature=0.01)
    keys = F.normalize(torch.randn(6, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = torch.tensor([2, 0, 1, 1, 0, 2])
    memory_keys, values = model.write(keys, labels, 3)
    assert torch.equal(values, F.one_hot(labels, 3).float())
    read = model.read(memory_keys, values, keys)  # each query is one stored key
    assert torch.allclose(read, values, atol=1e-3)
    # a blunt temperature mixes the slots: the read is no longer the stored value
    assert not torch.allclose(_identity_net(temperature=10.0).read(memory_keys, values, keys), values, atol=0.1)


def test_prototype_write_gives_one_slot_per_class_holding_the_normalised_mean():
    model = _identity_net(write="prototypes")
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    memory_keys, values = model.write(keys, torch.tensor([0, 0, 1]), 2)
    assert torch.allclose(memory_keys, torch.tensor([[2**-0.5, 2**-0.5], [0.6, 0.8]]))
    assert torch.equal(values, torch.eye(2))


def test_writing_more_than_the_memory_holds_is_refused_with_both_numbers():
    model = _identity_net(memory_size=4)
    with pytest.raises(ValueError, match="holds 4 slots but 6 items"):
        model.classify(torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 2]), torch.randn(2, 8))
    # one slot per class fits
    assert _identity_net(memory_size=4, write="prototypes").classify(
        torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 2]), torch.randn(2, 8)).shape == (2, 3)


def test_predictor_starts_from_read_value_plus_query_similarity():
    model = _identity_net(temperature=0.5)
    with torch.no_grad():
        model.predictor[-1].weight.zero_()
        model.predictor[-1].bias.zero_()
    support = F.normalize(torch.randn(4, 8), dim=-1)
    labels, query = torch.tensor([0, 1, 0, 1]), F.normalize(torch.randn(3, 8), dim=-1)
    attention = torch.softmax(query @ support.T / 0.5, -1)
    read = attention @ F.one_hot(labels, 2).float()
    class_keys = F.normalize(F.one_hot(labels, 2).float().T @ support, dim=-1)
    expected = read.log() + query @ class_keys.T / 0.5
    assert torch.allclose(model.classify(support, labels, query), expected, atol=1e-5)


def test_options_are_checked():
    for options, message in (({"write": "slots"}, "write"), ({"temperature": 0.0}, "temperature"),
                             ({"memory_size": 0}, "memory_size")):
        with pytest.raises(ValueError, match=message):
            MemoryNet(Conv4(), **options)


def test_batched_classify_and_cached_evaluation_match_per_task():
    torch.manual_seed(0)
    model = MemoryNet(Conv4()).eval()
    support, labels, query = torch.randn(3, 10, 64), torch.arange(5).repeat(2).expand(3, -1), torch.randn(3, 7, 64)
    batched = model.classify(support, labels, query)
    assert torch.allclose(batched[1], model.classify(support[1], labels[1], query[1]), atol=1e-5)
    data = load_dataset("glyphs", split="evaluation", glyph_classes=20)
    assert_cached_evaluation_matches_per_task(model, data)
    task = build_task(data, TaskSampler(data, 5, 2, 3, 1).spec(0))
    assert_bf16_matches_fp32(model, task)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A memorynet trained briefly on glyphs, and its accuracy on unseen glyph classes before and after."""
    tmp_path = tmp_path_factory.mktemp("memorynet")
    before, after, model = train_on_glyphs_and_score_unseen(tmp_path, method="memorynet", episodes=60, val_every=60,
                                                           lr=2e-3)
    return tmp_path / "run", model, before, after


@pytest.mark.slow
def test_memorynet_learns_unseen_glyph_classes_well_above_chance(trained):
    _, _, before, after = trained
    assert after > 0.7, after  # chance is 0.2
    assert after > before + 0.1, (before, after)


def _class_folder(root, data, classes: list[int], per_class: int, offset: int = 0) -> None:
    for c in classes:
        items = np.flatnonzero(data.item_classes == c)[offset : offset + per_class]
        for i in items:
            # glyphs are ink = 1; the model inverts files as it does Omniglot's black-on-white PNGs
            write_png(root / data.class_names[c] / f"{i}.png", 1 - data.load(int(i))[0].numpy())


@pytest.mark.slow
def test_a_class_added_to_a_saved_memory_is_predicted_for_its_own_images(trained, tmp_path, capsys):
    run, model, _, _ = trained
    data = load_dataset("glyphs", split="evaluation", glyph_classes=12)
    _class_folder(tmp_path / "support", data, list(range(5)), per_class=3)
    _class_folder(tmp_path / "new", data, [7], per_class=3)
    _class_folder(tmp_path / "queries", data, [7], per_class=6, offset=3)
    memory_file = tmp_path / "memory.pt"
    assert main(["memory", "write", "--checkpoint", str(run), "--memory", str(memory_file),
                 "--support", str(tmp_path / "support")]) == 0
    before = Memory.load(memory_file)
    assert len(before.class_names) == 5 and len(before) == 15
    new_name = data.class_names[7]
    assert main(["memory", "add", "--checkpoint", str(run), "--memory", str(memory_file), "--class", "newcomer",
                 "--images", str(tmp_path / "new" / new_name)]) == 0
    extended = Memory.load(memory_file)
    assert extended.class_names[:5] == before.class_names and extended.class_names[5] == "newcomer"
    assert torch.equal(extended.keys[:15], before.keys)  # nothing stored before was rewritten
    capsys.readouterr()
    assert main(["memory", "predict", "--checkpoint", str(run), "--memory", str(memory_file), "--json",
                 "--query", str(tmp_path / "queries" / new_name)]) == 0
    import json

    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions) == 6
    assert sum(p["predicted"] == "newcomer" for p in predictions) >= 5, predictions
    # the same memory through the Python API
    queries = torch.stack([data.load(int(i)) for i in np.flatnonzero(data.item_classes == 7)[3:9]])
    assert (model.predict_memory(extended, queries).argmax(1) == 5).float().mean() >= 5 / 6


def test_memory_errors_name_the_problem(trained, tmp_path):
    run, model, _, _ = trained
    memory = model.add_class(model.new_memory(), "a", torch.rand(2, 1, 28, 28))
    with pytest.raises(ValueError, match="already in the memory"):
        model.add_class(memory, "a", torch.rand(1, 1, 28, 28))
    with pytest.raises(ValueError, match="add at least two"):
        model.predict_memory(memory, torch.rand(1, 1, 28, 28))
    small = Memory(memory.keys, memory.labels, memory.class_names, capacity=3, model=memory.model)
    with pytest.raises(ValueError, match="holds 3 slots and 2 are used"):
        model.add_class(small, "b", torch.rand(2, 1, 28, 28))
    other = MemoryNet(Conv4())
    with pytest.raises(ValueError, match="written by another network"):
        other.predict_memory(model.add_class(memory, "b", torch.rand(1, 1, 28, 28)), torch.rand(1, 1, 28, 28))
    assert main(["memory", "predict", "--checkpoint", str(run), "--memory", str(tmp_path / "none.pt"),
                 "--query", str(tmp_path)]) == 2
    (tmp_path / "bad.pt").write_bytes(b"not a memory")
    assert main(["memory", "predict", "--checkpoint", str(run), "--memory", str(tmp_path / "bad.pt"),
                 "--query", str(tmp_path)]) == 2
    assert main(["memory", "write", "--checkpoint", str(run), "--memory", str(tmp_path / "m.pt")]) == 2


def test_memory_command_refuses_another_method(tmp_path):
    from fewshot.training.checkpoint import ModelSpec, save_checkpoint

    spec = ModelSpec("protonet", "conv4")
    save_checkpoint(tmp_path / "p.pt", spec.build(), spec)
    assert main(["memory", "write", "--checkpoint", str(tmp_path / "p.pt"), "--memory", str(tmp_path / "m.pt"),
                 "--support", str(tmp_path)]) == 2


def test_memory_round_trips_through_a_file(tmp_path):
    memory = Memory(torch.randn(3, 4), torch.tensor([0, 1, 1]), ["x", "y"], capacity=8, model="abc")
    memory.save(tmp_path / "m.pt")
    loaded = Memory.load(tmp_path / "m.pt")
    assert torch.equal(loaded.keys, memory.keys) and loaded.class_names == ["x", "y"] and loaded.capacity == 8


def test_task_interface_gives_logits_over_the_task_classes():
    model = MemoryNet(Conv4())
    task = Task(torch.rand(6, 1, 28, 28), torch.tensor([0, 0, 1, 1, 2, 2]), torch.rand(4, 1, 28, 28),
                torch.tensor([0, 1, 2, 0]))
    loss, logits = model.loss(task)
    assert logits.shape == (4, 3) and torch.isfinite(loss)
    loss.backward()
    assert model.log_temperature.grad is not None and model.project.weight.grad is not None
