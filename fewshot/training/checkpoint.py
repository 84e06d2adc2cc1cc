"""What a checkpoint holds, how to rebuild its model, and errors that say which run does not fit."""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fewshot.backbones import Ensemble, make_backbone
from fewshot.methods import FewShotMethod, MetricMethod, make_method
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
        transductive_steps / transductive_temperature: refinements of a task's classes by its unlabelled queries
            at test time, and the temperature of the probabilities that weigh them
            (``FewShotMethod.set_transductive_steps``; 0 steps and no balance: each query is classified on its own).
        transductive_balance: Sinkhorn iterations that give every class the same share of the queries' weights
            in each refinement step and in the prediction (0: none), with or without steps where the method can
            (``FewShotMethod.balanced_prediction``); it assumes a task's queries are spread evenly over its classes.
        temperature: probabilities are ``softmax(logits / temperature)``; 1 unless fitted by ``fewshot calibrate``
            (:func:`fewshot.evaluation.calibration.fit_temperature`). It never changes a prediction.
        ensemble: how many backbones of this spec, trained apart, the model holds side by side
            (:class:`fewshot.backbones.Ensemble`, made by :func:`combine_checkpoints`); 1: one backbone.
    """

    method: str = "protonet"
    backbone: str = "conv4"
    method_options: dict[str, Any] = field(default_factory=dict)
    backbone_options: dict[str, Any] = field(default_factory=dict)
    image_shape: tuple[int, int, int] = (1, 28, 28)
    invert: bool = False
    test_views: int = 1
    test_augment: str | None = None  # None: the method's default
    transductive_steps: int = 0
    transductive_temperature: float = 1.0
    transductive_balance: int = 0
    temperature: float = 1.0
    ensemble: int = 1

    def build(self) -> FewShotMethod:
        members = [make_backbone(self.backbone, in_channels=self.image_shape[0], **self.backbone_options)
                   for _ in range(self.ensemble)]
        backbone = members[0] if self.ensemble == 1 else Ensemble(members)
        model = make_method(self.method, backbone, **self.method_options)
        if self.test_views > 1:
            model.set_test_views(self.test_views, self.test_augment)
        if self.transductive:
            model.set_transductive_steps(self.transductive_steps, self.transductive_temperature,
                                         self.transductive_balance)
        return model

    @property
    def transductive(self) -> bool:
        """Whether a query's prediction depends on the other queries of its task (refinement steps or balance)."""
        return bool(self.transductive_steps or self.transductive_balance)

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
    for attribute in ("method", "backbone", "image_shape", "ensemble"):
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


def load_initial_weights(model: FewShotMethod, spec: ModelSpec, path: str | Path) -> str:
    """Start ``model`` (built from ``spec``) from the weights saved at ``path``, for fine-tuning: the backbone always,
    and the method's own parameters (a head, a relation module) too when the checkpoint is of the same method and
    they have the same shapes; the rest keep their fresh initialisation. Returns what was loaded, in words.

    Raises :class:`CheckpointError` when the backbones differ (name, options or input channels): their weights
    would not fit, or would fit a different network.
    """
    checkpoint = read_checkpoint(path)
    saved = ModelSpec.from_dict(checkpoint["spec"])
    for attribute in ("backbone", "backbone_options"):
        if getattr(saved, attribute) != getattr(spec, attribute):
            flag = "--" + attribute.replace("_", "-")
            raise CheckpointError(
                f"--init {path}: its backbone was trained with {attribute} {getattr(saved, attribute)!r}, this run's "
                f"uses {getattr(spec, attribute)!r}; give this run the same {flag}, or start without --init"
            )
    if saved.image_shape[0] != spec.image_shape[0]:
        raise CheckpointError(
            f"--init {path}: its images had {saved.image_shape[0]} channel(s), this dataset's have "
            f"{spec.image_shape[0]}; the first convolution cannot take them over (start without --init)"
        )
    state = checkpoint["model"]
    own = model.state_dict()
    # Buffers may differ: batch norm with task statistics (the MAML family) keeps no running statistics.
    backbone = {k: v for k, v in state.items() if k.startswith("backbone.") and k in own}
    missing = sorted(k for k, _ in model.named_parameters() if k.startswith("backbone.") and k not in backbone)
    if missing:
        raise CheckpointError(f"--init {path}: its backbone lacks {missing[0]} (and {len(missing) - 1} more)")
    rest = [k for k in own if not k.startswith("backbone.")]
    same_method = saved.method == spec.method
    taken = [k for k in rest if same_method and k in state and state[k].shape == own[k].shape]
    try:
        model.load_state_dict({**own, **backbone, **{k: state[k] for k in taken}})
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"--init {path}: its backbone does not fit this model ({first})") from None
    fresh = len(rest) - len(taken)
    if not rest or not fresh:
        return f"every weight of {path}"
    return f"the backbone of {path} ({saved.method}); {fresh} of the {spec.method}'s other tensors start fresh"


def load_model(
    path: str | Path, device: str | torch.device = "cpu", test_views: int | None = None,
    transductive_steps: int | None = None, transductive_temperature: float | None = None,
    transductive_balance: int | None = None, channels_last: bool = True,
) -> tuple[FewShotMethod, ModelSpec]:
    """Rebuild the model saved at ``path`` (run folder or ``.pt``) in eval mode.

    ``channels_last``: its convolution weights in channels-last memory, as the trainer keeps them, so that
    convolutions and pooling return channels-last maps: the same numbers up to rounding, and on a CPU evaluation
    1.1 to 1.9 times as fast (PyTorch's max-pooling of channels-first maps is far slower; docs/results.md,
    "Session 39").

    ``test_views`` overrides the number of test-time views saved with the model (1 turns them off);
    ``transductive_steps``, ``transductive_temperature`` and ``transductive_balance`` its transductive
    refinements (None keeps what was saved); 0 steps without a balance given turns transduction off (no balance
    either: each query is classified on its own).
    """
    checkpoint = read_checkpoint(path)
    spec = ModelSpec.from_dict(checkpoint["spec"])
    if test_views is not None:
        spec = replace(spec, test_views=test_views)
    if transductive_steps is not None:
        spec = replace(spec, transductive_steps=transductive_steps)
    if transductive_temperature is not None:
        spec = replace(spec, transductive_temperature=transductive_temperature)
    if transductive_balance is None and transductive_steps == 0:
        transductive_balance = 0
    if transductive_balance is not None:
        spec = replace(spec, transductive_balance=transductive_balance)
    model = spec.build()
    load_state(model, spec, checkpoint, str(path))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return model.to(device, memory_format=memory_format).eval(), spec


def check_ensemble_member(spec: ModelSpec, source: str) -> None:
    """Raise :class:`CheckpointError` unless models of ``spec`` can be ensembled: a metric method (it compares
    image features) with every weight in its backbone (there is nothing else to average)."""
    model = spec.build()
    if not isinstance(model, MetricMethod):
        raise CheckpointError(f"{source}: a {spec.method} model does not compare image features, so an ensemble "
                              "of its backbones would mean nothing; ensembles take metric methods such as protonet")
    own = next((k for k in model.state_dict() if not k.startswith("backbone.")), None)
    if own is not None:
        raise CheckpointError(f"{source}: the {spec.method} model has weights outside its backbone ({own}), which "
                              "an ensemble of backbones cannot average; ensembles take metric methods whose weights "
                              "are all in the backbone, such as protonet")


def combine_checkpoints(paths: list[str | Path], out: str | Path) -> ModelSpec:
    """Write to ``out`` (a run folder; its ``best.pt``) one model whose backbone is the backbones of the runs at
    ``paths`` side by side (:class:`fewshot.backbones.Ensemble`): for a ProtoNet, the mean of their logits.

    The runs must hold the same method, backbone and test settings, with every weight in the backbone (a metric
    method without parameters of its own, such as ProtoNet); a calibrated temperature is dropped (calibrate the
    ensemble again). Returns the ensemble's spec. Raises :class:`CheckpointError` when the runs do not fit together.
    """
    if len(paths) < 2:
        raise CheckpointError(f"an ensemble needs at least 2 checkpoints (got {len(paths)})")
    checkpoints = [read_checkpoint(path) for path in paths]
    specs = [ModelSpec.from_dict(checkpoint["spec"]) for checkpoint in checkpoints]
    first = replace(specs[0], temperature=1.0)
    for path, spec in zip(paths, specs, strict=True):
        if spec.ensemble != 1:
            raise CheckpointError(f"{path} is already an ensemble; combine the runs it was made of instead")
        differences = [k for k, v in asdict(replace(spec, temperature=1.0)).items() if getattr(first, k) != v]
        if differences:
            k = differences[0]
            raise CheckpointError(f"{path} has {k} {getattr(spec, k)!r} but {paths[0]} has {getattr(first, k)!r}; "
                                  "an ensemble combines runs of one method, backbone and test settings")
    check_ensemble_member(first, str(paths[0]))
    spec = replace(first, ensemble=len(paths))
    state = {f"backbone.members.{i}.{k.removeprefix('backbone.')}": v
             for i, checkpoint in enumerate(checkpoints) for k, v in checkpoint["model"].items()}
    model = spec.build()
    load_state(model, spec, {"spec": spec.to_dict(), "model": state}, ", ".join(map(str, paths)))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "best.pt", model, spec, members=[str(checkpoint_file(path)) for path in paths])
    return spec
