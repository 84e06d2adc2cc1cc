from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fewshot.data import TaskSampler, load_dataset
from fewshot.evaluation.calibration import expected_calibration_error, fit_temperature, query_statistics
from fewshot.evaluation.evaluate import evaluate, fit_model_temperature
from fewshot.methods import ProtoNet
from fewshot.predict import predict
from tests.test_predict import SPEC, folders  # noqa: F401  (pytest fixture)


def test_ece_matches_a_hand_computation():
    confidence = torch.tensor([0.95, 0.95, 0.55, 0.55])
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0])
    # bin (0.9, 1]: confidence 1.9 against 1 right; bin (0.5, 0.6]: 1.1 against 2 right -> (0.9 + 0.9) / 4
    assert expected_calibration_error(confidence, correct, bins=10) == pytest.approx(0.45)
    with pytest.raises(ValueError, match="at least one"):
        expected_calibration_error(torch.tensor([]), torch.tensor([]))


def test_ece_is_small_when_calibrated_and_large_when_overconfident():
    generator = torch.Generator().manual_seed(0)
    confidence = 0.2 + 0.8 * torch.rand(20000, generator=generator)
    honest = (torch.rand(20000, generator=generator) < confidence).double()
    boastful = (torch.rand(20000, generator=generator) < confidence / 2).double()
    assert expected_calibration_error(confidence, honest) < 0.02
    assert expected_calibration_error(confidence, boastful) == pytest.approx(float(confidence.mean() / 2), abs=0.02)


@pytest.mark.parametrize("true_temperature", [0.5, 2.0, 5.0])
def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with(true_temperature):
    generator = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(40, 50, 5, generator=generator)  # 40 episodes of 50 queries over 5 classes
    labels = torch.multinomial((logits / true_temperature).softmax(-1).view(-1, 5), 1, generator=generator)
    fitted = fit_temperature([logits[:20], logits[20:]], [labels.view(40, 50)[:20], labels.view(40, 50)[20:]])
    assert fitted == pytest.approx(true_temperature, rel=0.12)


def test_query_statistics_divide_the_logits_by_the_temperature():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    labels = torch.tensor([[0, 0]])
    confidence, correct, nll = query_statistics(logits, labels, temperature=2.0)
    assert confidence.tolist() == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.exp(-0.5))])
    assert correct.tolist() == [1.0, 0.0]
    assert nll.tolist() == pytest.approx([math.log(1 + math.exp(-1)), math.log(1 + math.exp(0.5))])


def test_fitted_temperature_minimises_evaluation_nll_without_changing_accuracy():
    data = load_dataset("glyphs", split="evaluation", glyph_classes=30)
    model = ProtoNet(torch.nn.Flatten())  # raw-pixel distances: logits in the hundreds, far too sure of itself
    plain = evaluate(model, data, 5, 1, queries=3, episodes=100, seed=4)
    specs = TaskSampler(data, 5, 1, 3, 100, seed=4).specs()
    fit = fit_model_temperature(model, data, specs)
    temperature = fit["temperature"]
    assert fit["before"]["nll"] == pytest.approx(plain.nll) and fit["after"]["nll"] < fit["before"]["nll"]
    assert temperature > 5
    results = {t: evaluate(model, data, 5, 1, queries=3, episodes=100, seed=4, temperature=t)
               for t in (temperature / 2, temperature, temperature * 2)}
    assert {r.accuracy for r in results.values()} == {plain.accuracy}
    assert results[temperature].nll < min(plain.nll, results[temperature / 2].nll, results[temperature * 2].nll)
    assert results[temperature].ece < plain.ece


class _Backwards(ProtoNet):
    """Raw-pixel ProtoNet whose logits are negated: the nearest prototype gets the lowest score."""

    def classify(self, *args: torch.Tensor) -> torch.Tensor:
        return -super().classify(*args)


class _Blind(torch.nn.Module):
    """The same feature for every image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.new_zeros(len(images), 4)


@pytest.mark.parametrize(("model", "message"), [
    (_Backwards(torch.nn.Flatten()), "worse than chance"),
    (ProtoNet(_Blind()), "the same for every class"),
])
def test_a_temperature_fit_that_runs_into_a_bound_says_why(model, message):
    data = load_dataset("glyphs", split="evaluation", glyph_classes=30)
    fit = fit_model_temperature(model, data, TaskSampler(data, 5, 1, 3, 50, seed=4).specs(), current=1.5)
    assert fit["temperature"] == 1.5 and message in fit["failed"]


def test_predict_reports_probabilities_at_the_checkpoint_temperature(folders):  # noqa: F811
    model = ProtoNet(torch.nn.Flatten())
    plain = predict(model, SPEC, folders / "support", [folders / "query"])
    cooled = predict(model, dataclasses.replace(SPEC, temperature=50.0), folders / "support", [folders / "query"])
    assert [p.predicted for p in plain] == [p.predicted for p in cooled]
    assert all(c.probability < p.probability for p, c in zip(plain, cooled, strict=True))
