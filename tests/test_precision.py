"""Every method computes in the dtype it is given: float64 models give float64 losses and gradients."""

from __future__ import annotations

import pytest
import torch

from fewshot.commands import build_train_config
from fewshot.data import TaskSampler, build_task
from fewshot.methods import METHODS
from fewshot.training.checkpoint import ModelSpec
from tests.helpers import blob_dataset, glyph_settings


@pytest.mark.parametrize("method", sorted(METHODS))
def test_float64_model_stays_float64(method):
    torch.manual_seed(0)
    model = ModelSpec(method=method, backbone="conv4", image_shape=(1, 28, 28)).build().double().train()
    dataset = blob_dataset(num_classes=5, per_class=4, size=28)
    task = build_task(dataset, TaskSampler(dataset, 5, 1, 2, 1, seed=0).spec(0)).to("cpu", torch.float64)
    loss, logits = model.loss(task)
    assert loss.dtype == logits.dtype == torch.float64
    assert torch.isfinite(loss)
    parameters = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    assert all(g is None or g.dtype == torch.float64 for g in grads)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(("method", "options", "expected"), [
    ("protonet", "", "bf16"),
    ("maml", "inner_steps=1", "bf16"),
    ("maml", "inner_steps=5", "fp32"),  # several second-order steps: bf16's meta-gradient is noise
    ("metasgd", "inner_steps=3", "fp32"),
    ("maml", "inner_steps=5,first_order=True", "bf16"),
    ("anil", "inner_steps=5", "bf16"),
])
def test_auto_precision_keeps_second_order_inner_loops_in_fp32(monkeypatch, method, options, expected):
    monkeypatch.setattr("fewshot.utils.default_precision", lambda device: "bf16")  # as on a CPU with AVX512-BF16
    settings = glyph_settings(method=method, method_options=options, ways=5, val_ways=5, precision="auto")
    data = blob_dataset(size=28)
    assert build_train_config(settings, data).precision == expected
    explicit = build_train_config({**settings, "precision": "bf16"}, data)
    assert explicit.precision == "bf16"  # an explicit choice is kept
