"""Matching networks (Vinyals et al. 2016): attention over the support set, optionally with full-context embeddings.

A query ``x̂`` attends to every support image ``x_i`` with ``a(x̂, x_i) = softmax_i(scale * cos(f(x̂), g(x_i)))``
and predicts the attention-weighted label distribution ``P(y | x̂, S) = sum_i a(x̂, x_i) y_i``. The logits of the
common interface are ``log P(y | x̂, S)``, so cross-entropy on them is the paper's loss (the negative log of the
weighted label distribution at the true class).

Without full-context embeddings ``f = g =`` the backbone. With them (``fce=True``), ``g`` is a bidirectional LSTM
over the support embeddings and ``f`` an attention LSTM that reads the support set for ``fce_steps`` steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.backbones import measure_feature_dim
from fewshot.methods.base import MetricMethod
from fewshot.utils import full_precision


def class_log_probabilities(attention_logits: torch.Tensor, support_labels: torch.Tensor) -> torch.Tensor:
    """``log sum_{i in class c} softmax_i(attention_logits)``: ``[M, S]``, labels ``[S]`` -> ``[M, N]``.

    Computed as a log-sum-exp over each class's entries of the log-softmax, so it needs no epsilon and never
    underflows to ``log 0`` for a class that has support images.
    """
    num_classes = int(support_labels.max()) + 1
    log_attention = F.log_softmax(attention_logits, dim=-1)  # [M, S]
    member = F.one_hot(support_labels, num_classes).T.bool()  # [N, S]
    masked = log_attention[:, None, :].masked_fill(~member[None], float("-inf"))  # [M, N, S]
    return torch.logsumexp(masked, dim=-1)


class MatchingNet(MetricMethod):
    """Matching network with cosine attention and optional full-context embeddings (FCE).

    FCE (``fce=True``), as in the paper's appendix, with ``g'`` = ``f'`` = the backbone:

    - ``g(x_i) = h_fwd_i + h_bwd_i + g'(x_i)``: a bidirectional LSTM over the support embeddings, which it reads in
      label order (sorted stably by label, so the order of the classes does not matter but the order of the images
      within a class does).
    - ``f(x̂, S)``: ``h_k, c_k = LSTM(f'(x̂), [h_{k-1}, r_{k-1}], c_{k-1})``; ``h_k = h_k + f'(x̂)``;
      ``r_k = sum_i softmax_i(h_k . g(x_i)) g(x_i)``; ``f = h_K`` after ``K = fce_steps`` steps from
      ``h_0 = c_0 = 0``. The LSTM cell takes ``[f'(x̂), r_{k-1}]`` as input and ``h_{k-1}`` as its state, which
      gives the same gates as the paper's ``[h_{k-1}, r_{k-1}]`` hidden state.

    The LSTMs need the feature length ``D`` when they are built: ``feature_dim`` gives it, or it is measured with a
    dummy ``image_size`` x ``image_size`` image (channels from the backbone's first layer); ``fewshot train`` passes
    the training images' size.

    Attention and FCE run in fp32, also under bf16 autocast (only the backbone uses bf16).

    Args:
        backbone: feature extractor ``[B, C, H, W] -> [B, D]`` (maps are flattened).
        fce: use full-context embeddings.
        fce_steps: processing steps ``K`` of the query's attention LSTM.
        scale: multiplies the cosine similarities before the softmax (the paper uses 1, i.e. no scale; a larger
            value lets the attention be sharp, which trains much faster).
        learn_scale: learn ``scale`` (a parameter) instead of keeping it fixed (a buffer).
        feature_dim: ``D`` for the FCE LSTMs; measured from the backbone when ``None``; unused without FCE.
        image_size: side of the (square) images, to measure ``D``.
    """

    batched_classify = False

    def __init__(
        self,
        backbone: nn.Module,
        fce: bool = False,
        fce_steps: int = 5,
        scale: float = 10.0,
        learn_scale: bool = True,
        feature_dim: int | None = None,
        image_size: int = 28,
    ) -> None:
        super().__init__(backbone)
        if fce_steps < 1:
            raise ValueError(f"fce_steps must be at least 1 (got {fce_steps})")
        if learn_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))
        self.fce, self.fce_steps = fce, fce_steps
        self.feature_dim: int | None = None
        if fce:
            self.feature_dim = (measure_feature_dim(backbone, image_size) if feature_dim is None
                                else int(feature_dim))
            d = self.feature_dim
            self.support_lstm = nn.LSTM(d, d, batch_first=True, bidirectional=True)
            self.query_lstm = nn.LSTMCell(2 * d, d)

    # -- full-context embeddings ------------------------------------------------------------------
    def support_context(self, support: torch.Tensor, support_labels: torch.Tensor) -> torch.Tensor:
        """``g``: support embeddings ``[S, D]`` -> ``[S, D]``, a bi-LSTM over the support set in label order."""
        order = torch.argsort(support_labels, stable=True)
        ordered = support[order]
        hidden, _ = self.support_lstm(ordered[None])  # [1, S, 2D]
        d = support.shape[-1]
        context = hidden[0, :, :d] + hidden[0, :, d:] + ordered
        return context[torch.argsort(order)]  # back to the given order

    def query_context(self, query: torch.Tensor, support_context: torch.Tensor) -> torch.Tensor:
        """``f``: query embeddings ``[M, D]`` -> ``[M, D]``, attention LSTM reading ``g(S)`` ``[S, D]``."""
        h = torch.zeros_like(query)
        c = torch.zeros_like(query)
        for _ in range(self.fce_steps):
            readout = torch.softmax(h @ support_context.T, dim=-1) @ support_context  # r_{k-1}: [M, D]
            h, c = self.query_lstm(torch.cat([query, readout], dim=-1), (h, c))
            h = h + query
        return h

    # -- classification ---------------------------------------------------------------------------
    def attention_logits(
        self, support_features: torch.Tensor, support_labels: torch.Tensor, query_features: torch.Tensor
    ) -> torch.Tensor:
        """``scale * cos(f(x̂), g(x_i))`` ``[M, S]``; its softmax over ``S`` is the attention."""
        with torch.autocast(support_features.device.type, enabled=False):
            support, query = full_precision(support_features).flatten(1), full_precision(query_features).flatten(1)
            if self.fce:
                if support.shape[-1] != self.feature_dim:
                    raise ValueError(
                        f"MatchingNet(fce=True) was built for {self.feature_dim} features but the backbone gives "
                        f"{support.shape[-1]} (images of another size?); pass method option "
                        f"feature_dim={support.shape[-1]}"
                    )
                support = self.support_context(support, support_labels)
                query = self.query_context(query, support)
            return self.scale * F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).T

    def attention(
        self, support_features: torch.Tensor, support_labels: torch.Tensor, query_features: torch.Tensor
    ) -> torch.Tensor:
        """Attention weights ``a(x̂, x_i)`` ``[M, S]`` (rows sum to 1)."""
        return torch.softmax(self.attention_logits(support_features, support_labels, query_features), dim=-1)

    def classify(
        self, support_features: torch.Tensor, support_labels: torch.Tensor, query_features: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``[M, N]`` = log of the attention summed per class, from ``[S, D]`` support and ``[M, D]`` query."""
        logits = self.attention_logits(support_features, support_labels, query_features)
        with torch.autocast(logits.device.type, enabled=False):
            return class_log_probabilities(logits, support_labels)
