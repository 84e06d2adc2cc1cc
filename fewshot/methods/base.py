"""The one interface every method implements: a task's support set and query images in, query logits out."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.data.augment import AugmentConfig, augment
from fewshot.data.task import Task
from fewshot.utils import full_precision


class FewShotMethod(nn.Module):
    """Base class of all methods.

    Subclasses implement :meth:`forward`. Training calls :meth:`batch_loss` (by default the mean of :meth:`loss`
    over the meta-batch, and :meth:`loss` is the query cross-entropy of :meth:`forward`'s logits); evaluation and
    prediction call :meth:`forward`, except for a :class:`MetricMethod`, whose images they embed once with
    :meth:`MetricMethod.features` and whose episodes they score with :meth:`MetricMethod.classify`. So a new
    method that implements these works with all of them.

    Args:
        backbone: feature extractor ``[B, C, H, W] -> [B, D]``.
    """

    #: Whether :meth:`forward` keeps no state in the module, so that evaluation may classify tasks on several threads
    #: at once, each through a replica that shares the parameters (:func:`fewshot.utils.map_on_replicas`).
    thread_safe_replicas: bool = False

    #: Test-time augmentation (:meth:`set_test_views`): how many views of each image, and their transforms.
    test_views: int = 1
    #: Default test-time transforms: small changes of the kind two people drawing one character make.
    test_augment: AugmentConfig = AugmentConfig(rotation=8.0, shear=5.0, scale=(0.92, 1.08), shift=0.05)

    #: Transductive inference (:meth:`set_transductive_steps`): refinements of a task's classes by its unlabelled
    #: queries in eval mode (0: each query is classified on its own).
    transductive_steps: int = 0
    #: Sinkhorn iterations that spread the queries' weights evenly over the classes in each refinement step and,
    #: where :attr:`balanced_prediction`, in the prediction (0: no assumption about how the queries fall into the
    #: classes).
    transductive_balance: int = 0
    #: The temperature of the probabilities that are balanced (and weigh the queries in a refinement step), at one
    #: shot per class; chosen on validation per method, as the scale of the logits differs between methods.
    transductive_temperature: float = 1.0
    #: Whether, with :attr:`transductive_balance`, the eval-mode logits are the log of the query probabilities
    #: balanced over the classes (:meth:`balance_prediction`), with or without refinement steps.
    balanced_prediction: bool = False

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    @property
    def transductive_unsupported(self) -> str | None:
        """Why this method cannot refine its classes with the queries of a task (``None``: it can)."""
        return f"{type(self).__name__} has no per-image features to refine classes with"

    def set_transductive_steps(self, steps: int, temperature: float | None = None, balance: int | None = None) -> None:
        """In eval mode, refine the task's classes with its queries ``steps`` times (0: inductive, the default),
        weighing the queries by ``softmax(logits * K / temperature)`` at K shots per class (None keeps the current
        temperature), balanced by ``balance`` Sinkhorn iterations so that every class receives the same total
        weight (0: not balanced; None keeps the current setting).

        Then a query's prediction depends on the other queries of its task, as in transductive few-shot
        learning; refused (``ValueError``) by a method that cannot do it. Balancing assumes that the task's
        queries are spread evenly over its classes, as in Lake's runs and in episodes of Q queries per class; on
        a batch of queries that is not, it pulls predictions toward the classes with fewer queries.
        """
        if steps < 0:
            raise ValueError(f"transductive steps must be 0 or more (got {steps})")
        if temperature is not None and not temperature > 0:
            raise ValueError(f"the transductive temperature must be positive (got {temperature})")
        if balance is not None and balance < 0:
            raise ValueError(f"the transductive balance must be 0 or more Sinkhorn iterations (got {balance})")
        if steps and self.transductive_unsupported:
            raise ValueError(f"transductive inference is not available here: {self.transductive_unsupported} "
                             "(use 0 steps)")
        if balance and not steps and not self.balanced_prediction:
            raise ValueError(f"{type(self).__name__} balances only its transductive steps, so a balance needs steps "
                             "(give --transductive-steps, or a balance of 0)")
        self.transductive_steps = int(steps)
        if temperature is not None:
            self.transductive_temperature = float(temperature)
        if balance is not None:
            self.transductive_balance = int(balance)

    def balance_prediction(self, logits: torch.Tensor, shots: float = 1.0) -> torch.Tensor:
        """In eval mode with :attr:`transductive_balance` (and :attr:`balanced_prediction`), the log of the queries'
        probabilities ``softmax(logits * shots / transductive_temperature)`` balanced over the classes by
        :func:`balance_weights`; otherwise ``logits`` as they are. ``[..., M, N]`` in and out (fp32 when balanced).

        The prior of a task whose queries are spread evenly over its classes (Lake's runs, episodes of Q queries per
        class): the argmax is no longer free to give two queries the class that only one of them fits. ``softmax``
        of the result is the balanced probabilities themselves.
        """
        if self.training or not (self.transductive_balance and self.balanced_prediction):
            return logits
        weights = (logits.float() * shots / self.transductive_temperature).softmax(-1)
        return balance_weights(weights, self.transductive_balance).clamp_min(1e-30).log()

    @property
    def test_views_unsupported(self) -> str | None:
        """Why this method cannot average features over test views (``None``: it can)."""
        return f"{type(self).__name__} has no per-image features to average"

    def set_test_views(self, views: int, augment_config: AugmentConfig | str | None = None) -> None:
        """Average features over ``views`` views per image at test time (1: none); ``augment_config`` None keeps
        the current transforms. Refused (``ValueError``) by a method without fixed per-image features."""
        config = AugmentConfig.from_string(augment_config) if isinstance(augment_config, str) else augment_config
        config = self.test_augment if config is None else config
        if views < 1:
            raise ValueError(f"test views must be at least 1 (got {views})")
        if views > 1 and not config.enabled:
            raise ValueError("test-time views need an augmentation, e.g. 'rotation=8,shear=5,scale=0.92:1.08'")
        if views > 1 and self.test_views_unsupported:
            raise ValueError(f"test-time views are not available here: {self.test_views_unsupported} (use 1 view)")
        self.test_views, self.test_augment = int(views), config

    def mean_over_views(self, fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """``fn(images)`` in training or with one view; in eval mode the mean (fp32) of ``fn`` over the images and
        ``test_views - 1`` transforms of them.

        View ``v`` applies one transform to every image of the batch (a generator seeded 0), so an image's view does
        not depend on the batch it comes in, and ``fn`` sees the support and the query images of a task transformed
        alike when they come in one batch.
        """
        if self.training or self.test_views == 1:
            return fn(images)
        generator = torch.Generator().manual_seed(0)
        total = full_precision(fn(images))
        for _ in range(self.test_views - 1):
            total = total + full_precision(fn(augment(images, self.test_augment, generator, shared=True)))
        return total / self.test_views

    def forward(
        self, support_images: torch.Tensor, support_labels: torch.Tensor, query_images: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[M, N]`` of the ``M`` query images over the task's ``N`` classes.

        Args:
            support_images: ``[N*K, C, H, W]``; support_labels: ``[N*K]`` in ``0..N-1``;
            query_images: ``[M, C, H, W]``.
        """
        raise NotImplementedError

    @property
    def bf16_training_safe(self) -> bool:
        """Whether bf16 autocast leaves the training gradient usable; ``--precision auto`` trains in fp32 if not.

        True for every method whose gradient under bf16 autocast is within about 40% of the float64 one
        (``benchmarks/bf16_gradients.py``), which trains as well as fp32 at equal time.
        """
        return True

    def loss(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, query logits)`` for one labelled task; cross-entropy on the queries unless overridden."""
        logits = self(task.support_images, task.support_labels, task.query_images)
        return F.cross_entropy(logits, task.query_labels), logits

    def batch_loss(self, tasks: list[Task]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Mean loss over a meta-batch of tasks and each task's query logits; methods may vectorise it."""
        if len(tasks) == 1:
            loss, logits = self.loss(tasks[0])
            return loss, [logits]
        losses, logits = zip(*(self.loss(task) for task in tasks), strict=True)
        return torch.stack(losses).mean(), list(logits)


class MetricMethod(FewShotMethod):
    """A method that embeds every image independently, then compares embeddings.

    Because an image's embedding does not depend on the task, evaluation embeds each image of a split once
    and draws any number of episodes from the cached features (:meth:`classify`).

    Test-time augmentation (:meth:`set_test_views`): in eval mode :meth:`features` averages the embeddings of
    an image and of ``views - 1`` fixed, seeded transforms of it; in training it is :meth:`embed`.
    """

    #: Whether :meth:`embed` returns unit vectors; the mean of the test views is then normalised again.
    unit_features: bool = False
    test_views_unsupported = None
    transductive_unsupported = None
    balanced_prediction = True

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, D]``."""
        return self.backbone(images)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """What evaluation and prediction compare: :meth:`embed`, averaged over the test views in eval mode
        (:meth:`~FewShotMethod.mean_over_views`)."""
        if self.training or self.test_views == 1:
            return self.embed(images)
        mean = self.mean_over_views(self.embed, images)
        return F.normalize(mean, dim=-1) if self.unit_features else mean

    #: Whether :meth:`classify` accepts a leading episode dimension (``[E, N*K, D]`` ...); evaluation then
    #: classifies many episodes in one call instead of looping in Python.
    batched_classify: bool = False

    def classify(
        self, support_features: torch.Tensor, support_labels: torch.Tensor, query_features: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[M, N]`` from support features ``[N*K, D]`` and query features ``[M, D]``."""
        raise NotImplementedError

    def classify_task(
        self, support_features: torch.Tensor, support_labels: torch.Tensor, query_features: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`classify`, and in eval mode with transductive steps, refined by the task's unlabelled queries.

        Each step is one soft k-means step (Ren et al. 2018) on the features: a class's mean moves to the mean of
        its support features and of every query weighted by the query's current probability of the class
        (``softmax(logits * K / transductive_temperature)``, K the mean number of support images per class; with
        :attr:`transductive_balance`, rescaled by :func:`balance_weights` so that each class receives the same
        total weight); each support feature moves with its class's mean and :meth:`classify` scores the queries
        again. With :attr:`transductive_balance` (and :attr:`balanced_prediction`) the returned logits are the last
        scores balanced the same way (:meth:`~FewShotMethod.balance_prediction`), with or without steps.
        For ProtoNet this is soft k-means on the prototypes; any metric method takes it. Shapes as
        :meth:`classify` (feature maps are flattened for the means).
        """
        logits = self.classify(support_features, support_labels, query_features)
        if self.training or not (self.transductive_steps or self.transductive_balance):
            return logits
        # The temperature is for 1-shot tasks. With K shots per class it is divided by K: the inductive prediction
        # is surer, and at the 1-shot temperature wrong queries pulled the classes away (on validation, 20-way 2-
        # and 5-shot tasks lost up to 2.3 and 1.2 points against inductive; divided by K, at most 0.1).
        shots = support_labels.shape[-1] / (int(support_labels.max()) + 1)
        with torch.autocast(support_features.device.type, enabled=False):
            if self.transductive_steps:
                logits = self._refine(logits, support_features, support_labels, query_features, shots)
            # The prediction takes the prior the steps used (on the folds' validation alphabets, ProtoNet 92.7%
            # against 92.4% with the steps' argmax; docs/results.md, "Session 35").
            return self.balance_prediction(logits, shots)

    def _refine(
        self, logits: torch.Tensor, support_features: torch.Tensor, support_labels: torch.Tensor,
        query_features: torch.Tensor, shots: float,
    ) -> torch.Tensor:
        """The logits after :attr:`transductive_steps` soft k-means steps (:meth:`classify_task`), in fp32."""
        support, query = full_precision(support_features), full_precision(query_features)
        leading = support_labels.shape[:-1]  # episodes
        flat_support = support.reshape(*support_labels.shape, -1)  # [..., n, F]
        flat_query = query.reshape(*leading, query.shape[len(leading)], -1)  # [..., M, F]
        one_hot = F.one_hot(support_labels, int(support_labels.max()) + 1).to(support.dtype)  # [..., n, N]
        counts = one_hot.sum(-2)[..., None]  # [..., N, 1]
        sums = one_hot.transpose(-1, -2) @ flat_support  # [..., N, F]
        temperature = self.transductive_temperature / shots
        for _ in range(self.transductive_steps):
            weights = (logits.float() / temperature).softmax(-1)  # [..., M, N]
            if self.transductive_balance:
                weights = balance_weights(weights, self.transductive_balance)
            means = (sums + weights.transpose(-1, -2) @ flat_query) / (counts + weights.sum(-2)[..., None])
            moved = flat_support + one_hot @ (means - sums / counts)
            if self.unit_features:
                moved = F.normalize(moved, dim=-1)
            logits = self.classify(moved.view(support.shape), support_labels, query)
        return logits

    def forward(
        self, support_images: torch.Tensor, support_labels: torch.Tensor, query_images: torch.Tensor
    ) -> torch.Tensor:
        # One backbone pass over support and query together: half the kernel launches, one BN batch.
        features = self.features(torch.cat([support_images, query_images]))
        n_support = support_images.shape[0]
        return self.classify_task(features[:n_support], support_labels, features[n_support:])


def balance_weights(weights: torch.Tensor, iterations: int) -> torch.Tensor:
    """Sinkhorn scaling of the query-to-class weights ``[..., M, N]``: alternately each class's column to a total
    of ``M / N`` and each query's row to 1, ``iterations`` times (ending on the rows, so a query's weights stay a
    distribution).

    As the iterations go on it approaches the soft assignment nearest ``weights`` (in relative entropy) that gives
    every class the same share of the queries: the prior of a task whose queries are spread evenly over its classes.
    """
    mass = weights.shape[-2] / weights.shape[-1]
    for _ in range(iterations):
        weights = weights * (mass / weights.sum(-2, keepdim=True).clamp_min(1e-30))
        weights = weights / weights.sum(-1, keepdim=True)
    return weights


def same_shapes(tasks: list[Task]) -> bool:
    """Whether every task has the support and query tensors of the same shapes (so they can be stacked)."""
    return len({(t.support_images.shape, t.query_images.shape) for t in tasks}) == 1


def class_means(features: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Mean feature of each class: features ``[..., n, D]``, labels ``[..., n]`` -> ``[..., N, D]``.

    Leading dimensions (e.g. a batch of episodes) are kept.
    """
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    # A one-hot matrix product: on CPU, index_add_ is orders of magnitude slower for these small shapes.
    one_hot = torch.nn.functional.one_hot(labels, num_classes).transpose(-1, -2).to(features.dtype)
    return (one_hot @ features) / one_hot.sum(-1, keepdim=True).clamp_min(1)

