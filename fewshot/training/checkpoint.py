"""What a checkpoint holds, how to rebuild its model, and errors that say which run does not fit."""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fewshot.backbones import make_backbone
from fewshot.methods import FewShotMethod, make_method
from fewshot.utils import atomic_torch_save

FORMAT = "fewshot-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, or does not fit the model it is loaded into."""


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model and to preprocess images for it.

    Attributes:
        method / backbone: registry names; method_options / backbone_options: their keyword arguments.
        image_shape: ``(C, H, W)`` the model was trained on.
        invert: whether images were inverted (``1 - pixel``) on loading, as Omniglot is (ink = 1); a user's
            black-on-white images are inverted the same way before prediction.
        test_views / test_augment: test-time augmentation (``FewShotMethod.set_test_views``; metric methods and
            head-only optimization methods): features averaged over ``test_views`` seeded transforms drawn from
            ``test_augment`` (None: the method's default transforms).
        temperature: probabilities are ``softmax(logits / temperature)``; 1 unless fitted by ``fewshot calibrate``
            (:func:`fewshot.evaluation.calibration.fit_temperature`). It never changes a prediction.
    """

    method: str = "protonet"
    backbone: str = "conv4"
    method_options: dict[str, Any] = field(default_factory=dict)
    backbone_options: dict[str, Any] = field(default_factory=dict)
    image_shape: tuple[int, int, int] = (1, 28, 28)
    invert: bool = False
    test_views: int = 1
    test_augment: str | None = None  # None: the method's default
    temperature: float = 1.0

    def build(self) -> FewShotMethod:
        backbone = make_backbone(self.backbone, in_channels=self.image_shape[0], **self.backbone_options)
        model = make_method(self.method, backbone, **self.method_options)
        if self.test_views > 1:
            model.set_test_views(self.test_views, self.test_augment)
        return model

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "image_shape": list(self.image_shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(**{**data, "image_shape": tuple(data["image_shape"])})


def save_checkpoint(path: Path, model: FewShotMethod, spec: ModelSpec, **extra: Any) -> None:
    """Write ``model``'s weights, its spec and ``extra`` state (optimizer, counters) atomically."""
    atomic_torch_save({"format": FORMAT, "spec": spec.to_dict(), "model": model.state_dict(), **extra}, path)


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint meant by ``path``: a ``.pt`` file, or a run folder (its ``best.pt``, else ``last.pt``)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"run folder {path} holds no best.pt or last.pt; train into it first")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run folder or a .pt file")
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    file = checkpoint_file(path)
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)  # tensors and plain data; no code
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):
            raise CheckpointError(f"cannot read checkpoint {file}: the file is damaged or not a PyTorch file") from None
        raise CheckpointError(
            f"{file} holds Python objects besides tensors and plain data, which fewshot does not unpickle (they could "
            "run code), so fewshot did not write it; use a checkpoint saved by fewshot"
        ) from None
    except Exception as err:  # torch raises many types for a damaged file
        raise CheckpointError(f"cannot read checkpoint {file}: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{file} is not a fewshot checkpoint")
    return data


def load_state(model: FewShotMethod, spec: ModelSpec, checkpoint: dict[str, Any], source: str) -> None:
    """Load ``checkpoint``'s weights into ``model`` (built from ``spec``), refusing a checkpoint of another model."""
    saved = ModelSpec.from_dict(checkpoint["spec"])
    for attribute in ("method", "backbone", "image_shape"):
        if getattr(saved, attribute) != getattr(spec, attribute):
            raise CheckpointError(
                f"checkpoint {source} was trained with {attribute} {getattr(saved, attribute)}, but this model "
                f"uses {getattr(spec, attribute)}; use the same --{attribute.replace('_', '-')} or another run"
            )
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {source} does not fit this model ({first})") from None


def load_model(
    path: str | Path, device: str | torch.device = "cpu", test_views: int | None = None
) -> tuple[FewShotMethod, ModelSpec]:
    """Rebuild the model saved at ``path`` (run folder or ``.pt``) in eval mode.

    ``test_views`` overrides the number of test-time views saved with the model (1 turns them off).
    """
    checkpoint = read_checkpoint(path)
    spec = ModelSpec.from_dict(checkpoint["spec"])
    if test_views is not None:
        spec = replace(spec, test_views=test_views)
    model = spec.build()
    load_state(model, spec, checkpoint, str(path))
    return model.to(device).eval(), spec
