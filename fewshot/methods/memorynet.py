"""A memory meta-network: write the support set into a key-value memory, read it with each query, predict.

- **Write**: each support embedding (or each class prototype, ``write="prototypes"``) becomes a memory slot with
  key = the embedding projected to ``key_size`` and L2-normalised, value = its one-hot label.
- **Read**: a query attends over the keys (content addressing): ``softmax(cosine(query, key) / temperature)``;
  the read value is the attention-weighted sum of the values, a distribution over the classes in memory.
- **Predict**: a small network, shared by all classes, scores each class from two numbers: the log of the
  read value for that class and the cosine between the query and the class's mean key. The first is what the
  memory recalls, the second how close the query itself lies to the class.

Because keys depend on one image only, this is a :class:`MetricMethod` (cached-feature evaluation) and a
written :class:`Memory` can be saved and extended with new classes from a few images without retraining.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.backbones import measure_feature_dim
from fewshot.methods.base import MetricMethod
from fewshot.utils import eval_mode, full_precision

WRITE_MODES = ("examples", "prototypes")


@dataclass
class Memory:
    """A written memory: ``keys [S, key_size]`` with the class index of each slot, ``labels [S]``.

    ``model`` fingerprints the network that wrote it: keys from another network mean nothing to this one.
    """

    keys: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    capacity: int
    model: str = ""
    spec: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def save(self, path: str | Path) -> None:
        from fewshot.utils import atomic_torch_save

        atomic_torch_save({"format": "fewshot-memory/1", **self.__dict__}, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> Memory:
        from fewshot.data.base import DataError

        path = Path(path)
        if not path.is_file():
            raise DataError(f"memory file {path} does not exist; write one with 'fewshot memory write'")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unreadable file gets the same advice
            raise DataError(f"cannot read memory file {path} ({type(err).__name__}); write it again") from None
        if not isinstance(data, dict) or data.get("format") != "fewshot-memory/1":
            raise DataError(f"{path} is not a fewshot memory file")
        return cls(**{k: v for k, v in data.items() if k != "format"})


class MemoryNet(MetricMethod):
    """Key-value memory of the support set, read by attention, with a learned class-wise predictor.

    Args:
        backbone: feature extractor ``[B, C, H, W] -> [B, D]``.
        key_size: width of keys (a learned projection of the features); ``None`` keeps ``D``.
        memory_size: the most slots a memory holds; writing more raises an error naming both numbers.
        temperature: of the read attention (smaller: sharper reads); learned unless ``learn_temperature=False``.
        write: ``"examples"`` (one slot per support image) or ``"prototypes"`` (one slot per class).
        predictor_hidden: hidden units of the class-wise predictor.
        image_size: to measure ``D`` with a dummy forward.
    """

    batched_classify = True

    def __init__(
        self,
        backbone: nn.Module,
        key_size: int | None = 64,
        memory_size: int = 1024,
        temperature: float = 0.1,
        learn_temperature: bool = True,
        write: str = "examples",
        predictor_hidden: int = 16,
        image_size: int = 28,
    ) -> None:
        super().__init__(backbone)
        if write not in WRITE_MODES:
            raise ValueError(f"write must be one of {', '.join(WRITE_MODES)} (got {write!r})")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive (got {temperature})")
        if not isinstance(memory_size, int) or memory_size < 1:
            raise ValueError(f"memory_size must be a positive integer (got {memory_size!r})")
        self.project = nn.Linear(measure_feature_dim(backbone, image_size), key_size) if key_size else nn.Identity()
        log_t = torch.tensor(math.log(temperature))
        self.log_temperature = nn.Parameter(log_t) if learn_temperature else nn.Buffer(log_t)
        self.memory_size, self.write_mode = memory_size, write
        self.predictor = nn.Sequential(nn.Linear(2, predictor_hidden), nn.ReLU(), nn.Linear(predictor_hidden, 1))
        self.skip = nn.Linear(2, 1, bias=False)  # a linear path, starting as "read value + query similarity"
        with torch.no_grad():
            self.skip.weight.fill_(1.0)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    unit_features = True

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Keys ``[B, key_size]`` (unit length) of images ``[B, C, H, W]``."""
        return F.normalize(self.project(full_precision(self.backbone(images))), dim=-1)

    # -- write / read / predict on tensors; leading dimensions are episodes --------------------------------
    def write(self, keys: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory ``(keys [..., S, key], values [..., S, N])`` from support keys ``[..., n, key]``, labels ``[..., n]``.
        """
        values = F.one_hot(labels, num_classes).to(keys.dtype)
        if self.write_mode == "prototypes":
            means = values.transpose(-1, -2) @ keys
            keys = F.normalize(means, dim=-1)
            values = torch.eye(num_classes, dtype=keys.dtype, device=keys.device).expand(*means.shape[:-1], num_classes)
        if keys.shape[-2] > self.memory_size:
            raise ValueError(
                f"the memory holds {self.memory_size} slots but {keys.shape[-2]} items are to be written; build the "
                f"method with memory_size={keys.shape[-2]} or more, or write='prototypes' (one slot per class)"
            )
        return keys, values

    def read(self, memory_keys: torch.Tensor, memory_values: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Read values ``[..., M, N]`` (a distribution over the classes) for query keys ``[..., M, key]``."""
        attention = torch.softmax(queries @ memory_keys.transpose(-1, -2) / self.temperature, dim=-1)
        return attention @ memory_values

    def predict(self, read_values: torch.Tensor, memory_keys: torch.Tensor, memory_values: torch.Tensor,
                queries: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., M, N]`` from the read values and each query's cosine to every class's mean key."""
        class_keys = F.normalize(memory_values.transpose(-1, -2) @ memory_keys, dim=-1)
        similarity = queries @ class_keys.transpose(-1, -2)
        evidence = torch.stack([read_values.clamp_min(1e-6).log(), similarity / self.temperature], -1)
        return (self.predictor(evidence) + self.skip(evidence)).squeeze(-1)

    def classify(
        self, support_features: torch.Tensor, support_labels: torch.Tensor, query_features: torch.Tensor
    ) -> torch.Tensor:
        num_classes = int(support_labels.max()) + 1
        with torch.autocast(support_features.device.type, enabled=False):
            keys, values = self.write(full_precision(support_features), support_labels, num_classes)
            queries = full_precision(query_features)
            return self.predict(self.read(keys, values, queries), keys, values, queries)

    # -- a memory that outlives the episode -------------------------------------------------------------
    def fingerprint(self) -> str:
        """Hash of the weights: a saved memory is only read by the network that wrote it."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().float().numpy().tobytes())
        return digest.hexdigest()[:16]

    @torch.no_grad()
    def new_memory(self) -> Memory:
        width = self.project.out_features if isinstance(self.project, nn.Linear) else 0
        return Memory(torch.zeros(0, width), torch.zeros(0, dtype=torch.long), [], self.memory_size,
                      self.fingerprint())

    @torch.no_grad()
    def add_class(self, memory: Memory, name: str, images: torch.Tensor) -> Memory:
        """``memory`` with class ``name`` written from its images ``[k, C, H, W]`` (no training)."""
        self._check_memory(memory)
        if name in memory.class_names:
            raise ValueError(f"class '{name}' is already in the memory; choose another name")
        if len(images) == 0:
            raise ValueError(f"class '{name}' needs at least one image")
        with eval_mode(self):
            keys = self.features(images)
        if self.write_mode == "prototypes":
            keys = F.normalize(keys.mean(0, keepdim=True), dim=-1)
        if len(memory) + len(keys) > memory.capacity:
            raise ValueError(
                f"the memory holds {memory.capacity} slots and {len(memory)} are used; class '{name}' needs "
                f"{len(keys)} more; write fewer images per class, or train with a larger memory_size"
            )
        label = torch.full((len(keys),), len(memory.class_names), dtype=torch.long)
        if len(memory) == 0:
            memory.keys = memory.keys.new_zeros(0, keys.shape[1])
        return Memory(torch.cat([memory.keys, keys.cpu()]), torch.cat([memory.labels, label]),
                      [*memory.class_names, name], memory.capacity, memory.model, memory.spec)

    @torch.no_grad()
    def predict_memory(self, memory: Memory, images: torch.Tensor) -> torch.Tensor:
        """Logits ``[M, classes in memory]`` of query images ``[M, C, H, W]`` read against a saved memory."""
        self._check_memory(memory)
        if len(memory.class_names) < 2:
            raise ValueError(f"the memory holds {len(memory.class_names)} class; add at least two before predicting")
        with eval_mode(self):
            queries = self.features(images)
            keys = memory.keys.to(queries.device)
            values = F.one_hot(memory.labels.to(queries.device), len(memory.class_names)).float()
            return self.predict(self.read(keys, values, queries), keys, values, queries)

    def _check_memory(self, memory: Memory) -> None:
        if memory.model and memory.model != self.fingerprint():
            raise ValueError(
                "this memory was written by another network (its fingerprint differs from the checkpoint's); "
                "use the checkpoint that wrote it, or write the memory again with this one"
            )
