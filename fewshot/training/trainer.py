"""Episodic meta-training with validation-only model selection, budgets, atomic checkpoints and resume.

A run folder holds ``config.json``, ``metrics.csv``, ``best.pt`` (best validation accuracy, with the temperature
of its probabilities fitted on the validation tasks, see ``calibration.json``), ``last.pt`` (everything needed to
resume) and ``curves.png``. Episode ``i`` (its task and its augmentation) depends only on ``(seed, i)``, so a
resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from fewshot.data import FewShotDataset, Task, TaskSampler, build_task
from fewshot.data.augment import AugmentConfig, augment_task
from fewshot.evaluation.evaluate import evaluate, fit_model_temperature
from fewshot.methods import MetricMethod
from fewshot.training.checkpoint import (
    ModelSpec,
    load_initial_weights,
    load_state,
    read_checkpoint,
    save_checkpoint,
)
from fewshot.utils import atomic_torch_save, atomic_write_text, autocast, resolve_device, seed_everything

METRIC_FIELDS = ["episode", "elapsed_s", "lr", "train_loss", "train_accuracy", "val_accuracy", "val_ci95"]


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, a run folder in the way); the message says what to do."""


@dataclass
class TrainConfig:
    """Settings of one training run (all of them are saved in ``config.json``)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    ways: int = 60
    shots: int = 1
    queries: int = 5
    meta_batch: int = 1  # tasks per optimizer step; an "episode" of the budget is one step
    within_group: bool = False  # draw each training task's classes from one group (Omniglot: one alphabet)
    episodes: int = 5000
    time_budget: float | None = None  # seconds of wall time, validation included
    lr: float = 1e-3
    lr_schedule: str = "cosine"  # cosine | step | constant, over the episode or time budget
    weight_decay: float = 0.0
    grad_clip: float | None = None
    augment: str = "none"  # AugmentConfig.from_string spec
    val_every: int = 500
    val_episodes: int = 300
    val_ways: int = 20
    val_shots: int = 1
    val_queries: int = 5
    val_within_group: bool = True
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = True
    init: str | None = None  # checkpoint to start from (fine-tuning; load_initial_weights), else random weights
    data: dict[str, Any] = field(default_factory=dict)  # how the caller built the datasets, for --resume

    def __post_init__(self) -> None:
        positive = ("ways", "shots", "queries", "meta_batch", "episodes", "val_every", "val_episodes", "val_ways",
                    "val_shots", "val_queries")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive whole number (got {value!r})")
        for name in ("time_budget", "grad_clip", "lr"):
            value = getattr(self, name)
            if value is not None and not value > 0:  # also refuses NaN
                raise ValueError(f"--{name.replace('_', '-')} must be positive (got {value!r})")
        if not self.weight_decay >= 0:
            raise ValueError(f"--weight-decay must be 0 or more (got {self.weight_decay!r})")
        if self.lr_schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"unknown lr schedule {self.lr_schedule!r}; choose cosine, step or constant")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return cls(**{**data, "model": ModelSpec.from_dict(data["model"])})


def learning_rate(config: TrainConfig, progress: float) -> float:
    """The learning rate at ``progress`` in [0, 1] of the budget."""
    progress = min(max(progress, 0.0), 1.0)
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule == "step":  # halve at each quarter
        return config.lr * 0.5 ** min(int(progress * 4), 3)
    if config.lr_schedule == "cosine":
        return config.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown lr schedule {config.lr_schedule!r}; choose cosine, step or constant")


@dataclass
class TrainResult:
    run_dir: Path
    episodes: int
    elapsed_s: float
    best_val_accuracy: float | None
    rows: list[dict]


class Trainer:
    """Meta-trains ``config.model`` on tasks from ``train_set``, selecting on ``val_set`` (``None``: final run)."""

    def __init__(
        self, config: TrainConfig, train_set: FewShotDataset, val_set: FewShotDataset | None, run_dir: str | Path
    ) -> None:
        self.config, self.train_set, self.val_set = config, train_set, val_set
        self.run_dir = Path(run_dir)
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        self.model = config.model.build().to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # fused: one kernel for all parameters instead of ~10 small ops per tensor, which dominate small nets.
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                          fused=True)
        self.augment = AugmentConfig.from_string(config.augment)
        self.sampler = TaskSampler(train_set, config.ways, config.shots, config.queries, config.episodes, config.seed,
                                   within_group=config.within_group)
        self.val_specs = None
        if val_set is not None:
            self.val_specs = TaskSampler(
                val_set, config.val_ways, config.val_shots, config.val_queries, config.val_episodes,
                seed=config.seed + 1, within_group=config.val_within_group,
            ).specs()
        self.episode = 0
        self.elapsed = 0.0
        self.best_val: float | None = None
        self.rows: list[dict] = []
        self.running = {"loss": 0.0, "correct": 0.0, "total": 0.0, "steps": 0}
        self._updating = False  # inside an optimizer update (see step)

    # -- state -----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "episode": self.episode,
            "elapsed": self.elapsed,
            "best_val": self.best_val,
            "rows": self.rows,
            "running": self.running,
            "config": self.config.to_dict(),
        }

    def save_last(self) -> None:
        save_checkpoint(self.run_dir / "last.pt", self.model, self.config.model, **self._state())

    def resume(self) -> None:
        """Continue from ``run_dir/last.pt``, refusing a checkpoint of another model."""
        source = self.run_dir / "last.pt"
        if not source.is_file():
            raise TrainingError(f"cannot resume: {source} does not exist; start the run without --resume")
        checkpoint = read_checkpoint(source)
        load_state(self.model, self.config.model, checkpoint, str(self.run_dir))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.episode, self.elapsed = checkpoint["episode"], checkpoint["elapsed"]
        self.best_val, self.rows, self.running = checkpoint["best_val"], checkpoint["rows"], checkpoint["running"]

    # -- one episode -----------------------------------------------------------------------------
    def task(self, index: int) -> Task:
        """Training task ``index``: sampled, augmented (both seeded by ``(seed, index)``), on the device."""
        task = build_task(self.train_set, self.sampler.spec(index))
        task.seed = int(np.random.SeedSequence((self.config.seed, index)).generate_state(1)[0])
        if self.augment.enabled:
            task = augment_task(task, self.augment, torch.Generator().manual_seed(task.seed))
        task = task.to(self.device)
        if self.config.channels_last:
            task.support_images = task.support_images.contiguous(memory_format=torch.channels_last)
            task.query_images = task.query_images.contiguous(memory_format=torch.channels_last)
        return task

    def step(self, episode: int, lr: float) -> None:
        """One optimizer step on the ``meta_batch`` tasks of ``episode``; then :attr:`episode` is ``episode + 1``."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        size = self.config.meta_batch
        tasks = [self.task(episode * size + j) for j in range(size)]
        self.model.train()
        with autocast(self.device, self.config.precision):
            loss, logits = self.model.batch_loss(tasks)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"the loss became {loss.item()} at episode {episode} (lr {lr:.2g}); training stopped and "
                f"{self.run_dir / 'last.pt'} keeps the last good state; start a new run with a lower --lr or "
                "with --grad-clip, or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        # Between the update and the count the state is half-done: an interrupt there must not be saved.
        self._updating = True
        self.optimizer.step()
        self.episode = episode + 1
        self._updating = False
        self.running["loss"] += float(loss.detach())
        for task, task_logits in zip(tasks, logits, strict=True):
            self.running["correct"] += float((task_logits.argmax(-1) == task.query_labels).sum())
            self.running["total"] += task.query_labels.numel()
        self.running["steps"] += 1

    def validate(self) -> tuple[float, float] | tuple[None, None]:
        if self.val_set is None or self.val_specs is None:
            return None, None
        # A metric method embeds the validation images once, so its test views cost little; any other method
        # (ANIL, Proto-MAML) would run its backbone once per view of every task, several times the training time
        # between two checks: it is validated with one view and takes its views after training.
        # Checkpoints are chosen on inductive accuracy: transductive steps multiply the cost of classifying a task
        # by steps + 1, and for the relation network they took most of a 5-minute budget (750 training episodes
        # instead of 3250). The fold checkpoints behind the transductive figures were chosen inductively too.
        views, steps, balance = self.model.test_views, self.model.transductive_steps, self.model.transductive_balance
        if not isinstance(self.model, MetricMethod):
            self.model.test_views = 1
        self.model.transductive_steps = self.model.transductive_balance = 0
        try:
            # Always full precision: model selection should not depend on the speed options of training.
            result = evaluate(self.model, self.val_set, 0, 0, specs=self.val_specs, device=self.device)
        finally:
            self.model.test_views, self.model.transductive_steps, self.model.transductive_balance = (
                views, steps, balance)
        return result.accuracy, result.ci95

    def log(self, lr: float) -> dict:
        """Validate, record a metrics row, keep the best checkpoint and save ``last.pt``."""
        val_accuracy, val_ci = self.validate()
        steps = max(self.running["steps"], 1)
        row = {
            "episode": self.episode,
            "elapsed_s": round(self.elapsed, 1),
            "lr": lr,
            "train_loss": self.running["loss"] / steps,
            "train_accuracy": self.running["correct"] / max(self.running["total"], 1),
            "val_accuracy": val_accuracy,
            "val_ci95": val_ci,
        }
        # best.pt before the row, the row before last.pt: a run interrupted in between redoes this check on resume.
        if val_accuracy is not None and (self.best_val is None or val_accuracy > self.best_val):
            save_checkpoint(self.run_dir / "best.pt", self.model, self.config.model, episode=self.episode,
                            val_accuracy=val_accuracy)
            self.best_val = val_accuracy
        self.rows.append(row)
        self.running = {"loss": 0.0, "correct": 0.0, "total": 0.0, "steps": 0}
        self.save_last()
        self._write_metrics()
        return row

    def _write_metrics(self) -> None:
        lines = [",".join(METRIC_FIELDS)]
        for row in self.rows:
            lines.append(",".join("" if row[k] is None else f"{row[k]:.6g}" for k in METRIC_FIELDS))
        atomic_write_text(self.run_dir / "metrics.csv", "\n".join(lines) + "\n")

    # -- the loop --------------------------------------------------------------------------------
    def progress(self) -> float:
        by_episodes = self.episode / self.config.episodes
        by_time = self.elapsed / self.config.time_budget if self.config.time_budget else 0.0
        return max(by_episodes, by_time)

    def fit(self, show_progress: bool = True, stop_after: int | None = None) -> TrainResult:
        """Train until the episode or time budget is spent (``stop_after``: stop at that episode, as a kill would)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.json", json.dumps(self.config.to_dict(), indent=2))
        # The bar counts whichever budget ends the run: episodes, or seconds of the time budget.
        by_time = bool(self.config.time_budget) and self.config.time_budget * 10 < self.config.episodes
        bar = tqdm(total=round(self.config.time_budget) if by_time else self.config.episodes,
                   initial=round(self.elapsed) if by_time else self.episode, unit="s" if by_time else "ep",
                   desc="training", disable=not show_progress, dynamic_ncols=True, mininterval=1.0)
        if self.config.init and self.episode == 0 and not self.rows:  # a new run, not a resumed one
            print(f"starting from {load_initial_weights(self.model, self.config.model, self.config.init)}",
                  file=sys.stderr)
        lr = learning_rate(self.config, self.progress())
        try:
            logged = self.rows[-1]["episode"] if self.rows else 0
            if self.episode and self.episode % self.config.val_every == 0 and logged != self.episode:
                self.log(lr)  # resumed from an interrupt during this episode's check: redo it
            while self.progress() < 1.0:
                if stop_after is not None and self.episode >= stop_after:  # simulated kill: no final save
                    return TrainResult(self.run_dir, self.episode, self.elapsed, self.best_val, self.rows)
                started = time.perf_counter()
                lr = learning_rate(self.config, self.progress())
                self.step(self.episode, lr)
                self.elapsed += time.perf_counter() - started
                bar.update(round(self.elapsed) - bar.n if by_time else 1)
                if self.episode % self.config.val_every == 0:
                    started = time.perf_counter()
                    row = self.log(lr)
                    self.elapsed += time.perf_counter() - started
                    bar.set_postfix(episode=self.episode, loss=f"{row['train_loss']:.3f}",
                                    acc=f"{row['train_accuracy']:.3f}",
                                    val="-" if row["val_accuracy"] is None else f"{row['val_accuracy']:.3f}")
            if self.running["steps"] or not self.rows:
                self.log(lr)
        except KeyboardInterrupt:
            if not self._updating:
                self.save_last()
            raise
        finally:
            bar.close()
        if self.val_set is None:  # a final run selects nothing: its best is its last
            save_checkpoint(self.run_dir / "best.pt", self.model, self.config.model, episode=self.episode)
        else:
            self.calibrate_best()
        self.plot()
        return TrainResult(self.run_dir, self.episode, self.elapsed, self.best_val, self.rows)

    def calibrate_best(self) -> float:
        """Fit the temperature of ``best.pt``'s probabilities on the validation tasks and save it there."""
        assert self.val_set is not None and self.val_specs is not None
        path = self.run_dir / "best.pt"
        checkpoint = read_checkpoint(path)
        model = self.config.model.build().to(self.device)
        load_state(model, self.config.model, checkpoint, str(path))
        fit = fit_model_temperature(model, self.val_set, self.val_specs, self.device)
        if "failed" in fit:
            warnings.warn(f"best.pt keeps temperature 1: {fit['failed']}", stacklevel=2)
        checkpoint["spec"]["temperature"] = fit["temperature"]
        atomic_torch_save(checkpoint, path)
        atomic_write_text(self.run_dir / "calibration.json", json.dumps(fit, indent=2))
        return fit["temperature"]

    def plot(self) -> None:
        from fewshot.plots import plot_curves

        plot_curves(self.rows, self.run_dir / "curves.png")
