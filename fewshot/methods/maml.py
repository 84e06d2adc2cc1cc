"""MAML (Finn et al. 2017): meta-learn an initialisation from which a few gradient steps on the support set fit a task.

The model is the backbone (``[B, C, H, W] -> [B, D]``) followed by a linear head with ``ways`` outputs; a task with
``N <= ways`` classes uses the head's first ``N`` rows. With ``shared_head=True`` the head has one row that every
class starts from (Ye & Chao 2022, "UNICORN-MAML"): the inner loop tells the classes apart, the start does not
depend on the order of the labels, and a model trained on 5-way tasks adapts to tasks of any number of classes. (Its
first inner step moves only the head: with equal rows the gradient with respect to the features cancels.)

For every task the inner loop (:func:`~fewshot.methods.inner_loop.inner_loop`) takes ``inner_steps`` gradient steps
of size ``inner_lr`` on the support cross-entropy, starting from the meta-learned weights, and the query
cross-entropy of the adapted weights is the task's loss. Its gradient with respect to the initial weights is the
meta-gradient: second-order by default (backpropagated through the inner steps), first-order (FOMAML) with
``first_order=True``.

:class:`MAML` is also the shared base of Meta-SGD, ANIL and Proto-MAML, which change only which weights adapt
(:attr:`adapt_body`), how the head starts (:meth:`MAML.initial_head`) and the inner step sizes
(:meth:`MAML.inner_rates`).

Batch normalisation: every BatchNorm layer of the backbone is replaced by a
:class:`~fewshot.methods.inner_loop.TaskBatchNorm`, which normalises with the statistics of the task's own images
and keeps no running statistics, in training and in evaluation alike (Finn et al.'s reference code also always uses
batch statistics). Running averages over many training tasks match no single task, and the adapted weights differ
per task anyway. The inner loop sees the support set alone, so its statistics are the support set's. The queries
are normalised, by default (``query_statistics="support"``), with the support set's statistics too (they go through
the network together with the support set, whose statistics are applied to both): the adapted network is then one
fixed function of an image, the one the inner loop optimised, and a query's prediction does not depend on which other
queries are in the batch, so a single image can be classified. ``query_statistics="query"`` normalises the queries
with their own batch statistics, as the reference code does; that is transductive (the predictions use the whole
query batch) and needs more than one query.

Test-time views (:meth:`~fewshot.methods.base.FewShotMethod.set_test_views`) need fixed features, so only a
head-only inner loop (ANIL, Proto-MAML) takes them: in eval mode each view of the task's support and query images
goes through the backbone (with that view's support statistics), the features are averaged over the views, and the
head starts and adapts from the mean. MAML and Meta-SGD refuse them.

A meta-batch of tasks can be adapted at once with :func:`torch.func.vmap` when the tasks have equal shapes
(``vectorize=True``; by default on GPUs only, where it is faster); otherwise, or with gradient checkpointing, the
tasks go through a Python loop. On a CPU that loop is split over threads (``workers``; by default one per intra-op
thread): the small batches of one task keep a second core only half busy, whole tasks on each core keep both busy.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fewshot.backbones import measure_feature_dim
from fewshot.data.task import Task
from fewshot.methods.base import FewShotMethod, same_shapes
from fewshot.methods.inner_loop import LearningRate, configure_batch_norm, inner_loop, use_task_batch_norm
from fewshot.utils import cpu_workers, map_on_replicas

QUERY_STATISTICS = ("support", "query")


class _Network(nn.Module):
    """``images -> logits``, ``head(backbone(images))``: a view of a method's modules for ``functional_call``.

    Built per call and never registered, so its parameter names (``backbone.*``, ``head.*``) are the method's own.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images).flatten(1)
        expected = self.head.weight.shape[-1]
        if features.shape[-1] != expected:
            raise ValueError(
                f"the backbone gives {features.shape[-1]} features per image but the head expects {expected}; "
                "build the method with image_size set to the size of the images (or feature_dim)"
            )
        return self.head(features)


class PrototypeHead(nn.Module):
    """A linear head with no parameters of its own: ``weight`` ``[N, D]`` and ``bias`` ``[N]`` are given per task."""

    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.weight is None:
            raise RuntimeError("PrototypeHead has no weights of its own; call it through functional_call")
        return F.linear(features, self.weight, self.bias)


def vectorize_by_default(device: torch.device) -> bool:
    """Whether ``vectorize=None`` adapts a meta-batch with ``vmap`` on ``device``: on GPUs, not on CPUs.

    Measured with ``benchmarks/bench_maml_vs_higher.py`` (Conv-4, 5-way 1-shot, meta-batch 8, 5 second-order
    steps): on a CPU ``vmap`` turns the tasks' convolutions into one grouped convolution that is no faster than the
    separate ones and adds copies (2 idle cores: 0.98x the loop's tasks/s; 1 core: 0.84x); on an H100, one batched
    kernel instead of eight small ones gives 4.1x the loop's tasks/s. It holds the graphs of all the meta-batch's
    tasks at once, though (610 MiB against 57 MiB there): pass ``vectorize=False`` where memory is short.
    """
    return torch.device(device).type == "cuda"


def workers_by_default(device: torch.device, tasks: int) -> int:
    """Threads a meta-batch of ``tasks`` is split over when ``workers=None``: on a CPU one per intra-op thread (at
    most one per task), elsewhere one (:func:`fewshot.utils.cpu_workers`).

    Measured on 2 cores: two threads of one intra-op thread each take 1.38x the tasks/s of one thread with two
    intra-op threads in ``benchmarks/bench_maml_vs_higher.py`` (5-way tasks, 5 inner steps), 1.06x to 1.28x the
    optimizer steps/s of the optimization recipes (``benchmarks/meta_batch_threads.py``): the batch norm, pooling
    and element-wise work of a 5-image batch barely runs in parallel, whole tasks do.
    """
    return cpu_workers(device, tasks)


GradientSum = list[torch.Tensor | None]


def _add(a: GradientSum, b: GradientSum) -> GradientSum:
    return [y if x is None else x if y is None else x + y for x, y in zip(a, b, strict=True)]


def _sum_meta_gradients(
    loss_of: Callable[[Task], tuple[torch.Tensor, torch.Tensor]],
    tasks: list[Task],
    count: int,
    parameters: list[torch.Tensor],
) -> tuple[GradientSum, list[torch.Tensor], list[torch.Tensor]]:
    """The summed gradient of ``loss / count`` over ``tasks``, each task's gradient taken right after its loss,
    and each task's detached loss and query logits."""
    total: GradientSum = [None] * len(parameters)
    losses, logits = [], []
    for task in tasks:
        loss, task_logits = loss_of(task)
        total = _add(total, list(torch.autograd.grad(loss / count, parameters, allow_unused=True)))
        losses.append(loss.detach())
        logits.append(task_logits.detach())
    return total, losses, logits


class MAML(FewShotMethod):
    """Model-agnostic meta-learning with a functional inner loop; every weight adapts.

    Args:
        backbone: feature extractor ``[B, C, H, W] -> [B, D]``; its BatchNorm layers are replaced in place by
            task-statistics batch norm (see the module docstring).
        inner_steps / inner_lr: inner-loop steps and step size in training. Finn et al. use 1 step of 0.4 on
            5-way Omniglot; with this head and batch norm, 0.1 learns much faster (Omniglot ``minimal``, 5-way 1-shot,
            150 meta-batches of 4: validation accuracy 0.77 with 0.1, 0.46 with 0.4).
        test_inner_steps / test_inner_lr: the same at test time, i.e. in :meth:`forward` (evaluation, prediction);
            ``test_inner_lr=None`` uses ``inner_lr``.
        first_order: drop the second-order term of the meta-gradient (FOMAML): cheaper, usually a little worse.
        checkpoint_steps: gradient checkpointing across inner steps: memory that does not grow with the activations
            of every step, for one more forward-backward per step (and the Python loop over the meta-batch).
        ways: rows of the linear head, the most classes a task may have; a task with fewer uses the first rows.
        shared_head: one head row, repeated for each of a task's classes before the inner loop; then ``ways`` does
            not limit the tasks.
        image_size: side of the (square) images, to measure ``D`` with a dummy forward when the head is built.
        feature_dim: ``D`` itself, instead of measuring it.
        query_statistics: ``"support"`` (normalise queries with the support set's batch statistics) or ``"query"``
            (with the query batch's own, transductive).
        vectorize: adapt the tasks of a meta-batch together with ``torch.func.vmap`` (when their shapes agree);
            ``None``: on a GPU but not on a CPU, where the Python loop is faster (:func:`vectorize_by_default`).
        workers: threads the loop over a meta-batch is split over, each with an equal share of the intra-op threads;
            ``None``: on a CPU one per intra-op thread, elsewhere one (:func:`workers_by_default`).
    """

    #: Whether the backbone adapts in the inner loop (``False``: only the head does, on fixed features).
    adapt_body: bool = True
    #: Whether the head is built per task from the class prototypes (Proto-MAML) instead of being learned.
    prototype_head: bool = False
    #: The inner loop runs through ``functional_call`` on replicas too: evaluation may adapt tasks on threads.
    thread_safe_replicas = True
    balanced_prediction = True

    def __init__(
        self,
        backbone: nn.Module,
        inner_steps: int = 1,
        inner_lr: float = 0.1,
        test_inner_steps: int = 3,
        test_inner_lr: float | None = None,
        first_order: bool = False,
        checkpoint_steps: bool = False,
        ways: int = 5,
        image_size: int = 28,
        feature_dim: int | None = None,
        query_statistics: str = "support",
        vectorize: bool | None = None,
        shared_head: bool = False,
        workers: int | None = None,
    ) -> None:
        super().__init__(backbone)
        for name, value in (("inner_steps", inner_steps), ("test_inner_steps", test_inner_steps)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer (got {value!r})")
        for name, value in (("inner_lr", inner_lr), ("test_inner_lr", test_inner_lr)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive (got {value!r})")
        if query_statistics not in QUERY_STATISTICS:
            raise ValueError(f"query_statistics must be 'support' or 'query' (got {query_statistics!r})")
        if not isinstance(ways, int) or ways < 1:
            raise ValueError(f"ways must be a positive integer (got {ways!r})")
        if workers is not None and (not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive integer or None (got {workers!r})")
        self.inner_steps, self.inner_lr = inner_steps, float(inner_lr)
        self.test_inner_steps = test_inner_steps
        self.test_inner_lr = float(inner_lr if test_inner_lr is None else test_inner_lr)
        self.first_order, self.checkpoint_steps = bool(first_order), bool(checkpoint_steps)
        self.query_statistics = query_statistics
        self.vectorize = None if vectorize is None else bool(vectorize)
        self.shared_head = bool(shared_head)
        self.workers = workers
        use_task_batch_norm(backbone)
        if self.prototype_head:
            self.head: nn.Module = PrototypeHead()
        else:
            dim = feature_dim if feature_dim is not None else measure_feature_dim(backbone, image_size)
            self.head = nn.Linear(dim, 1 if self.shared_head else ways)

    @property
    def test_views_unsupported(self) -> str | None:
        """Test views average the features of a head-only inner loop (ANIL, Proto-MAML); a backbone that adapts
        per task has no fixed features to average."""
        if self.adapt_body:
            return f"{type(self).__name__} adapts its backbone to each task, so its features are not fixed"
        return None

    @property
    def bf16_training_safe(self) -> bool:
        """Not with several second-order inner steps: each one multiplies bf16's rounding, so the meta-gradient of
        5 steps is as far from the float64 one as it is long (relative error 1.0; 0.36 with one step, which trains
        as well as fp32: docs/results.md, "Mixed precision")."""
        return self.first_order or self.inner_steps <= 1 or not self.adapt_body

    # -- what the variants change ------------------------------------------------------------------
    def initial_head(
        self, support_features: torch.Tensor | None, support_labels: torch.Tensor, ways: int
    ) -> dict[str, torch.Tensor]:
        """Head weights the inner loop starts from: ``{"weight": [N, D], "bias": [N]}`` (the first ``N`` rows)."""
        if self.shared_head:
            return {"weight": self.head.weight.expand(ways, -1), "bias": self.head.bias.expand(ways)}
        if ways > self.head.out_features:
            raise ValueError(
                f"this task has {ways} classes but the head has only {self.head.out_features} outputs; build the "
                f"method with ways={ways} or more (method option), or use tasks of at most "
                f"{self.head.out_features} ways (--ways, --val-ways)"
            )
        return {"weight": self.head.weight[:ways], "bias": self.head.bias[:ways]}

    def inner_rates(self, lr: float, weights: dict[str, torch.Tensor], ways: int) -> LearningRate:
        """Step sizes for the fast ``weights`` (keys ``backbone.*``, ``head.*``): one scalar for MAML."""
        return lr

    # -- adaptation --------------------------------------------------------------------------------
    def _support_and_query(
        self, fn: Callable[[torch.Tensor], torch.Tensor], support: torch.Tensor, query: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(fn(support), fn(query))`` with the batch statistics :attr:`query_statistics` asks for."""
        if self.query_statistics == "query":
            return fn(support), fn(query)
        n = support.shape[0]
        with configure_batch_norm(self.backbone, statistics_rows=n):
            both = fn(torch.cat([support, query]))
        return both[:n], both[n:]

    def adapt(
        self,
        support_images: torch.Tensor,
        support_labels: torch.Tensor,
        query_images: torch.Tensor,
        ways: int,
        training: bool,
        functional: bool = False,
    ) -> torch.Tensor:
        """Query logits ``[M, N]`` after the inner loop on the support set (training or test steps and step size).

        Differentiable with respect to the meta-parameters when grad mode is on at the call; otherwise the inner
        loop runs first-order on detached weights (evaluation), which gives the same adapted weights.
        """
        steps, lr = (self.inner_steps, self.inner_lr) if training else (self.test_inner_steps, self.test_inner_lr)
        differentiable = torch.is_grad_enabled()
        first_order = self.first_order or not differentiable

        def prepare(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return weights if differentiable else {k: v.detach().requires_grad_() for k, v in weights.items()}

        with torch.enable_grad():
            if self.adapt_body:
                network, inputs = _Network(self.backbone, self.head), support_images
                weights = {f"backbone.{k}": v for k, v in self.backbone.named_parameters()}
                support_features = None
                if self.prototype_head:
                    with torch.set_grad_enabled(differentiable):
                        support_features = self.backbone(support_images).flatten(1)
            else:
                network = _Network(nn.Identity(), self.head)
                n = support_images.shape[0]

                def task_features(images: torch.Tensor) -> torch.Tensor:
                    support, query = self._support_and_query(lambda x: self.backbone(x).flatten(1), images[:n],
                                                             images[n:])
                    return torch.cat([support, query])

                with torch.set_grad_enabled(differentiable):
                    features = self.mean_over_views(task_features, torch.cat([support_images, query_images]))
                support_features, query_features = features[:n], features[n:]
                inputs, weights = support_features, {}
            head = self.initial_head(support_features, support_labels, ways)
            weights = prepare({**weights, **{f"head.{k}": v for k, v in head.items()}})
            rates = self.inner_rates(lr, weights, ways)
            if not differentiable and not isinstance(rates, float):
                rates = {k: v.detach() for k, v in rates.items()}
            weights = inner_loop(
                network, weights, inputs, support_labels, steps=steps, lr=rates, first_order=first_order,
                checkpoint=self.checkpoint_steps and differentiable and not functional, functional=functional,
            )
            with torch.set_grad_enabled(differentiable):
                if self.adapt_body:
                    def run(x: torch.Tensor) -> torch.Tensor:
                        return functional_call(network, weights, (x,))

                    logits = self._support_and_query(run, support_images, query_images)[1]
                else:
                    logits = functional_call(network, weights, (query_features,))
        return logits if differentiable else logits.detach()

    # -- the common interface ----------------------------------------------------------------------
    def forward(
        self, support_images: torch.Tensor, support_labels: torch.Tensor, query_images: torch.Tensor
    ) -> torch.Tensor:
        """Query logits ``[M, N]`` after test-time adaptation (``test_inner_steps`` steps of ``test_inner_lr``),
        balanced over the classes with :attr:`transductive_balance` (:meth:`~FewShotMethod.balance_prediction`)."""
        ways = int(support_labels.max()) + 1
        logits = self.adapt(support_images, support_labels, query_images, ways, training=False)
        return self.balance_prediction(logits, support_labels.shape[0] / ways)

    def loss(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """Query cross-entropy after training-time adaptation, and the query logits ``[M, N]``."""
        logits = self.adapt(task.support_images, task.support_labels, task.query_images, task.ways, training=True)
        return F.cross_entropy(logits, task.query_labels), logits

    def batch_loss(self, tasks: list[Task]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Mean query loss over the meta-batch and each task's query logits.

        With :attr:`vectorize`, one ``vmap`` over the tasks. Otherwise a loop that takes each task's meta-gradient
        right after its loss (as higher's per-task ``backward`` does), so that only one task's graph per thread is
        alive at a time, instead of all of them until the caller's ``backward``, split over :attr:`workers`
        threads; the returned loss then carries the summed gradient (:class:`_PrecomputedGradient`), and its logits
        are detached.
        """
        ways = {task.ways for task in tasks}
        device = tasks[0].support_images.device
        vectorize = self.vectorize
        if vectorize is None:
            vectorize = vectorize_by_default(device)
        if len(tasks) < 2 or not torch.is_grad_enabled():
            return super().batch_loss(tasks)
        if not vectorize or self.checkpoint_steps or len(ways) > 1 or not same_shapes(tasks):
            workers = self.workers if self.workers is not None else workers_by_default(device, len(tasks))
            return self._task_by_task(tasks, min(workers, len(tasks)))
        (n,) = ways

        def one_task(
            support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, query_labels: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            with configure_batch_norm(self.backbone, composite=True):
                logits = self.adapt(support, support_labels, query, n, training=True, functional=True)
            return F.cross_entropy(logits, query_labels), logits

        stacked = [torch.stack([getattr(t, name) for t in tasks])
                   for name in ("support_images", "support_labels", "query_images", "query_labels")]
        losses, logits = torch.func.vmap(one_task)(*stacked)
        return losses.mean(), list(logits.unbind(0))

    def _task_by_task(self, tasks: list[Task], workers: int = 1) -> tuple[torch.Tensor, list[torch.Tensor]]:
        parameters = [p for p in self.parameters() if p.requires_grad]
        if workers == 1:
            total, losses, logits = _sum_meta_gradients(self.loss, tasks, len(tasks), parameters)
        else:
            total, losses, logits = self._on_threads(tasks, workers, parameters)
        return _PrecomputedGradient.apply(torch.stack(losses).mean(), total, *parameters), logits

    def _on_threads(
        self, tasks: list[Task], workers: int, parameters: list[torch.Tensor]
    ) -> tuple[GradientSum, list[torch.Tensor], list[torch.Tensor]]:
        """:func:`_sum_meta_gradients` with task ``i`` on thread ``i % workers``, each through its own replica."""

        def share(copy: MAML, part: list[Task]) -> tuple[GradientSum, list[torch.Tensor], list[torch.Tensor]]:
            return _sum_meta_gradients(copy.loss, part, len(tasks), parameters)

        total: GradientSum = [None] * len(parameters)
        losses: list[torch.Tensor] = [torch.empty(0)] * len(tasks)
        logits: list[torch.Tensor] = [torch.empty(0)] * len(tasks)
        parts = map_on_replicas(share, self, tasks, workers, tasks[0].support_images.device.type)
        for i, (grads, part_losses, part_logits) in enumerate(parts):
            total = _add(total, grads)
            losses[i::workers], logits[i::workers] = part_losses, part_logits
        return total, losses, logits


class _PrecomputedGradient(torch.autograd.Function):
    """``loss`` as a function of ``parameters`` whose gradient, ``gradients``, is already known."""

    @staticmethod
    def forward(ctx, loss: torch.Tensor, gradients: list[torch.Tensor | None], *parameters: torch.Tensor):
        ctx.gradients = gradients
        return loss.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return None, None, *(None if g is None else g * grad_output for g in ctx.gradients)
