"""MAML, Meta-SGD, ANIL and Proto-MAML: exact meta-gradients, the inner-loop variants, and learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fewshot.backbones import Conv4
from fewshot.data import Task
from fewshot.methods import ProtoNet, make_method
from fewshot.methods.anil import ANIL
from fewshot.methods.base import class_means
from fewshot.methods.inner_loop import TaskBatchNorm, configure_batch_norm, inner_loop, normalize_with_row_statistics
from fewshot.methods.maml import MAML
from fewshot.methods.metasgd import MetaSGD
from fewshot.methods.protomaml import ProtoMAML

DOUBLE = torch.float64


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread for these tests: the inner loop's many small operations gain nothing from a second one,
    and lose up to 20x when another process holds the other core (a busy CI machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def vector_task(ways: int = 3, shots: int = 2, queries: int = 2, dim: int = 4, seed: int = 0) -> Task:
    """A task of random ``dim``-vectors in float64."""
    g = torch.Generator().manual_seed(seed)
    return Task(
        torch.randn(ways * shots, dim, generator=g, dtype=DOUBLE), torch.arange(ways).repeat(shots),
        torch.randn(ways * queries, dim, generator=g, dtype=DOUBLE), torch.arange(ways).repeat(queries),
    )


def image_task(ways: int = 3, shots: int = 1, queries: int = 2, seed: int = 0, dtype=DOUBLE) -> Task:
    """A task of random 28x28 one-channel images."""
    g = torch.Generator().manual_seed(seed)
    return Task(
        torch.rand(ways * shots, 1, 28, 28, generator=g, dtype=dtype), torch.arange(ways).repeat_interleave(shots),
        torch.rand(ways * queries, 1, 28, 28, generator=g, dtype=dtype), torch.arange(ways).repeat_interleave(queries),
    )


def smooth_body() -> nn.Module:
    """A tiny twice-differentiable backbone (no ReLU kinks), with batch norm: ``[B, 4] -> [B, 6]``."""
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh())


def small_conv() -> Conv4:
    return Conv4(hidden=8)


def meta_gradient(model: nn.Module, task: Task) -> list[torch.Tensor]:
    loss, _ = model.loss(task)
    return list(torch.autograd.grad(loss, list(model.parameters())))


FD_MODELS = {
    "maml-1-step": lambda: MAML(smooth_body(), inner_steps=1, inner_lr=0.5, ways=3),
    "maml-2-steps": lambda: MAML(smooth_body(), inner_steps=2, inner_lr=0.5, ways=3),
    "metasgd": lambda: MetaSGD(smooth_body(), inner_steps=1, inner_lr=0.5, ways=3),
    "maml-shared-head": lambda: MAML(smooth_body(), inner_steps=2, inner_lr=0.5, shared_head=True),
    "metasgd-shared-head": lambda: MetaSGD(smooth_body(), inner_steps=2, inner_lr=0.5, shared_head=True),
    "protomaml-body": lambda: ProtoMAML(smooth_body(), inner_steps=1, inner_lr=0.1, adapt_body=True),
}


@pytest.mark.parametrize("variant", list(FD_MODELS))
def test_second_order_meta_gradient_equals_finite_differences(variant):
    """Every partial derivative of the query loss after the inner loop, against central differences in float64."""
    torch.manual_seed(0)
    model = FD_MODELS[variant]().to(DOUBLE)
    task = vector_task()
    analytic = torch.cat([g.flatten() for g in meta_gradient(model, task)])
    numeric, eps = [], 1e-6
    with torch.no_grad():
        for parameter in model.parameters():
            flat = parameter.view(-1)
            for i in range(flat.numel()):
                original = flat[i].item()
                losses = []
                for value in (original + eps, original - eps):
                    flat[i] = value
                    with torch.enable_grad():
                        losses.append(model.loss(task)[0].item())
                flat[i] = original
                numeric.append((losses[0] - losses[1]) / (2 * eps))
    numeric = torch.tensor(numeric, dtype=DOUBLE)
    assert analytic.abs().max() > 1e-3  # a gradient worth comparing
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_first_order_differs_by_exactly_the_hessian_vector_term():
    """With ``θ' = θ - α∇L_s(θ)``: second-order ``(I - αH_s(θ)) ∇L_q(θ')``, first-order ``∇L_q(θ')``."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(DOUBLE)
    task, alpha = vector_task(), 0.3
    names = [name for name, _ in net.named_parameters()]
    theta = [p for _, p in net.named_parameters()]

    def support_loss(*weights: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, dict(zip(names, weights, strict=True)), (task.support_images,)),
                               task.support_labels)

    def gradients(first_order: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        initial = dict(zip(names, theta, strict=True))
        adapted = inner_loop(net, initial, task.support_images, task.support_labels, steps=1, lr=alpha,
                             first_order=first_order)
        query = F.cross_entropy(functional_call(net, adapted, (task.query_images,)), task.query_labels)
        fast = list(adapted.values())
        by_theta = torch.autograd.grad(query, theta, retain_graph=True)
        by_fast = torch.autograd.grad(query, fast)
        return list(by_theta), list(by_fast)

    second, _ = gradients(first_order=False)
    first, query_gradient = gradients(first_order=True)
    _, hessian_vector = torch.autograd.functional.hvp(support_loss, tuple(theta), tuple(query_gradient))
    for f, s, hv in zip(first, second, hessian_vector, strict=True):
        assert hv.abs().max() > 1e-4  # the term is not negligible here
        torch.testing.assert_close(f, s + alpha * hv, rtol=1e-10, atol=1e-12)
    assert max((f - s).abs().max() for f, s in zip(first, second, strict=True)) > 1e-4


def test_inner_steps_use_partial_derivatives_of_weights_that_depend_on_each_other():
    """A weight computed from another (Proto-MAML's head from the backbone) must not add that path to the step."""
    torch.manual_seed(0)
    net = nn.Linear(4, 3).to(DOUBLE)
    weight = net.weight.detach().clone().requires_grad_()
    task = vector_task()
    dependent = {"weight": weight, "bias": 0.5 * weight.sum(1)}
    independent = {k: v.detach().clone().requires_grad_() for k, v in dependent.items()}
    for functional in (False, True):
        got = inner_loop(net, dependent, task.support_images, task.support_labels, steps=2, lr=0.3,
                         functional=functional)
        expected = inner_loop(net, independent, task.support_images, task.support_labels, steps=2, lr=0.3)
        for name in got:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-12, atol=1e-14)


def test_meta_sgd_learning_rates_are_parameters_and_receive_gradients():
    torch.manual_seed(0)
    for first_order in (False, True):
        model = MetaSGD(smooth_body(), inner_lr=0.1, ways=3, first_order=first_order).to(DOUBLE)
        names = {name for name, _ in model.named_parameters()}
        assert len(model.inner_lrs) == 6  # Linear, BN and head: weight and bias each
        for name, parameter in model.named_parameters():
            if not name.startswith("inner_lrs."):
                rates = model.inner_lrs[name.replace(".", "-")]
                assert rates.shape == parameter.shape
                torch.testing.assert_close(rates, torch.full_like(parameter, 0.1))
        assert {f"inner_lrs.{k}" for k in model.inner_lrs} <= names
        loss, _ = model.loss(vector_task())
        loss.backward()
        for key, rates in model.inner_lrs.items():
            assert rates.grad is not None and rates.grad.abs().sum() > 0, (key, first_order)


def test_meta_sgd_with_equal_rates_is_maml():
    torch.manual_seed(0)
    maml = MAML(smooth_body(), inner_steps=2, inner_lr=0.3, ways=3).to(DOUBLE)
    meta_sgd = MetaSGD(smooth_body(), inner_steps=2, inner_lr=0.3, ways=3).to(DOUBLE)
    meta_sgd.load_state_dict(maml.state_dict(), strict=False)
    task = vector_task()
    torch.testing.assert_close(maml.loss(task)[0], meta_sgd.loss(task)[0])


def test_anil_adapts_only_the_head(monkeypatch):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
    model = ANIL(body, test_inner_steps=3, test_inner_lr=0.2, ways=3).to(DOUBLE).eval()
    task = vector_task()
    adapted_names = []
    import fewshot.methods.maml as maml_module

    def spy(module, weights, *args, **kwargs):
        adapted_names.extend(weights)
        return inner_loop(module, weights, *args, **kwargs)

    monkeypatch.setattr(maml_module, "inner_loop", spy)
    with torch.no_grad():
        logits = model(task.support_images, task.support_labels, task.query_images)
    assert adapted_names and all(name.startswith("head.") for name in adapted_names)
    # The same logits by hand: fixed features, three gradient steps on the head alone.
    support, query = body(task.support_images).detach(), body(task.query_images).detach()
    weight = model.head.weight.detach().clone().requires_grad_()
    bias = model.head.bias.detach().clone().requires_grad_()
    for _ in range(3):
        loss = F.cross_entropy(support @ weight.T + bias, task.support_labels)
        grad_weight, grad_bias = torch.autograd.grad(loss, (weight, bias))
        weight = (weight - 0.2 * grad_weight).detach().requires_grad_()
        bias = (bias - 0.2 * grad_bias).detach().requires_grad_()
    torch.testing.assert_close(logits, (query @ weight.T + bias).detach())
    # The body is meta-learned nonetheless: the outer gradient reaches it through the features.
    model.train()
    model.loss(task)[0].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in body.parameters())


@pytest.mark.parametrize("affine", [True, False])
def test_support_statistics_batch_norm_matches_its_plain_version_to_the_second_order(affine):
    """The native-kernel path of ``statistics_rows`` gives the plain operations' output and gradients, and its
    backward is differentiable again (a second-order MAML step through the query path)."""
    torch.manual_seed(0)
    layer = TaskBatchNorm(3, affine=affine).to(DOUBLE)
    if affine:
        with torch.no_grad():
            layer.weight.uniform_(0.5, 1.5), layer.bias.normal_()
    x = torch.randn(7, 3, 4, 5, dtype=DOUBLE, requires_grad=True)
    inputs = (x, *layer.parameters())

    def native(x: torch.Tensor, *_) -> torch.Tensor:
        with configure_batch_norm(layer, statistics_rows=3):
            return layer(x)

    def plain(x: torch.Tensor, *_) -> torch.Tensor:
        return normalize_with_row_statistics(x, layer.weight, layer.bias, 3, layer.eps)

    torch.testing.assert_close(native(x), plain(x))
    upstream = torch.randn(7, 3, 4, 5, dtype=DOUBLE)
    first = torch.autograd.grad(native(x), inputs, upstream)
    torch.testing.assert_close(first, torch.autograd.grad(plain(x), inputs, upstream))
    assert torch.autograd.gradgradcheck(native, inputs)
    # the rows beyond the statistics get only the direct part, scale * upstream; the rows of the statistics more
    scale = torch.rsqrt(x[:3].var((0, 2, 3), correction=0) + layer.eps)
    if affine:
        scale = scale * layer.weight
    direct = upstream * scale.view(1, 3, 1, 1)
    torch.testing.assert_close(first[0][3:], direct[3:])
    assert not torch.allclose(first[0][:3], direct[:3])


def test_support_statistics_batch_norm_under_bf16_autocast_follows_the_plain_version():
    torch.manual_seed(0)
    layer = TaskBatchNorm(8)
    x = torch.randn(12, 8, 6, 6).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with configure_batch_norm(layer, statistics_rows=4):
            native = layer(x)
        plain = normalize_with_row_statistics(x, layer.weight, layer.bias, 4, layer.eps)
    assert native.dtype == plain.dtype == torch.bfloat16
    upstream = torch.randn(12, 8, 6, 6).bfloat16()
    native_grads = torch.autograd.grad(native, (x, layer.weight), upstream)
    plain_grads = torch.autograd.grad(plain, (x, layer.weight), upstream)
    torch.testing.assert_close(native.float(), plain.float(), rtol=0.02, atol=0.02)
    for a, b in zip(native_grads, plain_grads, strict=True):
        assert (a.float() - b.float()).norm() < 0.02 * b.float().norm()


def test_protomaml_starts_from_protonet_logits():
    torch.manual_seed(0)
    model = ProtoMAML(small_conv(), test_inner_steps=0).to(DOUBLE).eval()
    task = image_task(ways=4, shots=2, queries=3)
    with torch.no_grad():
        logits = model(task.support_images, task.support_labels, task.query_images)
        n = task.support_images.shape[0]
        with configure_batch_norm(model.backbone, statistics_rows=n):
            features = model.backbone(torch.cat([task.support_images, task.query_images]))
        prototypes = class_means(features[:n], task.support_labels)
        reference = -(features[n:, None] - prototypes[None]).pow(2).sum(-1)  # ProtoNet's logits, in float64
    offset = logits - reference  # ||q||² for each query, the same for every class
    torch.testing.assert_close(offset, offset[:, :1].expand_as(offset), rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(offset[:, 0], features[n:].pow(2).sum(1), rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(logits.softmax(1), reference.softmax(1))
    protonet = ProtoNet(nn.Identity()).classify(features[:n], task.support_labels, features[n:])  # in fp32
    torch.testing.assert_close(protonet.double(), reference, rtol=1e-5, atol=1e-4)
    assert all(key.startswith("backbone.") for key in model.state_dict())  # no head parameters


def test_protomaml_adapts_its_head_and_optionally_the_body(monkeypatch):
    import fewshot.methods.maml as maml_module

    seen: list[set[str]] = []

    def spy(module, weights, *args, **kwargs):
        seen.append({name.split(".")[0] for name in weights})
        return inner_loop(module, weights, *args, **kwargs)

    monkeypatch.setattr(maml_module, "inner_loop", spy)
    task = image_task(ways=5, shots=1, queries=2)  # any number of ways: the head is built per task
    for adapt_body, expected in ((False, {"head"}), (True, {"head", "backbone"})):
        model = ProtoMAML(small_conv(), adapt_body=adapt_body, inner_steps=2).to(DOUBLE)
        loss, logits = model.loss(task)
        loss.backward()
        assert seen[-1] == expected and logits.shape == (10, 5)
        assert all(p.grad is not None for p in model.parameters())


METHOD_VARIANTS = {
    "maml": lambda: MAML(small_conv(), inner_steps=2, ways=3),
    "maml-first-order": lambda: MAML(small_conv(), inner_steps=2, ways=3, first_order=True),
    "maml-query-statistics": lambda: MAML(small_conv(), inner_steps=2, ways=3, query_statistics="query"),
    "metasgd": lambda: MetaSGD(small_conv(), inner_steps=2, ways=3),
    "anil": lambda: ANIL(small_conv(), inner_steps=2, ways=3),
    "protomaml-body": lambda: ProtoMAML(small_conv(), inner_steps=2, adapt_body=True),
}


def assert_same_results(first: tuple, second: tuple, rtol: tuple[float, float, float]) -> None:
    """Two ``(loss, logits per task, gradients)`` of ``batch_loss`` agree, within ``rtol`` for each part."""
    (loss_a, logits_a, grads_a), (loss_b, logits_b, grads_b) = first, second
    torch.testing.assert_close(loss_a, loss_b, rtol=rtol[0], atol=0)
    for a, b in zip(logits_a, logits_b, strict=True):
        torch.testing.assert_close(a, b, rtol=rtol[1], atol=1e-10)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=rtol[2], atol=1e-10)


@pytest.mark.parametrize("variant", list(METHOD_VARIANTS))
def test_vmap_path_equals_loop_path(variant):
    torch.manual_seed(0)
    model = METHOD_VARIANTS[variant]().to(DOUBLE)
    tasks = [image_task(seed=s) for s in range(3)]
    results = []
    for vectorize in (True, False):
        model.vectorize = vectorize
        loss, logits = model.batch_loss(tasks)
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        results.append((loss, logits, grads))
    assert_same_results(*results, rtol=(1e-10, 1e-8, 1e-7))


def test_loop_path_takes_each_tasks_gradient_at_once():
    """The loop path returns a loss whose gradient, taken task by task, is the mean of the tasks' meta-gradients;
    it survives the trainer's zero_grad between batch_loss and backward."""
    torch.manual_seed(0)
    model = MAML(small_conv(), inner_steps=2, ways=3, vectorize=False).to(DOUBLE)
    tasks = [image_task(seed=s) for s in range(3)]
    expected = [sum(g) / 3 for g in zip(*(meta_gradient(model, task) for task in tasks), strict=True)]
    loss, logits = model.batch_loss(tasks)
    assert not any(t.requires_grad for t in logits)  # no task graph is kept alive
    model.zero_grad(set_to_none=True)
    loss.backward()
    torch.testing.assert_close(loss, torch.stack([model.loss(t)[0] for t in tasks]).mean().detach())
    for parameter, grad in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(parameter.grad, grad, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # no gradients wanted: the plain mean
        plain, _ = model.batch_loss(tasks)
    torch.testing.assert_close(plain, loss.detach())


@pytest.mark.parametrize("variant", list(METHOD_VARIANTS))
def test_meta_batch_split_over_threads_equals_the_loop(variant):
    """Tasks on three threads, each through its own replica: the same loss, logits in task order and meta-gradient
    as one thread's loop; the caller's intra-op thread count is left as it was."""
    torch.manual_seed(0)
    model = METHOD_VARIANTS[variant]().to(DOUBLE)
    model.vectorize = False
    tasks = [image_task(seed=s, queries=1 + s % 2) for s in range(5)]
    results = []
    for workers in (1, 3):
        model.workers = workers
        loss, logits = model.batch_loss(tasks)
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
        results.append((loss, logits, grads))
    assert torch.get_num_threads() == 1
    # unequal query counts: logits in the wrong order would not even match in shape
    assert_same_results(*results, rtol=(1e-12, 1e-10, 1e-9))


def test_threads_keep_the_callers_autocast():
    torch.manual_seed(0)
    model = MAML(small_conv(), inner_steps=1, ways=3, vectorize=False)
    tasks = [image_task(seed=s, dtype=torch.float32) for s in range(2)]
    dtypes = []
    for workers in (1, 2):
        model.workers = workers
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, logits = model.batch_loss(tasks)
        dtypes.append({t.dtype for t in logits})
    assert dtypes[0] == dtypes[1] == {torch.bfloat16}


def test_workers_must_be_positive():
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        MAML(small_conv(), workers=0)


def test_vmap_path_uses_one_vmap_for_the_meta_batch(monkeypatch):
    calls = []
    original = torch.func.vmap

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.func, "vmap", counting)
    model = MAML(small_conv(), inner_steps=1, ways=3, vectorize=True)
    model.batch_loss([image_task(seed=s, dtype=torch.float32) for s in range(2)])
    assert len(calls) == 1
    model.batch_loss([image_task(seed=0, dtype=torch.float32), image_task(queries=3, dtype=torch.float32)])
    assert len(calls) == 1  # unequal shapes: the loop


@pytest.mark.parametrize("cls", [MAML, MetaSGD])
def test_gradient_checkpointing_gives_the_same_gradients(cls):
    torch.manual_seed(0)
    plain = cls(small_conv(), inner_steps=3, ways=3).to(DOUBLE)
    checkpointed = cls(small_conv(), inner_steps=3, ways=3, checkpoint_steps=True).to(DOUBLE)
    checkpointed.load_state_dict(plain.state_dict())
    tasks = [image_task(seed=s) for s in range(2)]
    results = []
    for model in (plain, checkpointed):
        loss, _ = model.batch_loss(tasks)
        results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=0)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradient_checkpointing_keeps_less_for_the_backward_pass():
    """Bytes the autograd graph holds once the loss is computed: checkpointing keeps far less for many steps."""
    def saved_bytes(checkpoint_steps: bool) -> int:
        torch.manual_seed(0)
        model = MAML(small_conv(), inner_steps=6, ways=3, checkpoint_steps=checkpoint_steps)
        total = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.loss(image_task(dtype=torch.float32))
        return total

    assert saved_bytes(True) < 0.5 * saved_bytes(False)


def test_a_task_with_more_ways_than_the_head_is_refused():
    model = MAML(small_conv(), ways=3)
    task = image_task(ways=5, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"5 classes but the head has only 3 outputs.*ways=5"):
        model.loss(task)
    with torch.no_grad(), pytest.raises(ValueError, match="ways=5"):
        model(task.support_images, task.support_labels, task.query_images)
    small = model(task.support_images[:3], task.support_labels[:3], task.query_images[:4])  # 3-way: fine
    assert small.shape == (4, 3)


def test_evaluation_adapts_in_eval_mode_under_no_grad_one_query_at_a_time():
    """Evaluation calls the model in eval mode under no_grad; queries are normalised with the support statistics,
    so one query alone gets the logits it gets among all the others."""
    torch.manual_seed(0)
    model = MAML(small_conv(), ways=3, test_inner_steps=2).eval()
    task = image_task(queries=3, dtype=torch.float32)
    with torch.no_grad():
        logits = model(task.support_images, task.support_labels, task.query_images)
        alone = torch.cat([model(task.support_images, task.support_labels, q[None]) for q in task.query_images])
    assert not logits.requires_grad and logits.shape == (9, 3)
    torch.testing.assert_close(alone, logits, rtol=1e-4, atol=1e-5)
    untrained = MAML(small_conv(), ways=3, test_inner_steps=0).eval()
    untrained.load_state_dict(model.state_dict())
    with torch.no_grad():
        before = untrained(task.support_images, task.support_labels, task.query_images)
    assert not torch.allclose(before, logits)  # the test-time steps changed something
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, TaskBatchNorm) for m in model.modules()) == 4


@pytest.mark.parametrize("name", ["maml", "metasgd", "anil", "protomaml"])
def test_checkpoint_rebuilds_and_loads(name):
    from fewshot.training.checkpoint import ModelSpec

    spec = ModelSpec(name, "conv4", {"inner_steps": 1, "test_inner_steps": 1}, {"hidden": 8}, (1, 28, 28))
    torch.manual_seed(0)
    model = spec.build()
    torch.manual_seed(1)
    rebuilt = spec.build()
    rebuilt.load_state_dict(model.state_dict())  # strict: every parameter exists after __init__
    task = image_task(ways=5, dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(task.support_images, task.support_labels, task.query_images),
                                   rebuilt.eval()(task.support_images, task.support_labels, task.query_images))


def test_options_are_checked():
    with pytest.raises(ValueError, match="query_statistics"):
        MAML(small_conv(), query_statistics="running")
    with pytest.raises(ValueError, match="inner_lr"):
        MAML(small_conv(), inner_lr=0)
    with pytest.raises(ValueError, match="bad options"):
        make_method("maml", small_conv(), inner_step=3)
    model = MAML(small_conv(), image_size=32)  # 32x32 images: 8 * 2 * 2 features
    assert model.head.in_features == 32
    with pytest.raises(ValueError, match="image_size"):
        model.loss(image_task(dtype=torch.float32))


@pytest.mark.slow
def test_maml_learns_unseen_glyph_classes_well_above_chance(tmp_path):
    from fewshot.commands import start_training
    from fewshot.data import load_dataset
    from fewshot.evaluation.evaluate import evaluate
    from fewshot.training.checkpoint import load_model
    from tests.helpers import glyph_settings

    settings = glyph_settings(method="maml", ways=5, shots=1, queries=5, meta_batch=4, episodes=40, val_every=40,
                              val_ways=5, lr=3e-3, backbone_options="hidden=32")  # second-order, default options
    start_training(settings, tmp_path / "run", quiet=True)
    model, _ = load_model(tmp_path / "run")
    unseen = load_dataset("glyphs", split="evaluation", glyph_classes=60)
    result = evaluate(model, unseen, 5, 1, queries=5, episodes=100, seed=1)
    assert result.accuracy > 0.5, result.summary()  # chance is 0.2


@pytest.mark.parametrize("cls", [MAML, MetaSGD, ANIL])
def test_a_shared_head_adapts_to_any_number_of_classes_whatever_their_order(cls):
    """One head row for every class: a model built for 5 ways takes a 20-way task, and relabelling the classes
    permutes the logits' columns and nothing else (the start is the same for every class)."""
    torch.manual_seed(0)
    model = cls(smooth_body(), inner_steps=2, inner_lr=0.5, test_inner_steps=2, ways=5, shared_head=True).to(DOUBLE)
    assert model.head.weight.shape == (1, 6)
    task = vector_task(ways=20, shots=1, queries=1)
    model.eval()
    logits = model(task.support_images, task.support_labels, task.query_images)
    assert logits.shape == (20, 20)
    permutation = torch.randperm(20)
    relabelled = model(task.support_images, permutation[task.support_labels], task.query_images)
    torch.testing.assert_close(relabelled[:, permutation], logits)
    with pytest.raises(ValueError, match="head has only 5 outputs"):
        cls(smooth_body(), ways=5).to(DOUBLE)(task.support_images, task.support_labels, task.query_images)


@pytest.mark.parametrize("cls", [MAML, ProtoMAML])
def test_evaluation_adapts_tasks_on_threads_with_the_loops_logits(cls, monkeypatch):
    """On two intra-op threads evaluation adapts tasks on two threads, through replicas, in no-grad mode: the same
    logits, in episode order, as one task after another, and no gradient is kept."""
    from fewshot.data import TaskSampler
    from fewshot.evaluation import evaluate as evaluation
    from fewshot.evaluation.evaluate import episode_logits
    from tests.helpers import blob_dataset

    calls = []
    original = evaluation.map_on_replicas
    monkeypatch.setattr(evaluation, "map_on_replicas", lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    torch.manual_seed(0)
    data = blob_dataset(num_classes=6, per_class=5, size=28)
    model = cls(small_conv(), inner_steps=1, test_inner_steps=2, ways=3)
    specs = TaskSampler(data, 3, 1, 2, 11, seed=0).specs()
    torch.set_num_threads(2)
    threaded = list(episode_logits(model, data, specs))
    assert calls == [2]  # one block of the 11 tasks, on two threads
    model.thread_safe_replicas = False
    serial = list(episode_logits(model, data, specs))
    assert len(calls) == 1
    assert len(threaded) == len(serial) == 11
    for a, b in zip(threaded, serial, strict=True):
        assert not a.requires_grad
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.get_num_threads() == 2
