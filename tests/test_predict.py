from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from fewshot.data import DataError
from fewshot.data.images import CorruptImageError
from fewshot.methods import ProtoNet
from fewshot.predict import predict
from fewshot.training.checkpoint import ModelSpec, save_checkpoint
from tests.helpers import write_png

SPEC = ModelSpec("protonet", "conv4", {}, {"hidden": 8}, (1, 16, 16), invert=True)


def class_image(c: int, rng) -> np.ndarray:
    """Black ink on white: a bar whose position names the class, plus a little noise."""
    image = np.ones((16, 16)) - rng.random((16, 16)) * 0.1
    image[2 + 4 * c : 5 + 4 * c, 2:14] = 0.0
    return image


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    for c, name in enumerate(["alpha", "beta", "gamma"]):
        for i in range(2):
            write_png(tmp_path / "support" / name / f"{i}.png", class_image(c, rng))
        write_png(tmp_path / "query" / f"{name}_q.png", class_image(c, rng))
    return tmp_path


def test_predicts_the_class_of_each_query(folders):
    model = ProtoNet(torch.nn.Flatten())
    results = predict(model, SPEC, folders / "support", [folders / "query"])
    assert [r.predicted for r in results] == ["alpha", "beta", "gamma"]
    assert all(r.probability > r.runner_up_probability for r in results)
    assert [r.file.split("/")[-1] for r in results] == ["alpha_q.png", "beta_q.png", "gamma_q.png"]


def test_prediction_leaves_the_models_mode_as_it_was(folders):
    model = ProtoNet(torch.nn.Flatten()).train()
    predict(model, SPEC, folders / "support", [folders / "query"])
    assert model.training


def test_balanced_transduction_is_used_only_when_the_caller_says_the_queries_are_balanced(folders):
    rng = np.random.default_rng(1)
    for i in range(3):  # three queries of one class: not spread evenly over the three classes
        write_png(folders / "alphas" / f"{i}.png", class_image(0, rng))
    class Scaled(torch.nn.Module):  # features close enough together that the probabilities are not all 1
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return 0.2 * images.flatten(1)

    model = ProtoNet(Scaled())
    model.set_transductive_steps(10, temperature=1.0, balance=10)
    plain = predict(model, SPEC, folders / "support", [folders / "alphas"])
    assert model.transductive_balance == 10  # restored
    model.set_transductive_steps(10, balance=0)
    assert plain == predict(model, SPEC, folders / "support", [folders / "alphas"])
    model.set_transductive_steps(10, balance=10)
    forced = predict(model, SPEC, folders / "support", [folders / "alphas"], balanced_queries=True)
    # The wrong prior pulls the other classes' prototypes toward the alphas: every alpha becomes less sure.
    assert all(f.probability < p.probability - 0.1 for f, p in zip(forced, plain, strict=True))
    assert [r.predicted for r in predict(model, SPEC, folders / "support", [folders / "query"],
                                         balanced_queries=True)] == ["alpha", "beta", "gamma"]


def test_eval_mode_is_restored_after_an_error():
    from fewshot.utils import eval_mode

    model = torch.nn.BatchNorm1d(3).train()
    with pytest.raises(RuntimeError), eval_mode(model):
        assert not model.training
        raise RuntimeError("failed inside")
    assert model.training


def test_empty_class_folder_is_named(folders):
    (folders / "support" / "delta").mkdir()
    with pytest.raises(DataError, match="delta"):
        predict(ProtoNet(torch.nn.Flatten()), SPEC, folders / "support", [folders / "query"])


def test_corrupt_query_image_is_named(folders):
    (folders / "query" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(CorruptImageError, match=r"broken\.png"):
        predict(ProtoNet(torch.nn.Flatten()), SPEC, folders / "support", [folders / "query"])
    with pytest.warns(UserWarning, match=r"broken\.png"):
        kept = predict(ProtoNet(torch.nn.Flatten()), SPEC, folders / "support", [folders / "query"],
                       skip_corrupt=True)
    assert len(kept) == 3


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fewshot", *args], capture_output=True, text=True)


def test_cli_predict_table_json_and_errors(folders):
    torch.manual_seed(0)
    model = SPEC.build()
    save_checkpoint(folders / "model.pt", model, SPEC)
    ok = run_cli("predict", "--checkpoint", str(folders / "model.pt"), "--support", str(folders / "support"),
                 "--query", str(folders / "query"), "--json")
    assert ok.returncode == 0, ok.stderr
    rows = json.loads(ok.stdout)
    assert len(rows) == 3 and {"file", "predicted", "probability", "runner_up"} <= set(rows[0])
    table = run_cli("predict", "--checkpoint", str(folders / "model.pt"), "--support", str(folders / "support"),
                    "--query", str(folders / "query" / "beta_q.png"))
    assert table.returncode == 0 and "beta_q.png" in table.stdout and "runner-up" in table.stdout
    balanced = replace(SPEC, transductive_steps=2, transductive_balance=3)
    save_checkpoint(folders / "balanced.pt", balanced.build(), balanced)
    noted = run_cli("predict", "--checkpoint", str(folders / "balanced.pt"), "--support", str(folders / "support"),
                    "--query", str(folders / "query"), "--json")
    assert noted.returncode == 0 and len(json.loads(noted.stdout)) == 3
    assert "not assumed here (--balanced-queries if they are)" in noted.stderr
    (folders / "support" / "empty").mkdir()
    bad = run_cli("predict", "--checkpoint", str(folders / "model.pt"), "--support", str(folders / "support"),
                  "--query", str(folders / "query"))
    assert bad.returncode == 2 and "empty" in bad.stderr and "Traceback" not in bad.stderr


def test_evaluate_and_calibrate_read_an_image_folder_as_predict_does(folders):
    """Size, channels and ink polarity come from the checkpoint, so evaluate scores the images predict would see."""
    import argparse

    from fewshot.commands import _evaluation_dataset

    spec = ModelSpec("protonet", "conv4", {}, {"hidden": 8}, (1, 12, 16), invert=True)
    args = argparse.Namespace(dataset="folder", root=str(folders / "support"), split=None, seed=0, alphabets=None)
    dataset = _evaluation_dataset(args, spec)
    images = torch.stack([dataset.load(i) for i in range(len(dataset))])
    assert images.shape == (6, 1, 12, 16)
    assert images.mean() < 0.3  # black ink on white paper, inverted: mostly 0, ink 1
    missing = argparse.Namespace(**{**vars(args), "root": None})
    with pytest.raises(DataError, match="--root"):
        _evaluation_dataset(missing, spec)
