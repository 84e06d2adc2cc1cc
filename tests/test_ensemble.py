"""Ensembles of independently trained backbones: combining runs, loading them, and refusing runs that do not fit."""

from __future__ import annotations

import json

import pytest
import torch

from fewshot.cli import main
from fewshot.training.checkpoint import CheckpointError, ModelSpec, combine_checkpoints, load_model, save_checkpoint

SPEC = ModelSpec(method="protonet", backbone="conv4", backbone_options={"hidden": 8}, image_shape=(1, 16, 16))


def saved_member(path, seed: int, spec: ModelSpec = SPEC):
    """A model of ``spec`` with random weights and batch-norm statistics of random images (so its features are
    of order one, as a trained model's are), saved at ``path``."""
    torch.manual_seed(seed)
    model = spec.build()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # running statistics = the mean over the batches seen
    with torch.no_grad():
        model.backbone(torch.rand(32, *spec.image_shape))
    save_checkpoint(path, model.eval(), spec)
    return model


@pytest.fixture
def task():
    generator = torch.Generator().manual_seed(0)
    support = torch.rand(5, 1, 16, 16, generator=generator)
    query = torch.rand(7, 1, 16, 16, generator=generator)
    return support, torch.arange(5), query


def test_protonet_ensemble_gives_the_mean_of_its_members_logits(tmp_path, task):
    members = [saved_member(tmp_path / f"m{seed}.pt", seed) for seed in (1, 2, 3)]
    spec = combine_checkpoints([tmp_path / f"m{seed}.pt" for seed in (1, 2, 3)], tmp_path / "ensemble")
    assert spec.ensemble == 3
    ensemble, loaded = load_model(tmp_path / "ensemble")
    assert loaded.ensemble == 3
    with torch.no_grad():
        expected = torch.stack([member(*task) for member in members]).mean(0)
        got = ensemble(*task)
    torch.testing.assert_close(got, expected)
    # the members really differ, so the mean is not one member's logits
    with torch.no_grad():
        assert (members[0](*task) - members[1](*task)).abs().max() > 0.1 * expected.abs().max()


def test_members_of_different_backbones_or_methods_are_refused(tmp_path):
    saved_member(tmp_path / "a.pt", 1)
    saved_member(tmp_path / "b.pt", 2, ModelSpec(**{**SPEC.to_dict(), "backbone_options": {"hidden": 16},
                                                    "image_shape": (1, 16, 16)}))
    with pytest.raises(CheckpointError, match="backbone_options"):
        combine_checkpoints([tmp_path / "a.pt", tmp_path / "b.pt"], tmp_path / "out")
    relation = ModelSpec(method="relationnet", image_shape=(1, 28, 28))
    saved_member(tmp_path / "r1.pt", 1, relation)
    saved_member(tmp_path / "r2.pt", 2, relation)
    with pytest.raises(CheckpointError, match="outside its backbone"):
        combine_checkpoints([tmp_path / "r1.pt", tmp_path / "r2.pt"], tmp_path / "out")
    protomaml = ModelSpec(method="protomaml", image_shape=(1, 28, 28))
    saved_member(tmp_path / "p1.pt", 1, protomaml)
    saved_member(tmp_path / "p2.pt", 2, protomaml)
    with pytest.raises(CheckpointError, match="does not compare image features"):
        combine_checkpoints([tmp_path / "p1.pt", tmp_path / "p2.pt"], tmp_path / "out")
    with pytest.raises(CheckpointError, match="at least 2"):
        combine_checkpoints([tmp_path / "a.pt"], tmp_path / "out")
    assert not (tmp_path / "out" / "best.pt").exists()


def test_cli_ensemble_writes_a_model_that_loads_and_refuses_to_overwrite(tmp_path, capsys):
    saved_member(tmp_path / "a.pt", 1)
    saved_member(tmp_path / "b.pt", 2)
    args = ["ensemble", "--checkpoints", str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--out", str(tmp_path / "e")]
    assert main(args) == 0
    model, spec = load_model(tmp_path / "e")
    assert spec.ensemble == 2 and len(model.backbone.members) == 2
    assert main(args) != 0
    assert "already holds a best.pt" in capsys.readouterr().err
    # an ensemble is not a member: combining it again is refused with the reason
    saved_member(tmp_path / "c.pt", 3)
    assert main(["ensemble", "--checkpoints", str(tmp_path / "e"), str(tmp_path / "c.pt"), "--out",
                 str(tmp_path / "f")]) != 0
    assert "already an ensemble" in capsys.readouterr().err


def test_train_ensemble_trains_members_apart_combines_them_and_resumes(tmp_path):
    import shutil

    from fewshot.commands import start_training
    from fewshot.data import DataError
    from tests.helpers import glyph_settings

    settings = glyph_settings(episodes=4, val_every=4, final=True, ensemble=2, seed=4)
    result = start_training(settings, tmp_path / "run", quiet=True)
    assert result.episodes == 8
    members = [load_model(tmp_path / "run" / f"member{i}")[0] for i in (1, 2)]
    configs = [json.loads((tmp_path / "run" / f"member{i}" / "config.json").read_text()) for i in (1, 2)]
    assert [c["seed"] for c in configs] == [4, 5] and configs[0]["data"] == configs[1]["data"]  # one split
    ensemble, spec = load_model(tmp_path / "run")
    assert spec.ensemble == 2
    first, second = (dict(m.backbone.named_parameters()) for m in members)
    assert any(not torch.equal(first[k], second[k]) for k in first)
    for i, member in enumerate(members):
        for name, value in member.backbone.state_dict().items():
            assert torch.equal(ensemble.backbone.members[i].state_dict()[name], value)
    with pytest.raises(DataError, match="already holds a run"):
        start_training(settings, tmp_path / "run", quiet=True)

    # killed after the first member: --resume trains the second and combines, as the uninterrupted run did
    shutil.copytree(tmp_path / "run", tmp_path / "killed")
    shutil.rmtree(tmp_path / "killed" / "member2")
    (tmp_path / "killed" / "best.pt").unlink()
    assert main(["train", "--resume", str(tmp_path / "killed"), "--quiet"]) == 0
    resumed, _ = load_model(tmp_path / "killed")
    for name, value in ensemble.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0)


def test_train_ensemble_refuses_a_method_it_cannot_combine_before_training(tmp_path):
    from fewshot.commands import start_training
    from tests.helpers import glyph_settings

    with pytest.raises(CheckpointError, match="outside its backbone"):
        start_training(glyph_settings(method="relationnet", final=True, ensemble=2), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
