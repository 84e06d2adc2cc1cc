"""``fewshot bench``: every method's recipe on Omniglot leave-alphabets-out, one budget, one table.

For each method with a recipe ``omniglot-<method>``: train the recipe on Omniglot ``minimal`` without the test
alphabets (Korean, Balinese) and the validation alphabet (Early_Aramaic, checkpoint selection only), in a child
process so that its peak memory is its own; then evaluate the selected checkpoint (``best.pt``) on the test
alphabets in eight settings (5/20-way, 1/5-shot, within/across alphabets) on episode lists that are sampled once,
saved under ``OUT/episodes/`` and replayed for every method. Writes ``results.csv``, ``results.md`` and
``accuracy_vs_time.png``.

A rerun with the same ``--out`` continues where the last one stopped: finished trainings (``training.json``) and
evaluations (``evaluations.json``, per setting) are kept, an unfinished training resumes from its ``last.pt``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from fewshot.data import DataError, FewShotDataset, TaskSpec
from fewshot.methods import FewShotMethod, MetricMethod
from fewshot.utils import atomic_write_text

SPLIT = "minimal"
TEST_ALPHABETS = ("Korean", "Balinese")
VAL_ALPHABETS = ("Early_Aramaic",)
QUERIES = 5
FORMAT = "fewshot-bench/1"


@dataclass(frozen=True)
class Setting:
    ways: int
    shots: int
    within: bool

    @property
    def name(self) -> str:
        return f"{self.ways}way{self.shots}shot-{'within' if self.within else 'across'}"

    @property
    def label(self) -> str:
        return f"{self.ways}-way {self.shots}-shot {'within' if self.within else 'across'}"


SETTINGS = tuple(Setting(w, k, within) for within in (True, False) for w, k in ((5, 1), (5, 5), (20, 1), (20, 5)))
PLOTTED = Setting(20, 1, True)  # the held-out point of accuracy_vs_time.png


@dataclass(frozen=True)
class Anchor:
    """A published Omniglot result; ``accuracy`` (%): 5-way 1-shot, 5-way 5-shot, 20-way 1-shot, 20-way 5-shot."""

    method: str
    paper: str
    accuracy: tuple[float, float, float, float] | None
    note: str = ""


_VINYALS = "standard split of Vinyals et al."
PUBLISHED_ANCHORS: tuple[Anchor, ...] = (
    Anchor("Siamese nets", "Koch et al. 2015, as reported by Vinyals et al. 2016", (96.7, 98.4, 88.0, 96.5), _VINYALS),
    Anchor("Matching networks", "Vinyals et al. 2016", (98.1, 98.9, 93.8, 98.5), _VINYALS),
    Anchor("Prototypical networks", "Snell et al. 2017", (98.8, 99.7, 96.0, 98.9), _VINYALS),
    Anchor("MAML", "Finn et al. 2017", (98.7, 99.9, 95.8, 98.9), _VINYALS),
    Anchor("Meta-SGD", "Li et al. 2017", (99.53, 99.93, 95.93, 98.97), _VINYALS),
    Anchor("Relation network", "Sung et al. 2018", (99.6, 99.8, 97.6, 99.1), _VINYALS),
    Anchor("MANN", "Santoro et al. 2016", None,
           "another protocol (sequence prediction): per-instance accuracy on 5-class sequences, 1st 36.4%, "
           "2nd 82.8%, 3rd 91.0%, 5th 94.9%, 10th 98.1%"),
    Anchor("ProtoNet, ConvNet, humans", "Lake et al. 2019", None,
           "Lake's 20-way 1-shot within-alphabet runs, trained on 5 background alphabets: error rate ProtoNet "
           "30.1%, ConvNet 23.2%, humans 4.5%"),
)
ANCHOR_SETTINGS = ("5-way 1-shot", "5-way 5-shot", "20-way 1-shot", "20-way 5-shot")

CSV_FIELDS = ["method", "setting", "ways", "shots", "within_alphabet", "accuracy", "ci95", "episodes", "train_minutes",
              "train_episodes", "episodes_per_s", "peak_memory_mib", "peak_cuda_memory_mib", "lake_error", "note"]


# -- settings --------------------------------------------------------------------------------------
def available_methods() -> list[str]:
    """Methods with an ``omniglot-<method>`` recipe, read from the registry now (others may add some)."""
    from fewshot.recipes import RECIPES

    return [name.removeprefix("omniglot-") for name in RECIPES if name.startswith("omniglot-")]


def resolve_methods(value: str | None) -> list[str]:
    choices = available_methods()
    if not value:
        return choices
    methods = list(dict.fromkeys(m.strip() for m in value.split(",") if m.strip()))
    unknown = [m for m in methods if m not in choices]
    if unknown or not methods:
        raise DataError(f"unknown method(s) {', '.join(unknown) or repr(value)} for the bench; choose from "
                        f"{', '.join(choices)} (the methods with an omniglot-<method> recipe)")
    return methods


def bench_settings(args: argparse.Namespace, methods: list[str]) -> dict[str, Any]:
    """What makes two benches comparable; stored in ``OUT/bench.json``, a rerun must match it."""
    for name, value in (("--budget-minutes", args.budget_minutes), ("--train-episodes", args.train_episodes),
                        ("--eval-episodes", args.eval_episodes), ("--val-episodes", args.val_episodes),
                        ("--val-every", args.val_every)):
        if value is not None and not value > 0:
            raise DataError(f"{name} must be positive (got {value})")
    return {
        "methods": methods,
        "budget_minutes": None if args.train_episodes else args.budget_minutes,
        "train_episodes": args.train_episodes,
        "seed": args.seed,
        "eval_episodes": args.eval_episodes,
        "val_episodes": args.val_episodes,
        "val_every": args.val_every,
        "split": SPLIT, "test_alphabets": list(TEST_ALPHABETS), "val_alphabets": list(VAL_ALPHABETS),
        "queries": QUERIES,
    }


def method_settings(method: str, bench: dict[str, Any], root: str, device: str = "auto") -> dict[str, Any]:
    """Training settings of ``method``: ``TRAIN_DEFAULTS`` < its ``omniglot-<method>`` recipe < the bench's."""
    from fewshot.commands import TRAIN_DEFAULTS
    from fewshot.recipes import get_recipe

    settings = {**TRAIN_DEFAULTS, **get_recipe(f"omniglot-{method}")}
    settings.update(dataset="omniglot", root=str(root), split=SPLIT, final=False, seed=bench["seed"], device=device,
                    holdout_alphabets=",".join(TEST_ALPHABETS), val_alphabets=",".join(VAL_ALPHABETS))
    if bench["train_episodes"]:
        settings.update(episodes=bench["train_episodes"], time_budget=None)
    else:
        settings["time_budget"] = bench["budget_minutes"] * 60
    for key in ("val_episodes", "val_every"):
        if bench[key]:
            settings[key] = bench[key]
    return settings


def command_line(args: argparse.Namespace, methods: list[str]) -> str:
    """The command as typed when this process is that command, else one with every setting spelled out."""
    if sys.argv[1:2] == ["bench"]:
        from fewshot.cli import build_parser

        try:
            typed = build_parser().parse_args(sys.argv[1:])
        except Exception:  # not our command line after all
            typed = None
        if typed is not None and vars(typed) == vars(args):
            return shlex.join(["fewshot", *sys.argv[1:]])
    parts = ["fewshot", "bench", "--root", str(args.root), "--methods", ",".join(methods)]
    if args.train_episodes:
        parts += ["--train-episodes", str(args.train_episodes)]
    else:
        parts += ["--budget-minutes", f"{args.budget_minutes:g}"]
    parts += ["--seed", str(args.seed), "--eval-episodes", str(args.eval_episodes)]
    for flag, value in (("--val-episodes", args.val_episodes), ("--val-every", args.val_every),
                        ("--lake-runs", args.lake_runs)):
        if value is not None:
            parts += [flag, str(value)]
    if args.device != "auto":
        parts += ["--device", args.device]
    return shlex.join([*parts, "--out", str(args.out)])


def claim_out(out: Path, settings: dict[str, Any], command: str) -> None:
    """Write ``OUT/bench.json``, or check that the bench already in ``out`` was made with ``settings``."""
    path = out / "bench.json"
    if path.is_file():
        saved = _read_json(path)
        if not isinstance(saved, dict) or saved.get("format") != FORMAT or not isinstance(saved.get("settings"), dict):
            raise DataError(f"{path} is not a fewshot bench file; choose another --out")
        old = saved["settings"]
        differ = [f"{k} {_show(settings.get(k))} (it has {_show(old.get(k))})"
                  for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
        if differ:
            raise DataError(f"{out} holds a bench made with other settings: {'; '.join(differ)}; choose another --out "
                            "(or rerun with the same settings to continue it)")
        return
    if out.is_dir() and (out / "runs").exists():
        raise DataError(f"{out} holds runs but no bench.json; choose another --out")
    atomic_write_text(path, json.dumps({"format": FORMAT, "settings": settings, "command": command}, indent=1))


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


# -- data ------------------------------------------------------------------------------------------
_TEST_SETS: dict[tuple[str, int], FewShotDataset] = {}


def test_dataset(root: str, image_size: int = 28) -> FewShotDataset:
    """The test alphabets of ``minimal``, never rotated."""
    from fewshot.data import load_dataset, split_by_groups

    key = (str(root), image_size)
    if key not in _TEST_SETS:
        _TEST_SETS[key] = split_by_groups(load_dataset("omniglot", root, SPLIT, image_size), list(TEST_ALPHABETS))[1]
    return _TEST_SETS[key]


def write_episode_lists(out: Path, test_set: FewShotDataset, seed: int, episodes: int) -> dict[str, Path]:
    """Sample each setting's episodes once into ``OUT/episodes/<setting>.json`` (kept if already there)."""
    from fewshot.data import TaskSampler, save_tasks

    paths = {}
    for s in SETTINGS:
        path = paths[s.name] = out / "episodes" / f"{s.name}.json"
        if not path.is_file():
            specs = TaskSampler(test_set, s.ways, s.shots, QUERIES, episodes, seed, within_group=s.within).specs()
            save_tasks(path, test_set, specs)
    return paths


# -- training (in a child process) -----------------------------------------------------------------
def train_method(settings: dict[str, Any], run: Path, show_progress: bool = True, stop_after: int | None = None):
    """Train with ``settings`` into ``run``, resuming its ``last.pt`` if there is one.

    Returns ``(TrainResult, episode resumed from or None, trainer)``.

    ``stop_after`` stops at that episode without a final save, as a kill would (for tests).
    """
    from fewshot.commands import _fit_val_ways, build_train_config, prepare_training_data
    from fewshot.training.trainer import Trainer

    settings = dict(settings)
    train, val = prepare_training_data(settings)
    _fit_val_ways(settings, val)
    trainer = Trainer(build_train_config(settings, train), train, val, run)
    resumed_from = None
    if (run / "last.pt").is_file():
        trainer.resume()
        resumed_from = trainer.episode
        print(f"{settings['method']}: resuming {run} at episode {trainer.episode} "
              f"({trainer.elapsed / 60:.1f} min trained)", file=sys.stderr)
    result = trainer.fit(show_progress=show_progress, stop_after=stop_after)
    return result, resumed_from, trainer


def _peak_rss_mib() -> float:
    """Peak resident memory of this process since it started, in MiB.

    On Linux this is ``VmHWM`` of ``/proc/self/status``, the high-water mark of this process's own memory map.
    ``getrusage(RUSAGE_SELF).ru_maxrss`` would be wrong for a spawned child there: Linux carries it over from the
    parent across fork and exec, so the child would report at least the parent's RSS at spawn time. Elsewhere,
    ``ru_maxrss`` (KiB on Linux and BSD, bytes on macOS).
    """
    try:
        match = re.search(r"^VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
        if match:
            return int(match.group(1)) / 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _train_child(settings: dict[str, Any], run: str, show_progress: bool, methods: dict[str, str]) -> None:
    """Child process body: train, then write ``run/training.json`` (status ``done`` or ``failed``).

    ``methods``: the parent's method registry, so that methods registered at run time train here too.
    """
    from fewshot.methods import METHODS
    from fewshot.training.checkpoint import CheckpointError
    from fewshot.training.trainer import TrainingError

    METHODS.update(methods)
    run_dir = Path(run)
    started = time.perf_counter()
    try:
        result, resumed_from, trainer = train_method(settings, run_dir, show_progress)
        record: dict[str, Any] = {
            "status": "done", "method": settings["method"], "episodes": result.episodes,
            "elapsed_s": result.elapsed_s, "best_val_accuracy": result.best_val_accuracy,
            "val_ways": trainer.config.val_ways, "val_shots": trainer.config.val_shots,
            "device": str(trainer.device), "resumed_from": resumed_from, "peak_cuda_mib": None,
        }
        if trainer.device.type == "cuda":
            import torch

            record["peak_cuda_mib"] = torch.cuda.max_memory_allocated(trainer.device) / 2**20
    except (TrainingError, DataError, CheckpointError, ValueError) as err:
        record = {"status": "failed", "method": settings["method"], "error": str(err).splitlines()[0]}
    except KeyboardInterrupt:  # the trainer saved last.pt; the next bench resumes from it
        return
    record["peak_rss_mib"] = _peak_rss_mib()
    record["process_wall_s"] = time.perf_counter() - started
    atomic_write_text(run_dir / "training.json", json.dumps(record, indent=1))


def train_in_child(settings: dict[str, Any], run: Path, show_progress: bool) -> dict[str, Any]:
    """Run :func:`_train_child` in a fresh (spawned) process and return its ``training.json``."""
    import multiprocessing

    from fewshot.methods import METHODS

    run.mkdir(parents=True, exist_ok=True)
    (run / "training.json").unlink(missing_ok=True)
    process = multiprocessing.get_context("spawn").Process(
        target=_train_child, args=(settings, str(run), show_progress, dict(METHODS)),
        name=f"fewshot-bench-{settings['method']}")
    process.start()
    try:
        process.join()
    except KeyboardInterrupt:  # the child got the signal too: give it time to save last.pt
        process.join(timeout=60)
        if process.is_alive():
            process.terminate()
            process.join()
        raise
    record = _read_json(run / "training.json")
    if record is None:
        record = {"status": "failed", "method": settings["method"],
                  "error": f"the training process ended with exit code {process.exitcode} and no result"}
    return record


# -- evaluation ------------------------------------------------------------------------------------
def evaluate_setting(model, dataset: FewShotDataset, specs: list[TaskSpec], device) -> dict[str, Any]:
    """Accuracy and CI on ``specs``; a setting the method cannot do is ``n/a`` with the reason, never an error."""
    from fewshot.evaluation.evaluate import evaluate

    try:
        r = evaluate(model, dataset, 0, 0, specs=specs, device=device, precision="fp32")
    except ValueError as err:  # e.g. a head of 5 outputs on 20-way tasks
        return {"accuracy": None, "ci95": None, "episodes": 0, "note": f"n/a: {_first_line(err)}"}
    except RuntimeError as err:  # e.g. out of memory: noted, and tried again by the next run
        return {"accuracy": None, "ci95": None, "episodes": 0, "note": f"n/a: {_first_line(err)}", "retry": True}
    return {"accuracy": r.accuracy, "ci95": r.ci95, "episodes": r.episodes}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


class _Embedded(MetricMethod):
    """``model`` seen through inputs that are already its embeddings (a metric method's test set embedded once
    for all settings, instead of once per setting); it classifies exactly as ``model`` does."""

    def __init__(self, model: FewShotMethod) -> None:
        super().__init__(nn.Identity())
        self.model = model
        self.batched_classify = getattr(model, "batched_classify", False)

    def classify(self, support_features, support_labels, query_features):
        return self.model.classify_task(support_features, support_labels, query_features)


def _embedded(model: FewShotMethod, dataset: FewShotDataset, device) -> FewShotDataset:
    """The items of ``dataset`` as ``model``'s features (same ids, classes and order); metric methods only."""
    from fewshot.data import TensorDataset
    from fewshot.evaluation.evaluate import embed_dataset

    features = embed_dataset(model, dataset, device, "fp32")
    return TensorDataset(features, dataset.item_classes, dataset.class_names, dataset.class_groups, dataset.item_ids)


def evaluate_method(run: Path, root: str, episode_paths: dict[str, Path], lake_runs: str | None,
                    device_name: str) -> dict[str, Any]:
    """Evaluate ``run/best.pt`` on every setting (and Lake's runs) not yet in ``run/evaluations.json``."""
    from fewshot.data import load_tasks
    from fewshot.training.checkpoint import load_model
    from fewshot.utils import resolve_device

    path = run / "evaluations.json"
    done = _read_json(path) or {}
    missing = [s for s in SETTINGS if s.name not in done or done[s.name].get("retry")]
    lake_missing = lake_runs is not None and (done.get("lake") or {}).get("source") != str(lake_runs)
    if not missing and not lake_missing:
        return done
    device = resolve_device(device_name)
    model, spec = load_model(run / "best.pt", device)
    done["transductive_steps"] = spec.transductive_steps  # the report marks transductive rows
    done["transductive_balance"] = spec.transductive_balance
    dataset = test_dataset(root, spec.image_shape[-1])
    scored, scored_on = model, dataset
    if isinstance(model, MetricMethod):
        scored, scored_on = _Embedded(model), _embedded(model, dataset, device)
    for s in missing:
        done[s.name] = evaluate_setting(scored, scored_on, load_tasks(episode_paths[s.name], dataset), device)
        atomic_write_text(path, json.dumps(done, indent=1))
    if lake_missing:
        from fewshot.data.lake_runs import load_lake_runs
        from fewshot.evaluation.evaluate import evaluate_tasks

        try:
            result = evaluate_tasks(model, load_lake_runs(lake_runs, image_size=spec.image_shape[-1]), device)
            done["lake"] = {"source": str(lake_runs), "error_rate": result["error_rate"], "runs": len(result["runs"])}
        except (ValueError, RuntimeError) as err:
            done["lake"] = {"source": str(lake_runs), "error_rate": None, "note": f"Lake runs n/a: {_first_line(err)}"}
        atomic_write_text(path, json.dumps(done, indent=1))
    return done


# -- one method ------------------------------------------------------------------------------------
def run_method(method: str, out: Path, bench: dict[str, Any], args: argparse.Namespace,
               episode_paths: dict[str, Path], bar=None) -> dict[str, Any]:
    run = out / "runs" / method
    training = _read_json(run / "training.json")
    if not training or training.get("status") != "done":
        if bar is not None:
            bar.set_description(f"bench: {method} (training)")
            bar.refresh()
            if not bar.disable:
                sys.stderr.write("\n")  # the child's training bar draws on its own line
        (run / "evaluations.json").unlink(missing_ok=True)  # they were of a checkpoint that may change now
        training = train_in_child(method_settings(method, bench, args.root, args.device), run, not args.quiet)
    evaluations: dict[str, Any] = {}
    if training.get("status") == "done":
        if bar is not None:
            bar.set_description(f"bench: {method} (evaluating)")
        evaluations = evaluate_method(run, args.root, episode_paths, args.lake_runs, args.device)
    else:
        print(f"fewshot bench: {method}: training failed: {training.get('error')}", file=sys.stderr)
    return {"method": method, "run": run, "training": training, "evaluations": evaluations}


# -- reports ---------------------------------------------------------------------------------------
def _metrics_rows(run: Path) -> list[dict]:
    if not (run / "metrics.csv").is_file():
        return []
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def csv_rows(records: list[dict[str, Any]], lake: bool) -> list[dict[str, Any]]:
    rows = []
    for rec in records:
        t, ev = rec["training"], rec["evaluations"]
        ok = t.get("status") == "done"
        seconds = t.get("elapsed_s") if ok else None
        lake_result = ev.get("lake") or {}
        for s in SETTINGS:
            e = ev.get(s.name) or {}
            note = e.get("note", "") if ok else f"n/a: training failed: {t.get('error')}"
            if lake and lake_result.get("note"):
                note = "; ".join(filter(None, [note, lake_result["note"]]))
            rows.append({
                "method": rec["method"], "setting": s.name, "ways": s.ways, "shots": s.shots,
                "within_alphabet": s.within, "accuracy": e.get("accuracy"), "ci95": e.get("ci95"),
                "episodes": e.get("episodes", 0),
                "train_minutes": seconds / 60 if seconds is not None else None,
                "train_episodes": t.get("episodes"),
                "episodes_per_s": t["episodes"] / seconds if seconds else None,
                "peak_memory_mib": t.get("peak_rss_mib"), "peak_cuda_memory_mib": t.get("peak_cuda_mib"),
                "lake_error": lake_result.get("error_rate") if lake else None, "note": note,
            })
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row[k] is None else row[k] for k in CSV_FIELDS})
    atomic_write_text(path, buffer.getvalue())


def _pct(value: float | None, ci: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.1f}" if ci is None else f"{100 * value:.1f} ± {100 * ci:.1f}"


def markdown(records: list[dict[str, Any]], bench: dict[str, Any], command: str, lake: bool,
             device: str) -> str:
    budget = (f"{bench['train_episodes']} training episodes" if bench["train_episodes"]
              else f"{bench['budget_minutes']:g} min of training")
    lines = [
        "# fewshot bench: Omniglot leave-alphabets-out",
        "",
        "Produced by:",
        "",
        f"    {command}",
        "",
        f"Each method trained its recipe (`omniglot-<method>`, Conv-4) on Omniglot `{SPLIT}` without the test "
        f"alphabets ({', '.join(TEST_ALPHABETS)}) and the validation alphabet ({', '.join(VAL_ALPHABETS)}, used only "
        f"to select the checkpoint): {budget} per method (validation included), seed {bench['seed']}, "
        f"device {device}. Cells: accuracy ± 95% CI (%) of the selected checkpoint on {bench['eval_episodes']} "
        f"episodes of the test alphabets, {QUERIES} queries per class, the same episodes for every method "
        "(`episodes/`); *within*: the classes of a task come from one alphabet, *across*: from any. "
        "Training episodes are optimizer steps (a meta-batch counts once); peak memory is the training "
        "process's peak RSS.",
        "",
    ]
    header = ["method", *[s.label for s in SETTINGS], "training min", "episodes", "episodes/s",
              "peak memory MiB"]
    if lake:
        header.append("Lake runs error %")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for rec in records:
        t, ev = rec["training"], rec["evaluations"]
        if t.get("status") != "done":
            cells = ["n/a"] * len(SETTINGS) + ["n/a", "n/a", "n/a", _mib(t)]
            notes.append(f"- {rec['method']}: training failed: {t.get('error')}")
        else:
            cells = []
            unavailable: dict[str, list[str]] = {}  # note -> the settings it explains
            for s in SETTINGS:
                e = ev.get(s.name) or {}
                cells.append(_pct(e.get("accuracy"), e.get("ci95")))
                if e.get("note"):
                    unavailable.setdefault(e["note"], []).append(s.label)
            notes += [f"- {rec['method']}, {', '.join(labels)}: {note}" for note, labels in unavailable.items()]
            seconds = t["elapsed_s"]
            cells += [f"{seconds / 60:.1f}", str(t["episodes"]),
                      f"{t['episodes'] / seconds:.2f}" if seconds else "n/a", _mib(t)]
        if lake:
            result = ev.get("lake") or {}
            cells.append(_pct(result.get("error_rate")))
            if result.get("note"):
                notes.append(f"- {rec['method']}: {result['note']}")
        steps, balanced = ev.get("transductive_steps"), ev.get("transductive_balance")
        marks = ", ".join(filter(None, (f"{steps} steps" if steps else "", "balanced" if balanced else "")))
        label = f"{rec['method']} (transductive, {marks})" if marks else rec["method"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if notes:
        lines += ["", "Not available:", "", *_dedupe(notes)]
    if lake:
        lines += ["", "Lake runs error: mean error rate over the one-shot runs of `--lake-runs` (Lake et al.'s "
                  "20-way 1-shot within-alphabet runs from the evaluation alphabets)."]
    lines += ["", *anchors_markdown()]
    return "\n".join(lines) + "\n"


def _mib(training: dict[str, Any]) -> str:
    rss = training.get("peak_rss_mib")
    text = f"{rss:.0f}" if rss is not None else "n/a"
    if training.get("peak_cuda_mib") is not None:
        text += f" (GPU {training['peak_cuda_mib']:.0f})"
    return text


def _dedupe(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))


def anchors_markdown() -> list[str]:
    lines = [
        "## Published anchors (published figures, not ours)",
        "",
        "Accuracy (%) on Omniglot as published in each paper. **Not comparable** to the table above: the papers "
        "use the standard Omniglot split of Vinyals et al. (1200 training characters plus their rotations, tasks "
        "across alphabets), their own training budgets and their own hardware; the bench trains on 5 alphabets "
        "of `minimal` for minutes and tests on two held-out alphabets. MANN and Lake et al. report other "
        "protocols (see the notes).",
        "",
        "| method | paper | " + " | ".join(ANCHOR_SETTINGS) + " | note |",
        "|" + "---|" * (len(ANCHOR_SETTINGS) + 3),
    ]
    for a in PUBLISHED_ANCHORS:
        cells = [f"{v:g}" for v in a.accuracy] if a.accuracy else ["—"] * len(ANCHOR_SETTINGS)
        lines.append(f"| {a.method} | {a.paper} | " + " | ".join(cells) + f" | {a.note} |")
    return lines


def plot(records: list[dict[str, Any]], path: Path) -> None:
    from fewshot.plots import plot_accuracy_vs_time

    runs = []
    for rec in records:
        t = rec["training"]
        if t.get("status") != "done":
            continue
        point = (rec["evaluations"].get(PLOTTED.name) or {}).get("accuracy")
        runs.append({"name": rec["method"], "rows": _metrics_rows(rec["run"]),
                     "val_label": f"{t['val_ways']}-way {t['val_shots']}-shot", "test_accuracy": point,
                     "test_minutes": t["elapsed_s"] / 60})
    plot_accuracy_vs_time(
        runs, path, val_label=f"validation accuracy during training ({', '.join(VAL_ALPHABETS)}, within-alphabet)",
        test_label=f"held-out test accuracy of the selected checkpoint, {PLOTTED.label}-alphabet "
                   f"({', '.join(TEST_ALPHABETS)})")


def write_reports(out: Path, records: list[dict[str, Any]], bench: dict[str, Any], command: str, lake: bool,
                  device: str) -> None:
    write_csv(out / "results.csv", csv_rows(records, lake))
    atomic_write_text(out / "results.md", markdown(records, bench, command, lake, device))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # missing, unreadable or not JSON
        return None


# -- command ---------------------------------------------------------------------------------------
def cmd_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from fewshot.utils import resolve_device

    methods = resolve_methods(args.methods)
    settings = bench_settings(args, methods)
    if args.lake_runs:  # read them now, so a bad path fails before hours of training
        from fewshot.data.lake_runs import load_lake_runs

        load_lake_runs(args.lake_runs)
    out = Path(args.out)
    command = command_line(args, methods)
    claim_out(out, settings, command)
    test_set = test_dataset(args.root)
    episode_paths = write_episode_lists(out, test_set, args.seed, args.eval_episodes)
    device = str(resolve_device(args.device))
    records = []
    bar = tqdm(total=len(methods), desc="bench", unit="method", disable=args.quiet, dynamic_ncols=True)
    try:
        for method in methods:
            bar.set_description(f"bench: {method}")
            records.append(run_method(method, out, settings, args, episode_paths, bar))
            write_reports(out, records, settings, command, bool(args.lake_runs), device)
            bar.update(1)
    finally:
        bar.close()
    plot(records, out / "accuracy_vs_time.png")
    print(markdown(records, settings, command, bool(args.lake_runs), device).split("\n## ")[0].rstrip())
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'} and {out / 'accuracy_vs_time.png'}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="train and evaluate every method on Omniglot leave-alphabets-out; one table",
        description="For each method: train its omniglot-<method> recipe on Omniglot minimal without Korean, "
        "Balinese (test) and Early_Aramaic (validation), then evaluate the selected checkpoint on the test "
        "alphabets in 8 settings on shared episode lists. Rerun with the same --out to continue.")
    p.add_argument("--root", required=True, help="folder of the Omniglot release zips")
    p.add_argument("--methods", help="comma-separated (default: every method with an omniglot-<method> recipe)")
    p.add_argument("--budget-minutes", type=float, default=5.0, help="training time per method (default 5)")
    p.add_argument("--train-episodes", type=int,
                   help="an episode budget per method instead of the time budget (reproducible to the bit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-episodes", type=int, default=1000, help="test episodes per setting (default 1000)")
    p.add_argument("--val-episodes", type=int, help="validation episodes per check (default: the recipe's)")
    p.add_argument("--val-every", type=int, help="validate every N episodes (default: the recipe's)")
    p.add_argument("--lake-runs", help="all_runs.zip or its folder: adds the mean error over Lake's one-shot runs")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    p.add_argument("--out", required=True, help="bench folder (rerun with the same one to continue)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_bench)
