"""Seeded episodic evaluation with confidence intervals, and Lake et al.'s one-shot runs."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fewshot.data import FewShotDataset, Task, TaskSampler, TaskSpec, build_task
from fewshot.evaluation.calibration import (
    TEMPERATURE_BOUNDS,
    expected_calibration_error,
    fit_temperature,
    query_statistics,
)
from fewshot.evaluation.metrics import batched_episode_scores, mean_and_ci95, mean_and_t_ci95
from fewshot.methods import FewShotMethod, MetricMethod
from fewshot.utils import (
    HeapTrimmer,
    atomic_write_text,
    autocast,
    cpu_workers,
    eval_mode,
    map_on_replicas,
)


@dataclass
class EvalResult:
    """Mean episode scores (fractions) with the 95% CI of the accuracy; ``per_episode`` one dict per task.

    ``ece``: expected calibration error of the top-class probabilities (15 bins); ``nll``: mean negative
    log-likelihood of the true class per query. ``confused_pairs``: the most frequent errors over all episodes,
    most frequent first, each ``{"true": class name, "predicted": class name, "count": queries, "share": fraction
    of all errors}``. When every task's classes come from one group (``within_group``) and tasks come from several
    groups: ``per_group``, each group's ``{"group", "accuracy", "ci95", "episodes"}``, and ``group_mean`` with
    ``group_ci95``, the unweighted mean over groups and its Student-t interval over them (what to expect on a new
    group: groups, e.g. alphabets, differ far more than the tasks of one group do).
    """

    accuracy: float
    ci95: float
    episodes: int
    ways: int
    shots: int
    queries: int
    precision_macro: float
    recall_macro: float
    f1_macro: float
    ece: float = float("nan")
    nll: float = float("nan")
    confused_pairs: list[dict] = field(default_factory=list)
    per_group: list[dict] = field(default_factory=list)
    group_mean: float = float("nan")
    group_ci95: float = float("nan")
    per_episode: list[dict] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        """Everything but ``per_episode``; the group keys only where there are groups to report."""
        skip = {"per_episode"} | (set() if self.per_group else {"per_group", "group_mean", "group_ci95"})
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def write_csv(self, path: str | Path) -> None:
        """One row per episode, written atomically (its folder is created if needed)."""
        rows = self.per_episode
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(Path(path), text.getvalue())


@torch.no_grad()
def embed_dataset(
    model: MetricMethod, dataset: FewShotDataset, device: torch.device, precision: str = "fp32",
    batch_size: int = 1024,
) -> torch.Tensor:
    """Features ``[n, D]`` of every image of ``dataset``, computed once in eval mode."""
    chunks = []
    for start in range(0, len(dataset), batch_size):
        images = dataset.load_many(range(start, min(start + batch_size, len(dataset)))).to(device)
        with autocast(device, precision):
            chunks.append(model.features(images).float())
    return torch.cat(chunks)


@torch.no_grad()
def _logits_cached(
    model: MetricMethod, features: torch.Tensor, specs: Sequence[TaskSpec], device: torch.device
) -> torch.Tensor:
    """Logits ``[E, M, N]`` of episodes of equal shape, classified from cached features ``[n, D]``."""
    ways, shots = specs[0].support.shape
    support = torch.as_tensor(np.stack([s.support.reshape(-1) for s in specs]), device=device)
    query = torch.as_tensor(np.stack([s.query.reshape(-1) for s in specs]), device=device)
    labels = torch.arange(ways, device=device)
    support_labels = labels.repeat_interleave(shots).expand(len(specs), -1)
    if len(specs) == 1:  # methods without batched classify see plain [N*K, D] / [M, D] tensors
        logits = model.classify_task(features[support[0]], support_labels[0], features[query[0]])[None]
    else:
        logits = model.classify_task(features[support], support_labels, features[query])
    return logits.float()


def query_labels(specs: Sequence[TaskSpec]) -> list[np.ndarray]:
    """Each episode's query labels ``[M]``, in the order :func:`build_task` lays queries out."""
    return [np.arange(s.query.shape[0]).repeat(s.query.shape[1]) for s in specs]


def group_scores(specs: Sequence[TaskSpec], accuracies: Sequence[float], dataset: FewShotDataset) -> list[dict]:
    """Accuracy ± 95% CI per group, over the tasks whose classes all lie in that group; ``[]`` unless every task
    lies in one group and there are several groups."""
    groups = [{dataset.class_groups[c] for c in spec.classes} for spec in specs]
    if any(len(g) != 1 for g in groups) or len(set.union(*groups)) < 2:
        return []
    by_group: dict[str, list[float]] = {}
    for (group,), accuracy in zip(groups, accuracies, strict=True):
        by_group.setdefault(group, []).append(accuracy)
    return [{"group": group, "accuracy": mean, "ci95": ci, "episodes": len(values)}
            for group, values in sorted(by_group.items()) for mean, ci in [mean_and_ci95(values)]]


def confusion_pairs(
    specs: Sequence[TaskSpec], predictions: Sequence[np.ndarray], class_names: Sequence[str], top: int = 10
) -> list[dict]:
    """The ``top`` most frequent (true class, predicted class) errors over episodes, with their share of all errors.

    Args:
        specs: the episodes; predictions: each episode's predicted labels ``[M]`` (episode label space).
    """
    true = np.concatenate([s.classes[y] for s, y in zip(specs, query_labels(specs), strict=True)])
    predicted = np.concatenate([s.classes[p] for s, p in zip(specs, predictions, strict=True)])
    wrong = true != predicted
    if not wrong.any():
        return []
    # One integer per pair (true-major, so sorted codes are sorted pairs): a 1-D unique is far faster than axis=0.
    codes, counts = np.unique(true[wrong] * len(class_names) + predicted[wrong], return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]  # ties: in class order
    return [{"true": class_names[codes[i] // len(class_names)], "predicted": class_names[codes[i] % len(class_names)],
             "count": int(counts[i]), "share": float(counts[i] / wrong.sum())} for i in order]


def _logits(model: FewShotMethod, task: Task, device: torch.device, precision: str) -> torch.Tensor:
    """Query logits ``[M, N]`` of one task, in fp32."""
    task = task.to(device)
    with autocast(device, precision):
        return model(task.support_images, task.support_labels, task.query_images).float()


def _tasks_logits(
    model: FewShotMethod, tasks: list[Task], device: torch.device, precision: str, workers: int
) -> list[torch.Tensor]:
    """Query logits of each task, in order; task ``i`` on thread ``i % workers`` through a replica of ``model``."""
    def part(copy: FewShotMethod, share: list[Task]) -> list[torch.Tensor]:
        return [_logits(copy, task, device, precision) for task in share]

    if workers == 1:
        return part(model, tasks)
    logits: list[torch.Tensor] = [torch.empty(0)] * len(tasks)
    for i, share in enumerate(map_on_replicas(part, model, tasks, workers, device.type)):
        logits[i::workers] = share
    return logits


@torch.no_grad()
def episode_logits(
    model: FewShotMethod, dataset: FewShotDataset, specs: Sequence[TaskSpec], device: str | torch.device = "cpu",
    precision: str = "fp32", chunk_size: int = 500, progress: bool = False,
) -> Iterator[torch.Tensor]:
    """Query logits of the episodes ``specs``, in order, as chunks ``[E, M, N]`` of consecutive episodes (on CPU).

    Metric methods embed every image once and classify whole chunks from the cached features; other methods run
    task by task (chunks of one), split over CPU threads where the method allows it
    (:attr:`~fewshot.methods.FewShotMethod.thread_safe_replicas`). The model is in eval mode meanwhile.
    """
    device = torch.device(device)
    bar = tqdm(total=len(specs), desc="evaluating", unit="ep", leave=False, disable=not progress)
    heap = HeapTrimmer()  # task-by-task evaluation can grow glibc's heap by GBs (its docstring says how)

    def done(episodes: int) -> None:
        bar.update(episodes)
        heap.step()

    with eval_mode(model):
        try:
            if isinstance(model, MetricMethod):
                features = embed_dataset(model, dataset, device, precision)
                same_shape = len({(s.support.shape, s.query.shape) for s in specs}) == 1
                chunk = chunk_size if model.batched_classify and same_shape else 1
                for start in range(0, len(specs), chunk):
                    batch = specs[start : start + chunk]
                    yield _logits_cached(model, features, batch, device).cpu()
                    done(len(batch))
            else:
                workers = cpu_workers(device, len(specs)) if getattr(model, "thread_safe_replicas", False) else 1
                block = 8 * workers if workers > 1 else 1
                for start in range(0, len(specs), block):
                    tasks = [build_task(dataset, spec) for spec in specs[start : start + block]]
                    for logits in _tasks_logits(model, tasks, device, precision, min(workers, len(tasks))):
                        yield logits[None].cpu()
                    done(len(tasks))
        finally:
            bar.close()


def _why_no_temperature(temperature: float, logits: list[torch.Tensor], labels: list[torch.Tensor]) -> str:
    """Why :func:`fit_temperature` ran into a bound on these logits ``[..., N]`` and labels ``[...]``."""
    if temperature > 1:  # the NLL keeps falling as the probabilities flatten
        return ("the logits tell the classes apart worse than chance on these episodes (an untrained or broken "
                "model?); check the checkpoint's accuracy first")
    if all(bool((x.argmax(-1) == y).all()) for x, y in zip(logits, labels, strict=True)):
        return "these episodes cannot pin it down (every query right); calibrate on more or harder episodes"
    return ("the logits do not depend on the temperature (the same for every class?); check that the model's "
            "features differ between images")


def fit_model_temperature(
    model: FewShotMethod, dataset: FewShotDataset, specs: Sequence[TaskSpec], device: str | torch.device = "cpu",
    precision: str = "fp32", current: float = 1.0, progress: bool = False,
) -> dict:
    """Fit the temperature of ``model``'s probabilities on the labelled episodes ``specs``.

    Returns ``{"temperature": T, "before": {"ece", "nll"}, "after": {"ece", "nll"}}``, before at ``current``;
    ``T`` is ``current`` when the fit ran into a bound (:data:`TEMPERATURE_BOUNDS`), with ``"failed"`` saying why.
    """
    logits = list(episode_logits(model, dataset, specs, device, precision, progress=progress))
    labels, start = [], 0
    for chunk in logits:
        labels.append(torch.as_tensor(np.stack(query_labels(specs[start : start + len(chunk)]))))
        start += len(chunk)
    temperature = fit_temperature(logits, labels)
    failed = None
    if not TEMPERATURE_BOUNDS[0] * 1.05 < temperature < TEMPERATURE_BOUNDS[1] / 1.05:  # at a bound
        failed = f"the temperature ran to {temperature:.3g}: {_why_no_temperature(temperature, logits, labels)}"
        temperature = current

    def scores(t: float) -> dict[str, float]:
        parts = zip(*(query_statistics(x, y, t) for x, y in zip(logits, labels, strict=True)), strict=True)
        confidence, correct, nll = (torch.cat(p) for p in parts)
        return {"ece": expected_calibration_error(confidence, correct), "nll": float(nll.mean())}

    fit = {"temperature": temperature, "before": scores(current), "after": scores(temperature)}
    return {**fit, "failed": failed} if failed else fit


def evaluate(
    model: FewShotMethod,
    dataset: FewShotDataset,
    ways: int,
    shots: int,
    queries: int = 15,
    episodes: int = 1000,
    seed: int = 0,
    within_group: bool = False,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    specs: Sequence[TaskSpec] | None = None,
    progress: bool = False,
    chunk_size: int = 500,
    confusions: int = 10,
    temperature: float = 1.0,
) -> EvalResult:
    """Accuracy (mean ± 95% CI) and macro P/R/F1 over seeded episodes of ``dataset``.

    Metric methods embed every image once and classify all episodes from the cached features; other
    methods run on each task. ``specs`` replays a saved task list instead of sampling. ``confusions``: how many
    of the most frequent (true, predicted) class pairs to report. Probabilities (for ECE and NLL) are the softmax of
    the logits divided by ``temperature`` (a checkpoint's calibrated ``ModelSpec.temperature``).
    """
    if specs is None:
        specs = TaskSampler(dataset, ways, shots, queries, episodes, seed, within_group=within_group).specs()
    labels = query_labels(specs)
    predictions: list[np.ndarray] = []
    calibration: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    for logits in episode_logits(model, dataset, specs, device, precision, chunk_size, progress):
        chunk_labels = torch.as_tensor(np.stack(labels[len(predictions) : len(predictions) + len(logits)]))
        calibration.append(query_statistics(logits, chunk_labels, temperature))
        predictions += list(logits.argmax(-1).numpy())
    if len({p.shape for p in predictions}) == 1:  # one call for all episodes when they share a shape
        scores = [batched_episode_scores(torch.as_tensor(np.stack(predictions)), torch.as_tensor(np.stack(labels)),
                                         specs[0].support.shape[0])]
    else:
        scores = [batched_episode_scores(torch.as_tensor(p)[None], torch.as_tensor(y)[None], s.support.shape[0])
                  for s, p, y in zip(specs, predictions, labels, strict=True)]
    confidence, correct, nll = (torch.cat(parts) for parts in zip(*calibration, strict=True))
    merged = {name: torch.cat([s[name] for s in scores]).tolist() for name in scores[0]}
    rows = [
        {"episode": i, **{name: merged[name][i] for name in merged},
         "classes": " ".join(dataset.class_names[c] for c in spec.classes)}
        for i, spec in enumerate(specs)
    ]
    accuracy, ci95 = mean_and_ci95([r["accuracy"] for r in rows])
    per_group = group_scores(specs, [r["accuracy"] for r in rows], dataset)
    group_mean, group_ci95 = mean_and_t_ci95([g["accuracy"] for g in per_group]) if per_group else (math.nan,) * 2
    return EvalResult(
        accuracy=accuracy,
        ci95=ci95,
        episodes=len(rows),
        ways=int(specs[0].support.shape[0]),
        shots=int(specs[0].support.shape[1]),
        queries=int(specs[0].query.shape[1]),
        precision_macro=mean_and_ci95([r["precision"] for r in rows])[0],
        recall_macro=mean_and_ci95([r["recall"] for r in rows])[0],
        f1_macro=mean_and_ci95([r["f1"] for r in rows])[0],
        ece=expected_calibration_error(confidence, correct),
        nll=float(nll.mean()),
        confused_pairs=confusion_pairs(specs, predictions, dataset.class_names, top=confusions),
        per_group=per_group,
        group_mean=group_mean,
        group_ci95=group_ci95,
        per_episode=rows,
    )


@torch.no_grad()
def evaluate_tasks(
    model: FewShotMethod, named_tasks: Sequence[tuple[str, Task]], device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> dict:
    """Error rate of each named task (e.g. Lake's 20 runs) and their mean: ``{"error_rate", "runs": [...]}``."""
    device = torch.device(device)
    runs = []
    with eval_mode(model):
        for name, task in named_tasks:
            predictions = _logits(model, task, device, precision).argmax(1).cpu()
            runs.append({"run": name, "error_rate": float((predictions != task.query_labels).float().mean())})
    return {"error_rate": sum(r["error_rate"] for r in runs) / len(runs), "runs": runs}
