"""Meta-training: the episodic loop and checkpoints."""

from fewshot.training.checkpoint import CheckpointError, ModelSpec, load_model
from fewshot.training.trainer import TrainConfig, Trainer, TrainingError

__all__ = ["CheckpointError", "ModelSpec", "TrainConfig", "Trainer", "TrainingError", "load_model"]
