"""The inner loop of optimisation-based meta-learning, written once for MAML, Meta-SGD, ANIL and Proto-MAML.

:func:`inner_loop` adapts a dict of *fast weights* by gradient descent on a support set. The network is called with
:func:`torch.func.functional_call` on those weights, so nothing is cloned or patched: the module keeps its own
parameters, and the fast weights are ordinary tensors computed from them, through which the outer (meta-)gradient
flows. Gradients are taken with :func:`torch.autograd.grad` (``create_graph=True`` for the second-order
meta-gradient) or, inside :func:`torch.func.vmap` over a meta-batch, with :func:`torch.func.grad`.

Batch normalisation: :class:`TaskBatchNorm` replaces a backbone's BatchNorm layers (:func:`use_task_batch_norm`). It
always normalises with the statistics of the current task and never keeps running statistics, because running
averages over many training tasks match no single task (and would be updated in place, which ``vmap`` cannot do
for a shared buffer); it also behaves the same in train and eval mode, so evaluation, which puts the model in eval
mode, adapts exactly as training does. It is written with plain tensor operations rather than
``F.batch_norm``: in torch 2.13 the ``vmap`` batching rule of the native batch-norm backward gives wrong
second-order gradients when the affine weight is batched (pytorch/functorch#534), which the composite version
avoids. Outside ``vmap`` the native kernel is used (it is faster, and correct there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint as checkpoint_fn

from fewshot.utils import full_precision

#: A scalar inner learning rate, or one tensor per adapted weight (Meta-SGD), keyed like the weights.
LearningRate = float | Mapping[str, torch.Tensor]


def inner_loop(
    module: nn.Module,
    weights: Mapping[str, torch.Tensor],
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    lr: LearningRate,
    first_order: bool = False,
    checkpoint: bool = False,
    functional: bool = False,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> dict[str, torch.Tensor]:
    """Fast weights after ``steps`` gradient steps on ``loss_fn(module(inputs), labels)``.

    Args:
        module: called as ``functional_call(module, weights, (inputs,))``; its parameters that are not in
            ``weights`` (and its buffers) are used as they are, so gradients reach them only through the query loss.
        weights: name (as in ``module.named_parameters()``) -> initial fast weight. Outside ``functional`` mode each
            must require grad (be computed from parameters, or be a leaf with ``requires_grad``).
        inputs: support inputs ``[S, ...]``; labels: ``[S]``.
        steps: number of gradient steps (0 returns ``weights``).
        lr: scalar step size, or a tensor per weight of the weight's shape (Meta-SGD's learned rates).
        first_order: drop the second-order term: the inner gradients are treated as constants, so the
            meta-gradient is that of the query loss at the adapted weights (FOMAML).
        checkpoint: recompute each step's forward and backward during the outer backward
            (:func:`torch.utils.checkpoint.checkpoint`) instead of storing them: memory no longer grows with the
            activations of every step, for about one more forward-backward per step.
        functional: take gradients with :func:`torch.func.grad`, as needed inside :func:`torch.func.vmap`.
        loss_fn: ``(logits, labels) -> scalar``.

    Returns:
        The adapted weights, with the same keys; differentiable with respect to the initial ones (and ``lr``).
    """
    if checkpoint and functional:
        raise ValueError("gradient checkpointing does not work inside torch.func transforms; use the loop path")
    names = tuple(weights)
    rates = tuple(lr[name] if isinstance(lr, Mapping) else lr for name in names)

    def support_loss(fast: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(functional_call(module, fast, (inputs,)), labels)

    def step(*fast: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if functional:
            by_name = torch.func.grad(support_loss)(dict(zip(names, fast, strict=True)))
            grads = tuple(by_name[name] for name in names)
        else:
            # Fresh aliases, so the gradient is the partial one of each weight's use in the network: an initial
            # weight may also depend on another (Proto-MAML's head on the backbone), a path the step must ignore.
            fast = tuple(w.view_as(w) for w in fast)
            loss = support_loss(dict(zip(names, fast, strict=True)))
            grads = torch.autograd.grad(loss, fast, create_graph=not first_order, allow_unused=True,
                                        materialize_grads=True)
        if first_order:
            grads = tuple(g.detach() for g in grads)
        return tuple(w - r * g for w, r, g in zip(fast, rates, grads, strict=True))

    fast = tuple(weights.values())
    for _ in range(steps):
        fast = checkpoint_fn(step, *fast, use_reentrant=False) if checkpoint else step(*fast)
    return dict(zip(names, fast, strict=True))


class TaskBatchNorm(nn.Module):
    """Batch normalisation with the current batch's statistics only; no running statistics, same in train and eval.

    Normalises over every dimension but the channel dimension 1 (``[B, C]``, ``[B, C, L]``, ``[B, C, H, W]`` ...).
    With :attr:`statistics_rows` set to ``n`` (see :func:`configure_batch_norm`) the mean and variance come from the
    first ``n`` items of the batch and are applied to all of them: queries are then normalised with the statistics
    of the support set, like the support set was during adaptation. That case goes through the native kernels too
    (:class:`_RowStatisticsNorm`); with :attr:`composite` (set inside ``vmap``) plain tensor operations are used
    (:func:`normalize_with_row_statistics`). Statistics are in fp32 under autocast.

    Args:
        num_features: channels ``C``; eps: added to the variance; affine: learn a per-channel scale and shift.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None
        self.statistics_rows: int | None = None
        self.composite = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.composite:
            return normalize_with_row_statistics(x, self.weight, self.bias, self.statistics_rows, self.eps)
        if self.statistics_rows is None:
            return F.batch_norm(x, None, None, self.weight, self.bias, training=True, momentum=0.0, eps=self.eps)
        return _RowStatisticsNorm.apply(x, self.weight, self.bias, self.statistics_rows, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


def normalize_with_row_statistics(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, rows: int | None, eps: float
) -> torch.Tensor:
    """Batch norm of ``x`` ``[B, C, ...]`` with the mean and (biased) variance of its first ``rows`` items (all with
    ``None``), in plain tensor operations; statistics in fp32 under autocast, the result in ``x``'s dtype."""
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    var, mean = torch.var_mean(full_precision(x if rows is None else x[:rows]), dim=dims, keepdim=True, correction=0)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight.view(shape)
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.view(shape)
    return x * scale.to(x.dtype) + shift.to(x.dtype)


class _RowStatisticsNorm(torch.autograd.Function):
    """:func:`normalize_with_row_statistics` through the native batch-norm kernels, at about their speed.

    The plain operations cost twice the native batch norm, mostly in the backward of the slice ``x[:rows]``: a
    zero-filled gradient of the whole batch, added to the other one. Here the forward is the native inference-mode
    batch norm with the rows' statistics, and the backward its native backward (which treats the statistics as
    constants) plus their share, added to the rows they come from. Under ``create_graph`` (a double backward) the
    backward goes through the plain operations instead, so that it is differentiable again.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, rows: int,
                eps: float) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            var, mean = torch.var_mean(full_precision(x[:rows]), dim=[0, *range(2, x.dim())], correction=0)
            y = F.batch_norm(x, mean, var, weight, bias, training=False, eps=eps)
        ctx.save_for_backward(x, weight, bias, mean, var)
        ctx.rows, ctx.eps = rows, eps
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, bias, mean, var = ctx.saved_tensors
        rows, eps, needed = ctx.rows, ctx.eps, ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():
            inputs = [t for t, need in zip((x, weight, bias), needed, strict=True) if need]
            y = normalize_with_row_statistics(x, weight, bias, rows, eps)
            grads = iter(torch.autograd.grad(y, inputs, grad, create_graph=True))
            return (*(next(grads) if need else None for need in needed), None, None)
        shape = [1, -1] + [1] * (x.dim() - 2)
        scale_weight = weight if weight is not None else torch.ones_like(mean)
        with torch.autocast(x.device.type, enabled=False):
            grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                grad, x, scale_weight, mean, var, None, None, False, eps, [True, True, True]
            )
            # grad_bias = sum(g), grad_weight = sum(g (x - mean)) / std; d mean / d x_i = 1 / count and
            # d var / d x_i = 2 (x_i - mean) / count for the rows i of the statistics
            inv_std = torch.rsqrt(var + eps)
            d_mean = (-grad_bias * scale_weight * inv_std).view(shape)
            d_var = (-0.5 * grad_weight * scale_weight * inv_std * inv_std).view(shape)
            count = x[:rows].numel() // x.shape[1]
            share = (d_mean + 2 * d_var * (full_precision(x[:rows]) - mean.view(shape))) / count
            grad_x[:rows] += share.to(grad_x.dtype)
        return grad_x, grad_weight if weight is not None else None, grad_bias if bias is not None else None, None, None


def use_task_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` (in place) by a :class:`TaskBatchNorm` with the same affine weights.

    The state-dict keys of the affine weights stay the same; the running-statistics buffers disappear.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            replacement = TaskBatchNorm(child.num_features, child.eps, child.affine)
            if child.affine:
                with torch.no_grad():
                    replacement.weight.copy_(child.weight)
                    replacement.bias.copy_(child.bias)
            replacement.to(device=child.weight.device if child.affine else None)
            setattr(module, name, replacement)
        else:
            use_task_batch_norm(child)
    return module


@contextmanager
def configure_batch_norm(module: nn.Module, **settings: object) -> Iterator[None]:
    """Within the block, every :class:`TaskBatchNorm` of ``module`` has the given attributes; restored after.

    ``statistics_rows=n``: statistics of the first ``n`` items (feed ``cat([support, query])`` to normalise the
    queries with the support set's statistics); ``composite=True``: no native kernel (inside ``vmap``).
    """
    layers = [m for m in module.modules() if isinstance(m, TaskBatchNorm)]
    saved = [{name: getattr(layer, name) for name in settings} for layer in layers]
    for layer in layers:
        for name, value in settings.items():
            setattr(layer, name, value)
    try:
        yield
    finally:
        for layer, values in zip(layers, saved, strict=True):
            for name, value in values.items():
                setattr(layer, name, value)
