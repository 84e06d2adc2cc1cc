"""Memory-augmented neural network (Santoro et al. 2016): an LSTM controller with an external memory.

An episode is a sequence. At step ``t`` the controller sees image ``x_t`` (through the backbone) together with
the label of step ``t-1`` (one-hot; labels are shuffled per episode by the sampler), so it must store
image-label bindings in memory and read them back when the class comes round again.

Memory access follows the paper:

- read: content addressing, a softmax over the cosine similarity of a key to every slot (times a learned
  key strength per head, as in the Neural Turing Machine, so that reads can be sharp);
- write, least-recently-used access: ``w_write = sigmoid(alpha) * w_read(t-1) + (1 - sigmoid(alpha)) * w_lu(t-1)``,
  where ``w_lu`` marks the slots of smallest usage; before writing, the least-used slot is cleared;
- usage decays: ``u_t = gamma * u_(t-1) + w_read + w_write``.

Where we depart from the paper, and why (each measured; see :class:`MANN`'s arguments): the vector written is an
output of its own (the NTM's "add" vector) rather than the read key; reads start with a key strength well above
1; conv features are batch-normalised before the controller; and the controller sees the previous image's
features beside its label (``previous_image``).

In the common interface (:meth:`MANN.forward`) the support set is presented as a sequence in a shuffled order
and every query is then one further step from the state that sequence left, with the last support label as its
label input. Training (:meth:`MANN.loss`) presents support and query images together in a shuffled sequence
and scores every step, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.backbones import measure_feature_dim
from fewshot.data.task import Task
from fewshot.methods.base import FewShotMethod, same_shapes
from fewshot.utils import full_precision


def least_used(usage: torch.Tensor, count: int) -> torch.Tensor:
    """``[B, S]`` usage -> ``[B, S]`` weights: 1 at the ``count`` least-used slots, 0 elsewhere."""
    smallest = usage.topk(count, dim=-1, largest=False).indices
    return torch.zeros_like(usage).scatter_(-1, smallest, 1.0)


def content_read(keys: torch.Tensor, memory: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """Read weights ``[B, R, S]``: softmax over slots of ``strength * cosine(key, slot)``.

    Args:
        keys: ``[B, R, W]`` one key per read head; memory: ``[B, S, W]``; strength: ``[B, R]`` (positive).
    """
    similarity = F.normalize(keys, dim=-1, eps=1e-6) @ F.normalize(memory, dim=-1, eps=1e-6).transpose(1, 2)
    return torch.softmax(strength.unsqueeze(-1) * similarity, dim=-1)


def lru_write(
    memory: torch.Tensor, usage: torch.Tensor, previous_read: torch.Tensor, gate: torch.Tensor, keys: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-recently-used write; returns the new memory ``[B, S, W]`` and the write weights ``[B, R, S]``.

    Args:
        memory: ``[B, S, W]``; usage: ``[B, S]`` usage weights of the previous step;
        previous_read: ``[B, R, S]`` read weights of the previous step; gate: ``[B, R]`` logits of the
            interpolation (large: write where the head read last; small: write to the least-used slots);
        keys: ``[B, R, W]`` the vectors written.
    """
    heads = keys.shape[1]
    mix = torch.sigmoid(gate).unsqueeze(-1)
    write_weights = mix * previous_read + (1 - mix) * least_used(usage, heads).unsqueeze(1)
    cleared = memory * (1 - least_used(usage, 1)).unsqueeze(-1)  # the least-used slot is emptied first
    return cleared + write_weights.transpose(1, 2) @ keys, write_weights


@dataclass
class MemoryState:
    """Controller and memory state of ``B`` sequences."""

    hidden: torch.Tensor  # [B, H]
    cell: torch.Tensor  # [B, H]
    memory: torch.Tensor  # [B, S, W]
    usage: torch.Tensor  # [B, S]
    read_weights: torch.Tensor  # [B, R, S]
    reads: torch.Tensor  # [B, R*W]
    previous: torch.Tensor  # [B, D] features of the previous step's image (zeros before the first)

    def expand(self, batch: int) -> MemoryState:
        """The state of one sequence repeated ``batch`` times (independent continuations)."""
        return MemoryState(**{f.name: getattr(self, f.name).expand(batch, *getattr(self, f.name).shape[1:])
                              for f in fields(self)})


class MANN(FewShotMethod):
    """LSTM controller + external memory with least-recently-used writes, trained on label-delayed sequences.

    Args:
        backbone: image encoder ``[B, C, H, W] -> [B, D]`` feeding the controller (the paper fed raw pixels; a
            small convolutional encoder learns far faster on 2 CPU cores).
        ways: size of the label input and output, the most classes an episode may have.
        hidden_size: LSTM units (paper: 200). memory_slots / slot_size: memory shape (paper: 128 x 40).
        read_heads: read heads (paper: 4). usage_decay: gamma (paper: 0.95).
        key_strength: initial key strength of the reads (learned afterwards). Cosines lie in [-1, 1], so with a
            strength near 1 every read is an almost uniform mix of all slots and training sits on a plateau where
            the model only guesses unseen labels. On synthetic 3-class sequences of 5 instances (16 per batch,
            3000 batches) strength 1.7 never left the plateau, 10 left it after about 2500 batches, 20 and 30 after
            about 1500, and 60 or more never did (reads so sharp that little gradient flows). On Omniglot
            (``omniglot-mann``, 4 minutes on one thread) 20 left the plateau with 2 seeds of 6 and 10 with all 4 seeds
            on which 20 had stayed there (validation 67 to 76% against 65 and 67%), so the recipe uses 10.
        previous_image: also give the controller the previous step's image features, beside that step's label.
            The paper's controller must carry the previous image in its LSTM state until its label arrives; on
            2 CPU cores and minutes of training it never learned to (3-class glyph sequences, 3000 batches of 16:
            later presentations stayed at the level of the first). With the pair given together it does.
        image_size: to measure ``D`` with a dummy forward.
    """

    def __init__(
        self,
        backbone: nn.Module,
        ways: int = 5,
        hidden_size: int = 200,
        memory_slots: int = 128,
        slot_size: int = 40,
        read_heads: int = 4,
        usage_decay: float = 0.95,
        key_strength: float = 20.0,
        previous_image: bool = True,
        image_size: int = 28,
    ) -> None:
        super().__init__(backbone)
        for name, value in (("ways", ways), ("hidden_size", hidden_size), ("memory_slots", memory_slots),
                            ("slot_size", slot_size), ("read_heads", read_heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer (got {value!r})")
        if read_heads > memory_slots:
            raise ValueError(f"read_heads ({read_heads}) cannot exceed memory_slots ({memory_slots})")
        if not 0 <= usage_decay <= 1:
            raise ValueError(f"usage_decay must lie in [0, 1] (got {usage_decay})")
        if not key_strength > 1:
            raise ValueError(f"key_strength must be greater than 1 (got {key_strength})")
        self.ways, self.heads, self.slots, self.slot_size = ways, read_heads, memory_slots, slot_size
        self.usage_decay = usage_decay
        dim = measure_feature_dim(backbone, image_size)
        self.previous_image = previous_image
        # Image features enter the controller standardised over the batch. Conv features are non-negative and
        # share a large common component, so without this every key looks alike and reads cannot tell classes
        # apart (3-class glyph sequences: later presentations stayed at chance level for 3000 batches; with it,
        # 0.74-0.78 after 1000 batches).
        self.feature_norm = nn.BatchNorm1d(dim)
        self.controller = nn.LSTMCell(dim * (2 if previous_image else 1) + ways + read_heads * slot_size, hidden_size)
        # per head: a read key (W), the vector written (W), the key strength (1) and the write gate (1)
        self.interface = nn.Linear(hidden_size, read_heads * (2 * slot_size + 2))
        with torch.no_grad():  # strength = softplus(bias) + 1 starts at key_strength
            bias = torch.tensor(key_strength - 1.0)
            self.interface.bias.view(read_heads, -1)[:, -2] = bias + torch.log(-torch.expm1(-bias))
        self.output = nn.Linear(hidden_size + read_heads * slot_size, ways)

    # -- the recurrent core --------------------------------------------------------------------------
    def initial_state(self, batch: int, features: torch.Tensor) -> MemoryState:
        like = {"device": features.device, "dtype": features.dtype}
        zeros = torch.zeros(batch, self.controller.hidden_size, **like)
        return MemoryState(
            hidden=zeros, cell=zeros.clone(),
            memory=torch.full((batch, self.slots, self.slot_size), 1e-6, **like),
            usage=torch.zeros(batch, self.slots, **like),
            read_weights=torch.eye(self.heads, self.slots, **like).expand(batch, -1, -1),  # head i: slot i
            reads=torch.zeros(batch, self.heads * self.slot_size, **like),
            previous=features.new_zeros(batch, features.shape[-1]),
        )

    def step(self, state: MemoryState, features: torch.Tensor, previous_labels: torch.Tensor
             ) -> tuple[torch.Tensor, MemoryState]:
        """One step for ``B`` sequences: features ``[B, D]``, one-hot previous labels ``[B, ways]`` -> logits."""
        inputs = [features, state.previous] if self.previous_image else [features]
        hidden, cell = self.controller(torch.cat([*inputs, previous_labels, state.reads], 1),
                                       (state.hidden, state.cell))
        interface = self.interface(hidden).view(-1, self.heads, 2 * self.slot_size + 2)
        keys, written = torch.tanh(interface[..., : 2 * self.slot_size]).split(self.slot_size, -1)
        strength, gate = F.softplus(interface[..., -2]) + 1, interface[..., -1]
        memory, write_weights = lru_write(state.memory, state.usage, state.read_weights, gate, written)
        read_weights = content_read(keys, memory, strength)
        reads = (read_weights @ memory).flatten(1)
        usage = self.usage_decay * state.usage + read_weights.sum(1) + write_weights.sum(1)
        logits = self.output(torch.cat([hidden, reads], 1))
        return logits, MemoryState(hidden, cell, memory, usage, read_weights, reads, features)

    def run_sequence(self, features: torch.Tensor, labels: torch.Tensor, state: MemoryState | None = None
                     ) -> tuple[torch.Tensor, MemoryState]:
        """Logits ``[B, T, ways]`` of ``B`` sequences of features ``[B, T, D]`` with labels ``[B, T]``.

        Step ``t`` is given the label of step ``t-1`` (none at the first step of a fresh state).
        """
        batch, length = labels.shape
        self._check_ways(int(labels.max()) + 1)
        # The recurrence runs in fp32: cosine addressing and the LSTM state lose too much in bf16.
        with torch.autocast(features.device.type, enabled=False):
            features = full_precision(features)
            state = state or self.initial_state(batch, features)
            one_hot = F.one_hot(labels, self.ways).to(features.dtype)
            previous = torch.cat([torch.zeros_like(one_hot[:, :1]), one_hot[:, :-1]], 1)
            logits = []
            for t in range(length):
                step_logits, state = self.step(state, features[:, t], previous[:, t])
                logits.append(step_logits)
        return torch.stack(logits, 1), state

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Controller input features ``[B, D]`` of images ``[B, C, H, W]``."""
        return self.feature_norm(full_precision(self.backbone(images)))

    def sequence_logits(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, ways]`` of image sequences ``[B, T, C, H, W]`` with labels ``[B, T]`` (label-delayed)."""
        features = self.encode(images.flatten(0, 1)).unflatten(0, images.shape[:2])
        return self.run_sequence(features, labels)[0]

    def _check_ways(self, ways: int) -> None:
        if ways > self.ways:
            raise ValueError(
                f"this task has {ways} classes but the MANN was built for at most {self.ways}; build it with "
                f"ways={ways} or more (method option), or use tasks of at most {self.ways} ways"
            )

    # -- the common interface ------------------------------------------------------------------------
    def forward(
        self, support_images: torch.Tensor, support_labels: torch.Tensor, query_images: torch.Tensor
    ) -> torch.Tensor:
        ways = int(support_labels.max()) + 1
        # A fixed shuffle, so that a prediction does not depend on the global random state.
        order = torch.randperm(len(support_labels), generator=torch.Generator().manual_seed(0))
        order = order.to(support_labels.device)
        features = self.encode(torch.cat([support_images[order], query_images]))
        n_support = len(order)
        labels = support_labels[order]
        _, state = self.run_sequence(features[None, :n_support], labels[None])
        queries = len(query_images)
        with torch.autocast(features.device.type, enabled=False):
            last_label = F.one_hot(labels[-1], self.ways).to(features.dtype).expand(queries, -1)
            logits, _ = self.step(state.expand(queries), full_precision(features[n_support:]), last_label)
        return logits[:, :ways]

    def loss(self, task: Task) -> tuple[torch.Tensor, torch.Tensor]:
        loss, logits = self.batch_loss([task])
        return loss, logits[0]

    def batch_loss(self, tasks: list[Task]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Cross-entropy on every step of each task's shuffled sequence; returns each task's query logits."""
        if not same_shapes(tasks):
            return super().batch_loss(tasks)
        orders, images, labels = [], [], []
        for task in tasks:
            n = len(task.support_labels) + len(task.query_labels)
            generator = torch.Generator().manual_seed(task.seed) if task.seed is not None else None
            order = torch.randperm(n, generator=generator).to(task.support_labels.device)
            orders.append(order)
            images.append(torch.cat([task.support_images, task.query_images])[order])
            labels.append(torch.cat([task.support_labels, task.query_labels])[order])
        labels_batch = torch.stack(labels)
        logits = self.sequence_logits(torch.stack(images), labels_batch)
        ways = int(labels_batch.max()) + 1
        logits = logits[..., :ways]
        loss = F.cross_entropy(logits.flatten(0, 1), labels_batch.flatten())
        query_logits = []
        for task, order, task_logits in zip(tasks, orders, logits, strict=True):
            position = torch.empty_like(order)
            position[order] = torch.arange(len(order), device=order.device)
            query_logits.append(task_logits[position[len(task.support_labels):]])
        return loss, query_logits

