from __future__ import annotations

import csv
import json

import pytest
import torch

from fewshot.commands import parse_options, prepare_training_data, start_training
from fewshot.training.checkpoint import CheckpointError, ModelSpec, load_model, read_checkpoint
from fewshot.training.trainer import TrainConfig, Trainer, TrainingError, learning_rate
from tests.helpers import blob_dataset, glyph_settings


def small_config(**overrides) -> TrainConfig:
    spec = ModelSpec("protonet", "conv4", {}, {"hidden": 16}, (1, 16, 16))
    defaults = dict(model=spec, ways=4, shots=1, queries=2, episodes=12, val_every=4, val_episodes=10, val_ways=3,
                    val_within_group=False, device="cpu", augment="rotation=10,shift=0.1", seed=5)
    return TrainConfig(**{**defaults, **overrides})


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_run_folder_contents(tmp_path):
    result = Trainer(small_config(), blob_dataset(), blob_dataset(seed=1), tmp_path / "run").fit(show_progress=False)
    run = tmp_path / "run"
    for name in ("config.json", "metrics.csv", "best.pt", "last.pt", "curves.png"):
        assert (run / name).is_file(), name
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["episode"]) for r in rows] == [4, 8, 12]
    assert all(0 <= float(r["val_accuracy"]) <= 1 for r in rows)
    assert json.loads((run / "config.json").read_text())["ways"] == 4
    best = read_checkpoint(run / "best.pt")
    best_in_csv = max(float(r["val_accuracy"]) for r in rows)
    assert best["val_accuracy"] == pytest.approx(best_in_csv) and best_in_csv == pytest.approx(result.best_val_accuracy)
    assert not list(run.glob("*.tmp"))  # atomic writes leave no temporaries
    # every validation query is right on these blobs: no temperature can be fitted, so best.pt keeps 1 and says why
    calibration = json.loads((run / "calibration.json").read_text())
    assert best["spec"]["temperature"] == calibration["temperature"] == 1.0
    assert "cannot pin it down" in calibration["failed"]


def test_resume_after_a_kill_ends_with_the_same_weights(tmp_path):
    train, val = blob_dataset(), blob_dataset(seed=1)
    whole = Trainer(small_config(), train, val, tmp_path / "whole")
    whole.fit(show_progress=False)

    killed = Trainer(small_config(), train, val, tmp_path / "killed")
    killed.fit(show_progress=False, stop_after=6)  # dies between checkpoints: last.pt is at episode 4
    resumed = Trainer(small_config(), train, val, tmp_path / "killed")
    resumed.resume()
    assert resumed.episode == 4
    resumed.fit(show_progress=False)
    for key, value in weights(whole.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert [r["episode"] for r in resumed.rows] == [r["episode"] for r in whole.rows]


@pytest.mark.parametrize("where", ["validation", "optimizer update"])
def test_ctrl_c_anywhere_then_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch, where):
    """Ctrl-C saves last.pt unless the weights are half-updated; a check it cut short is redone on resume."""
    train, val = blob_dataset(), blob_dataset(seed=1)
    whole = Trainer(small_config(), train, val, tmp_path / "whole")
    whole.fit(show_progress=False)

    interrupted = Trainer(small_config(), train, val, tmp_path / "run")
    if where == "validation":  # the check at episode 8, after its accuracy is known
        original = interrupted.validate

        def validate():
            result = original()
            if interrupted.episode == 8:
                raise KeyboardInterrupt
            return result

        monkeypatch.setattr(interrupted, "validate", validate)
    else:  # right after the 7th update, before the episode is counted
        original = interrupted.optimizer.step
        calls = []

        def step(*args, **kwargs):
            original(*args, **kwargs)
            calls.append(1)
            if len(calls) == 7:
                raise KeyboardInterrupt

        monkeypatch.setattr(interrupted.optimizer, "step", step)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(show_progress=False)
    resumed = Trainer(small_config(), train, val, tmp_path / "run")
    resumed.resume()
    assert resumed.episode == (8 if where == "validation" else 4)
    resumed.fit(show_progress=False)
    for key, value in weights(whole.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert [r["episode"] for r in resumed.rows] == [r["episode"] for r in whole.rows]
    assert [r["val_accuracy"] for r in resumed.rows] == [r["val_accuracy"] for r in whole.rows]


def test_nan_loss_stops_with_a_clear_message_and_keeps_last_good_checkpoint(tmp_path):
    trainer = Trainer(small_config(), blob_dataset(), blob_dataset(seed=1), tmp_path / "run")
    real_loss = trainer.model.loss
    calls = {"n": 0}

    def poisoned(task):
        calls["n"] += 1
        loss, logits = real_loss(task)
        return (loss * float("nan"), logits) if calls["n"] > 9 else (loss, logits)

    trainer.model.loss = poisoned
    with pytest.raises(TrainingError, match=r"loss became nan at episode 9.*last\.pt keeps the last good state"):
        trainer.fit(show_progress=False)
    last = read_checkpoint(tmp_path / "run" / "last.pt")
    assert last["episode"] == 8
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_checkpoint_of_another_backbone_is_refused(tmp_path):
    Trainer(small_config(episodes=4), blob_dataset(), None, tmp_path / "run").fit(show_progress=False)
    other = small_config(model=ModelSpec("protonet", "resnet12", {}, {"widths": (8, 8, 8, 8)}, (1, 16, 16)))
    trainer = Trainer(other, blob_dataset(), None, tmp_path / "run")
    with pytest.raises(CheckpointError, match="trained with backbone conv4, but this model uses resnet12"):
        trainer.resume()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nothing.pt")


class _RunsCode:
    def __reduce__(self):
        return (exec, ("raise SystemExit('unpickled code ran')",))


def test_checkpoint_with_python_objects_is_refused_without_running_them(tmp_path):
    torch.save({"format": "fewshot-checkpoint/1", "payload": _RunsCode()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="does not unpickle"):
        read_checkpoint(tmp_path / "evil.pt")


def test_final_run_has_no_validation_and_best_is_last(tmp_path):
    result = Trainer(small_config(), blob_dataset(), None, tmp_path / "run").fit(show_progress=False)
    assert result.best_val_accuracy is None
    best, last = read_checkpoint(tmp_path / "run" / "best.pt"), read_checkpoint(tmp_path / "run" / "last.pt")
    for key, value in last["model"].items():
        assert torch.equal(value, best["model"][key])


def test_time_budget_stops_the_run(tmp_path):
    config = small_config(episodes=10**9, time_budget=1.0, val_every=10**6)
    result = Trainer(config, blob_dataset(), None, tmp_path / "run").fit(show_progress=False)
    assert 1 <= result.episodes < 10**6 and result.elapsed_s < 5


def test_learning_rate_schedules():
    config = small_config(lr=1.0)
    assert learning_rate(config, 0.0) == pytest.approx(1.0)
    assert learning_rate(config, 1.0) == pytest.approx(0.02)
    assert learning_rate(config, 0.5) == pytest.approx(0.51)
    config.lr_schedule = "step"
    assert [learning_rate(config, p) for p in (0.1, 0.3, 0.6, 0.99)] == [1.0, 0.5, 0.25, 0.125]


def test_leave_alphabets_out_data_is_class_disjoint(omniglot_root):
    settings = glyph_settings(dataset="omniglot", root=str(omniglot_root), split="minimal", rotations=True,
                              val_alphabets="Greek", holdout_alphabets="Korean,Latin")
    train, val = prepare_training_data(settings)
    assert {"Greek", "Korean", "Latin"}.isdisjoint(train.class_groups)
    assert set(val.class_groups) == {"Greek"} and not any("/rot" in n for n in val.class_names)
    assert any(n.endswith("/rot90") for n in train.class_names)
    settings["flips"] = True
    flipped, val = prepare_training_data(settings)
    assert flipped.num_classes == 2 * train.num_classes and not any("/flip" in n for n in val.class_names)
    assert any(n.endswith("/rot270/flip") for n in flipped.class_names)


def test_existing_run_folder_is_not_overwritten(tmp_path):
    start_training(glyph_settings(episodes=2, val_every=2), tmp_path / "run", quiet=True)
    from fewshot.data import DataError

    with pytest.raises(DataError, match="already holds a run; pass --resume"):
        start_training(glyph_settings(episodes=2), tmp_path / "run", quiet=True)


def test_recipe_settings_are_overridden_by_flags():
    from fewshot.cli import build_parser
    from fewshot.commands import resolve_train_settings

    args = build_parser().parse_args(["train", "--recipe", "omniglot-protonet", "--root", "R", "--final",
                                      "--time-budget", "30", "--seed", "3", "--out", "x"])
    settings = resolve_train_settings(args)
    assert settings["rotations"] is True and settings["ways"] == 60  # from the recipe
    assert settings["time_budget"] == 30 and settings["seed"] == 3 and settings["final"] is True  # flags win
    assert settings["root"] == "R"
    assert settings["test_views"] == 16 and settings["within_alphabet"] is False  # recipe, then default
    flags = build_parser().parse_args(["train", "--recipe", "omniglot-protonet", "--within-alphabet",
                                       "--test-views", "1", "--out", "x"])
    assert resolve_train_settings(flags)["within_alphabet"] is True
    assert resolve_train_settings(flags)["test_views"] == 1
    assert settings["flips"] is True  # the recipe's mirrored classes, which --no-flips turns off
    no_flips = build_parser().parse_args(["train", "--recipe", "omniglot-protonet", "--no-flips", "--out", "x"])
    assert resolve_train_settings(no_flips)["flips"] is False
    no_rotations = build_parser().parse_args(["train", "--recipe", "omniglot-protonet", "--no-rotations", "--out", "x"])
    assert resolve_train_settings(no_rotations)["rotations"] is False
    bad = build_parser().parse_args(["train", "--recipe", "nope", "--out", "x"])
    from fewshot.data import DataError

    with pytest.raises(DataError, match="unknown recipe 'nope'"):
        resolve_train_settings(bad)


def test_method_options_given_with_a_recipe_add_to_its_own():
    from fewshot.cli import build_parser
    from fewshot.commands import resolve_train_settings

    def options(*argv: str) -> dict:
        settings = resolve_train_settings(build_parser().parse_args(["train", *argv, "--out", "x"]))
        return parse_options(settings["method_options"])

    merged = options("--recipe", "omniglot-maml", "--method-options", "workers=1,inner_lr=0.2")
    assert merged == {"inner_steps": 1, "inner_lr": 0.2, "test_inner_steps": 1, "shared_head": True, "workers": 1}
    # another method: the recipe's options were not for it
    assert options("--recipe", "omniglot-maml", "--method", "protonet", "--method-options", "distance=cosine") == {
        "distance": "cosine"}
    assert options("--recipe", "omniglot-maml")["shared_head"] is True


def test_backbone_options_given_with_a_recipe_replace_its_own_key_by_key():
    from fewshot.cli import build_parser
    from fewshot.commands import resolve_train_settings

    def options(*argv: str) -> dict:
        settings = resolve_train_settings(build_parser().parse_args(["train", *argv, "--out", "x"]))
        return parse_options(settings["backbone_options"])

    assert options("--recipe", "omniglot-protonet") == {"hidden": (32, 64, 64, 64)}
    assert options("--recipe", "omniglot-protonet", "--backbone-options", "hidden=64,pooling=avg") == {
        "hidden": 64, "pooling": "avg"}


def test_method_options_are_parsed():
    from fewshot.commands import parse_options
    from fewshot.data import DataError

    assert parse_options("margin=0.5,loss=triplet,fce=True") == {"margin": 0.5, "loss": "triplet", "fce": True}
    assert parse_options("hidden=(32,64,64,64),pooling=avg") == {"hidden": (32, 64, 64, 64), "pooling": "avg"}
    with pytest.raises(DataError, match="key=value"):
        parse_options("margin")


@pytest.mark.parametrize(("setting", "value", "flag"), [
    ("val_every", 0, "--val-every"), ("meta_batch", 0, "--meta-batch"), ("grad_clip", -1.0, "--grad-clip"),
    ("time_budget", 0, "--time-budget"), ("lr", float("nan"), "--lr"), ("ways", 2.5, "--ways"),
])
def test_bad_training_settings_are_refused_up_front(setting, value, flag):
    with pytest.raises(ValueError, match=flag):
        small_config(**{setting: value})


def test_cli_bad_settings_exit_2_with_one_line(tmp_path, capsys):
    from fewshot.cli import main

    common = ["train", "--dataset", "glyphs", "--episodes", "2", "--out", str(tmp_path / "run")]
    assert main([*common, "--backbone-options", "hiden=32"]) == 2
    assert "bad options for backbone 'conv4'" in capsys.readouterr().err
    assert main([*common, "--val-every", "0"]) == 2
    assert "--val-every must be a positive whole number" in capsys.readouterr().err


def test_atomic_writes_create_folders_and_get_the_usual_permissions(tmp_path):
    import os

    from fewshot.utils import atomic_write_text

    mask = os.umask(0)
    os.umask(mask)
    atomic_write_text(tmp_path / "new" / "metrics.csv", "episode\n")
    written = tmp_path / "new" / "metrics.csv"
    assert written.read_text() == "episode\n"
    assert written.stat().st_mode & 0o777 == 0o666 & ~mask  # as open() would create it, not mkstemp's 0600
    assert not list((tmp_path / "new").glob("*.tmp"))


def test_init_starts_a_new_run_from_the_checkpoint_weights(tmp_path):
    train, val = blob_dataset(), blob_dataset(seed=1)
    Trainer(small_config(), train, val, tmp_path / "first").fit(show_progress=False)
    source = read_checkpoint(tmp_path / "first" / "best.pt")["model"]
    fresh = Trainer(small_config(seed=6), train, val, tmp_path / "fresh")
    started = Trainer(small_config(seed=6, init=str(tmp_path / "first")), train, val, tmp_path / "second")
    started.fit(show_progress=False, stop_after=0)  # loads the weights, then stops before the first step
    for key, value in source.items():
        assert torch.equal(started.model.state_dict()[key], value), key
    assert not all(torch.equal(fresh.model.state_dict()[k], v) for k, v in source.items())
    assert json.loads((tmp_path / "second" / "config.json").read_text())["init"] == str(tmp_path / "first")


def test_init_from_another_method_takes_its_backbone_and_keeps_a_fresh_head(tmp_path, capsys):
    train = blob_dataset()
    Trainer(small_config(episodes=4), train, None, tmp_path / "proto").fit(show_progress=False)
    source = read_checkpoint(tmp_path / "proto" / "best.pt")["model"]
    anil = ModelSpec("anil", "conv4", {"ways": 4}, {"hidden": 16}, (1, 16, 16))
    fresh = Trainer(small_config(model=anil, episodes=4), train, None, tmp_path / "fresh")
    started = Trainer(small_config(model=anil, episodes=4, init=str(tmp_path / "proto" / "best.pt")), train, None,
                      tmp_path / "anil")
    started.fit(show_progress=False, stop_after=0)
    state = started.model.state_dict()
    backbone = [k for k in state if k.startswith("backbone.")]  # its batch norm keeps no running statistics
    assert len(backbone) == 12  # 4 blocks: convolution, batch-norm scale and shift
    for key in backbone:
        assert torch.equal(state[key], source[key]), key
    for key in ("head.weight", "head.bias"):
        assert torch.equal(state[key], fresh.model.state_dict()[key]), key
    assert "2 of the anil's other tensors start fresh" in capsys.readouterr().err


def test_init_from_a_resumed_run_is_not_applied_again(tmp_path):
    train, val = blob_dataset(), blob_dataset(seed=1)
    Trainer(small_config(episodes=4), train, val, tmp_path / "first").fit(show_progress=False)
    config = small_config(seed=6, init=str(tmp_path / "first"))
    whole = Trainer(config, train, val, tmp_path / "whole")
    whole.fit(show_progress=False)
    Trainer(config, train, val, tmp_path / "killed").fit(show_progress=False, stop_after=6)
    resumed = Trainer(config, train, val, tmp_path / "killed")
    resumed.resume()
    resumed.fit(show_progress=False)
    for key, value in weights(whole.model).items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_init_with_another_backbone_or_channels_is_refused(tmp_path, capsys):
    from fewshot.cli import main

    Trainer(small_config(episodes=4), blob_dataset(), None, tmp_path / "run").fit(show_progress=False)
    narrow = ModelSpec("protonet", "conv4", {}, {"hidden": 8}, (1, 16, 16))
    with pytest.raises(CheckpointError, match=r"backbone_options \{'hidden': 16\}.*same --backbone-options"):
        Trainer(small_config(model=narrow, init=str(tmp_path / "run")), blob_dataset(), None,
                tmp_path / "narrow").fit(show_progress=False)
    rgb = ModelSpec("protonet", "conv4", {}, {"hidden": 16}, (3, 16, 16))
    with pytest.raises(CheckpointError, match=r"had 1 channel.*this dataset's have 3"):
        Trainer(small_config(model=rgb, init=str(tmp_path / "run")), blob_dataset(), None,
                tmp_path / "rgb").fit(show_progress=False)
    common = ["train", "--dataset", "glyphs", "--episodes", "2", "--out", str(tmp_path / "cli")]
    assert main([*common, "--init", str(tmp_path / "missing")]) == 2
    assert "checkpoint" in capsys.readouterr().err and not (tmp_path / "cli").exists()


def test_validation_is_inductive_and_the_checkpoint_keeps_its_transductive_steps(tmp_path, monkeypatch):
    import fewshot.training.trainer as trainer_module

    seen = []
    real_evaluate = trainer_module.evaluate

    def spy(model, *args, **kwargs):
        seen.append((model.transductive_steps, model.transductive_balance))
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "evaluate", spy)
    config = small_config(model=ModelSpec("protonet", "conv4", {}, {"hidden": 16}, (1, 16, 16),
                                          transductive_steps=3, transductive_temperature=0.5,
                                          transductive_balance=4))
    trainer = Trainer(config, blob_dataset(), blob_dataset(seed=1), tmp_path / "run")
    trainer.fit(show_progress=False)
    assert seen[:3] == [(0, 0)] * 3  # the three checks chose best.pt on inductive, unbalanced accuracy
    assert (trainer.model.transductive_steps, trainer.model.transductive_balance) == (3, 4)
    saved = load_model(tmp_path / "run")[0]
    assert (saved.transductive_steps, saved.transductive_balance) == (3, 4)


def test_keep_freed_memory_lets_a_loop_reuse_its_pages_instead_of_faulting_in_new_ones():
    # 40 MB tensors are above glibc's largest mmap threshold: by default each one gets fresh pages from the kernel,
    # a fault per page when it is first written. With the setting, a loop that frees and reallocates them (as a
    # training step does with its activations) settles on heap pages it already has.
    import subprocess
    import sys

    script = """
import resource, sys, torch
from fewshot.utils import keep_freed_memory
if sys.argv[1] == "keep" and not keep_freed_memory():
    sys.exit(3)
torch.set_num_threads(1)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for step in range(30):
    if step == 20:
        before = faults()
    torch.empty(10 << 20).fill_(1.0)
print(faults() - before)
"""
    faults = {}
    for side in ("keep", "default"):
        result = subprocess.run([sys.executable, "-c", script, side], capture_output=True, text=True)
        if result.returncode == 3:
            pytest.skip("this C library has no mallopt")
        assert result.returncode == 0, result.stderr
        faults[side] = int(result.stdout)
    assert faults["default"] >= 10  # at least one fault per allocation (a huge page each, at best)
    assert faults["keep"] * 10 < faults["default"], faults
