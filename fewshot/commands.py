"""Sub-commands ``train``, ``evaluate``, ``predict`` and ``demo``.

Settings resolve in three layers: built-in defaults < ``--recipe`` < flags given on the command line.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from fewshot.data import (
    DataError,
    FewShotDataset,
    load_dataset,
    select_groups,
    split_by_fraction,
    split_by_groups,
)

TRAIN_DEFAULTS: dict[str, Any] = {
    "method": "protonet", "backbone": "conv4", "distance": "euclidean", "method_options": None,
    "backbone_options": None,
    "dataset": "omniglot", "root": None, "split": None, "image_size": 28, "rotations": False,
    "flips": False,
    "val_alphabets": None, "val_fraction": 0.2, "holdout_alphabets": None, "final": False,
    "ways": 60, "shots": 1, "queries": 5,
    "within_alphabet": False, "meta_batch": 1, "episodes": 5000, "time_budget": None,
    "lr": 1e-3, "lr_schedule": "cosine", "weight_decay": 0.0, "grad_clip": None, "augment": "none",
    "val_every": 500, "val_episodes": 300, "val_ways": 20, "val_shots": 1, "val_queries": 5,
    "val_within_alphabet": True, "test_views": 1, "test_augment": None,
    "transductive_steps": 0, "transductive_temperature": 1.0, "transductive_balance": 0,
    "seed": 0, "device": "auto", "precision": "auto", "channels_last": True, "init": None, "ensemble": 1,
}
TRANSDUCTIVE_HELP = ("metric methods: at test time, refine each task's classes this many times with its unlabelled "
                     "queries (soft k-means on the features), so that queries given together inform each other")
TEMPERATURE_HELP = ("the queries weigh in the transductive steps by softmax(logits * K / this), K shots per "
                    "class")
BALANCE_HELP = ("assume each task's queries are spread evenly over its classes (true of Lake's runs and of "
                "evaluate's episodes, which have Q queries per class; not of an arbitrary batch of images): this many "
                "Sinkhorn iterations give every class the same share of the queries' probabilities, in the "
                "prediction and in each transductive step (metric and MAML-family methods; with 0 steps, the "
                "prediction alone)")
FIXED_HEAD_METHODS = ("maml", "metasgd", "anil", "mann")
DATA_KEYS = ("dataset", "root", "split", "image_size", "rotations", "flips", "val_alphabets", "val_fraction",
             "holdout_alphabets", "final", "seed")


def parse_options(value: str | dict | None) -> dict[str, Any]:
    """``"margin=0.5,loss=triplet"`` -> ``{"margin": 0.5, "loss": "triplet"}`` (values read as Python literals;
    commas inside brackets belong to the value: ``"hidden=(32,64,64,64)"``)."""
    if not value:
        return {}
    if isinstance(value, dict):
        return dict(value)
    import ast
    import re

    options: dict[str, Any] = {}
    for item in re.split(r",(?![^()\[\]]*[)\]])", value):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise DataError(f"bad option {item!r}: write key=value pairs separated by commas, e.g. margin=0.5")
        try:
            options[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            options[key.strip()] = raw.strip()
    return options


def _alphabets(value: str | None) -> list[str] | None:
    return [a.strip() for a in value.split(",") if a.strip()] if value else None


# -- data ------------------------------------------------------------------------------------------
def prepare_training_data(s: dict[str, Any]) -> tuple[FewShotDataset, FewShotDataset | None]:
    """``(train, validation)`` from the settings; validation is ``None`` for a ``--final`` run.

    Held-out alphabets (``holdout_alphabets``) are removed from both; validation takes whole alphabets
    (``val_alphabets``, or a seeded ``val_fraction`` of the classes) and never rotated copies.
    """
    def open_set(extra_classes: bool) -> FewShotDataset:
        return load_dataset(s["dataset"], s["root"], s["split"], s["image_size"], seed=s["seed"],
                            rotations=extra_classes and s["rotations"], flips=extra_classes and s["flips"])

    plain = open_set(False)
    rotated = open_set(True) if (s["rotations"] or s["flips"]) and s["dataset"] == "omniglot" else plain
    holdout = _alphabets(s["holdout_alphabets"]) or []
    if holdout:
        plain, rotated = split_by_groups(plain, holdout)[0], split_by_groups(rotated, holdout)[0]
    if s["final"]:
        return rotated, None
    val_groups = _alphabets(s["val_alphabets"])
    if val_groups:
        return split_by_groups(rotated, val_groups)[0], split_by_groups(plain, val_groups)[1]
    train, val = split_by_fraction(plain, s["val_fraction"], seed=s["seed"])
    if rotated is plain:
        return train, val
    return split_by_groups(rotated, sorted(set(val.class_groups)))[0], val


def _fit_val_ways(s: dict[str, Any], val: FewShotDataset | None) -> None:
    """Shrink validation ways to what the validation classes allow, saying so."""
    if val is None:
        return
    groups = val.groups()
    largest = max(len(c) for c in groups.values()) if s["val_within_alphabet"] else val.num_classes
    if s["val_ways"] > largest:
        print(f"note: validation uses {largest}-way tasks (the validation classes allow no more)", file=sys.stderr)
        s["val_ways"] = largest


# -- train -----------------------------------------------------------------------------------------
def resolve_train_settings(args: argparse.Namespace) -> dict[str, Any]:
    from fewshot.recipes import get_recipe

    settings = dict(TRAIN_DEFAULTS)
    if args.recipe:
        try:
            settings.update(get_recipe(args.recipe))
        except KeyError as err:
            raise DataError(str(err.args[0])) from None
    flags = {k: v for k, v in vars(args).items() if k in TRAIN_DEFAULTS and v is not None}
    for options, owner in (("method_options", "method"), ("backbone_options", "backbone")):
        # Key by key over the recipe's options (--method-options workers=1 keeps its inner_lr), unless the flags
        # change the method (backbone) those options were for.
        if options in flags and settings[options] and flags.get(owner, settings[owner]) == settings[owner]:
            flags[options] = {**parse_options(settings[options]), **parse_options(flags[options])}
    settings.update(flags)
    return settings


def _test_augment(s: dict[str, Any]) -> str | None:
    """The transforms of the test views: as given, else the training augmentation, else the method's default."""
    from fewshot.data.augment import AugmentConfig

    if s["test_augment"] or s["test_views"] == 1:
        return s["test_augment"]
    return s["augment"] if AugmentConfig.from_string(s["augment"]).enabled else None


def build_train_config(s: dict[str, Any], train: FewShotDataset):
    from fewshot.methods import method_class
    from fewshot.training.checkpoint import ModelSpec
    from fewshot.training.trainer import TrainConfig
    from fewshot.utils import default_precision, resolve_device

    method_options = {"distance": s["distance"]} if s["method"] == "protonet" else {}
    method_options.update(parse_options(s["method_options"]))
    if s["method"] in FIXED_HEAD_METHODS and "ways" not in method_options:
        # a linear head needs as many outputs as the widest task it will see, in training or validation
        method_options["ways"] = max(s["ways"], s["val_ways"])
    parameters = inspect.signature(method_class(s["method"])).parameters
    if "image_size" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        method_options.setdefault("image_size", s["image_size"])  # methods that measure their feature size
    model = ModelSpec(s["method"], s["backbone"], method_options, parse_options(s["backbone_options"]),
                      train.image_shape(), invert=s["dataset"] in ("omniglot", "glyphs"),
                      test_views=s["test_views"], test_augment=_test_augment(s),
                      transductive_steps=s["transductive_steps"],
                      transductive_temperature=s["transductive_temperature"],
                      transductive_balance=s["transductive_balance"])
    precision = s["precision"]
    if precision == "auto":
        precision = default_precision(resolve_device(s["device"])) if model.build().bf16_training_safe else "fp32"
    fields = ("ways", "shots", "queries", "meta_batch", "episodes", "time_budget", "lr", "lr_schedule", "weight_decay",
              "grad_clip", "augment", "val_every", "val_episodes", "val_ways", "val_shots", "val_queries",
              "seed", "device", "channels_last", "init")
    return TrainConfig(model=model, precision=precision, val_within_group=s["val_within_alphabet"],
                       within_group=s["within_alphabet"],
                       data={k: s[k] for k in DATA_KEYS}, **{k: s[k] for k in fields})


def start_training(settings: dict[str, Any], out: Path, quiet: bool = False):
    """Create run folder ``out`` and train with the resolved ``settings``; returns the TrainResult."""
    from fewshot.training.trainer import Trainer

    if settings["method"] not in _methods():
        raise DataError(f"unknown method '{settings['method']}'; choose one of {', '.join(_methods())}")
    if (out / "last.pt").exists() or (out / ENSEMBLE_FILE).exists():
        raise DataError(f"{out} already holds a run; pass --resume {out} to continue it, or choose another --out")
    if settings["init"]:
        from fewshot.training.checkpoint import checkpoint_file

        settings["init"] = str(checkpoint_file(settings["init"]))  # fail before loading data; the file, in config.json
    train, val = prepare_training_data(settings)
    _fit_val_ways(settings, val)
    if settings["ensemble"] > 1:
        return train_ensemble(settings, train, val, out, quiet)
    trainer = Trainer(build_train_config(settings, train), train, val, out)
    return _fit(trainer, quiet)


#: The settings of an ensemble run (``train --ensemble M``), in its run folder beside ``member1/`` ... ``memberM/``.
ENSEMBLE_FILE = "ensemble.json"


def train_ensemble(settings: dict[str, Any], train: FewShotDataset, val: FewShotDataset | None, out: Path,
                   quiet: bool = False):
    """Train ``settings["ensemble"]`` members one after the other into ``out/member1`` ..., member ``i`` with seed
    ``seed + i`` on the same data split and ``1/M`` of the time budget (each its own episode budget), resuming a
    member that has started; then combine them into ``out/best.pt`` (:func:`combine_checkpoints`).

    Returns the TrainResult of the whole: its episodes and seconds summed over the members.
    """
    from fewshot.training.checkpoint import check_ensemble_member, combine_checkpoints
    from fewshot.training.trainer import Trainer, TrainResult
    from fewshot.utils import atomic_write_text

    if settings["ensemble"] < 2:
        raise DataError(f"--ensemble needs 2 or more members (got {settings['ensemble']})")
    members = settings["ensemble"]
    check_ensemble_member(build_train_config(settings, train).model, f"--ensemble {members}")  # before any training
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / ENSEMBLE_FILE, json.dumps(settings, indent=2))
    budget = settings["time_budget"] and settings["time_budget"] / members
    results = []
    for i in range(members):
        config = build_train_config({**settings, "time_budget": budget}, train)
        config.seed = settings["seed"] + i  # its own initialisation and episodes; the split stays the run's
        trainer = Trainer(config, train, val, out / f"member{i + 1}")
        if (trainer.run_dir / "last.pt").exists():
            trainer.resume()
        print(f"ensemble member {i + 1} of {members}", file=sys.stderr)
        results.append(_fit(trainer, quiet))
    combine_checkpoints([result.run_dir for result in results], out)
    print(f"combined the {members} members into {out / 'best.pt'}", file=sys.stderr)
    return TrainResult(out, sum(r.episodes for r in results), sum(r.elapsed_s for r in results), None,
                       [row for r in results for row in r.rows])


def _fit(trainer, quiet: bool):
    val = trainer.val_set
    print(f"training {trainer.config.model.method}/{trainer.config.model.backbone} on {trainer.train_set.describe()}"
          f"; validation: {val.describe() if val is not None else 'none (final run)'}", file=sys.stderr)
    result = trainer.fit(show_progress=not quiet)
    best = f", best validation accuracy {result.best_val_accuracy:.4f}" if result.best_val_accuracy else ""
    print(f"trained {result.episodes} episodes in {result.elapsed_s / 60:.1f} min{best}; run folder {result.run_dir}",
          file=sys.stderr)
    return result


#: Flags that ``train --resume`` applies; any other setting is refused (the run keeps its own).
RESUME_OVERRIDES = ("episodes", "time_budget", "backbone", "device")


def cmd_train(args: argparse.Namespace) -> int:
    from fewshot.training.trainer import TrainConfig, Trainer

    if not args.resume:
        if not args.out:
            raise DataError("train needs --out RUN, the folder to write the run into")
        start_training(resolve_train_settings(args), Path(args.out), args.quiet)
        return 0
    run = Path(args.resume)
    if not (run / "config.json").is_file() and not (run / ENSEMBLE_FILE).is_file():
        raise DataError(f"cannot resume {run}: it holds no config.json; is it a run folder?")
    ignored = [k for k, v in vars(args).items() if v is not None and k not in RESUME_OVERRIDES
               and (k in TRAIN_DEFAULTS or k in ("recipe", "out"))]
    if ignored:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(ignored))
        raise DataError(
            f"--resume continues {run} with the settings it started with (its config.json); {flags} cannot change "
            "them. Resume without those flags (only --episodes, --time-budget and --device may be given), or start "
            "a new run with --out"
        )
    if (run / ENSEMBLE_FILE).is_file():
        return _resume_ensemble(run, args)
    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    for key in ("episodes", "time_budget"):  # a resumed run may be given a larger budget
        if getattr(args, key) is not None:
            setattr(config, key, getattr(args, key))
    if args.backbone is not None:
        config.model.backbone = args.backbone  # resume() refuses a checkpoint of another backbone
    if args.device is not None:
        config.device = args.device
    train, val = prepare_training_data({**TRAIN_DEFAULTS, **config.data})  # runs from before a data key was added
    trainer = Trainer(config, train, val, run)
    trainer.resume()
    _fit(trainer, args.quiet)
    return 0


def _resume_ensemble(run: Path, args: argparse.Namespace) -> int:
    """Continue an ensemble run: members that have finished stop at once, the rest resume or start."""
    settings = {**TRAIN_DEFAULTS, **json.loads((run / ENSEMBLE_FILE).read_text())}
    for key in RESUME_OVERRIDES:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    train, val = prepare_training_data(settings)
    _fit_val_ways(settings, val)
    train_ensemble(settings, train, val, run, args.quiet)
    return 0


def _methods() -> list[str]:
    from fewshot.methods import METHODS

    return list(METHODS)


# -- evaluate --------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from fewshot.data import load_tasks, save_tasks
    from fewshot.data.lake_runs import load_lake_runs
    from fewshot.evaluation.evaluate import evaluate, evaluate_tasks
    from fewshot.training.checkpoint import load_model
    from fewshot.utils import default_precision, resolve_device

    device = resolve_device(args.device)
    model, spec = load_model(args.checkpoint, device, test_views=args.test_views,
                             transductive_steps=args.transductive_steps,
                             transductive_temperature=args.transductive_temperature,
                             transductive_balance=args.transductive_balance)
    precision = args.precision if args.precision != "auto" else default_precision(device)
    if args.lake_runs:
        channels, height, width = spec.image_shape
        runs = load_lake_runs(args.lake_runs, image_size=(height, width), channels=channels)
        result = {**evaluate_tasks(model, runs, device, precision), **_transduction(spec)}
        if args.json:
            print(json.dumps(result, indent=1))
        else:
            for run in result["runs"]:
                print(f"{run['run']}: error {100 * run['error_rate']:.1f}%")
            print(f"mean error over {len(result['runs'])} runs: {100 * result['error_rate']:.2f}%")
        return 0
    dataset = _evaluation_dataset(args, spec)
    if args.instances:
        return _evaluate_instances(args, model, dataset, device, precision)
    if args.episodes < 600 and not args.tasks:
        print(f"note: {args.episodes} episodes; publishable figures use at least 600", file=sys.stderr)
    from fewshot.data import TaskSampler

    if args.tasks:
        specs = load_tasks(args.tasks, dataset)
    else:
        specs = TaskSampler(dataset, args.ways, args.shots, args.queries, args.episodes, args.seed,
                            within_group=args.within_alphabet).specs()
    if args.save_tasks:
        save_tasks(args.save_tasks, dataset, specs)
    started = time.perf_counter()
    if args.confusions < 0:
        raise DataError(f"--confusions must be 0 or more (got {args.confusions})")
    result = evaluate(model, dataset, 0, 0, specs=specs, device=device, precision=precision,
                      progress=not args.json, confusions=args.confusions, temperature=spec.temperature)
    seconds = time.perf_counter() - started
    if args.csv:
        result.write_csv(args.csv)
    if args.json:
        print(json.dumps({**result.summary(), **_transduction(spec)}, indent=1))
    else:
        if spec.transductive:
            balance = (f"the queries' probabilities balanced over the classes ({spec.transductive_balance} Sinkhorn "
                       "iterations)" if spec.transductive_balance else "")
            refined = (f"each task's classes refined {spec.transductive_steps} times with its queries"
                       if spec.transductive_steps else "")
            print(f"transductive: {', '.join(filter(None, (refined, balance)))}, temperature "
                  f"{spec.transductive_temperature:g} (--transductive-steps 0 classifies each query on its own)")
        print(f"{result.ways}-way {result.shots}-shot, {result.episodes} episodes ({seconds:.1f} s): accuracy "
              f"{100 * result.accuracy:.2f}% ± {100 * result.ci95:.2f}% (95% CI); macro precision "
              f"{100 * result.precision_macro:.1f}%, recall {100 * result.recall_macro:.1f}%, "
              f"F1 {100 * result.f1_macro:.1f}%")
        print(f"calibration (temperature {spec.temperature:.3g}): expected calibration error "
              f"{100 * result.ece:.2f}%, negative log-likelihood {result.nll:.4f} per query")
        if result.per_group:
            print("per alphabet (group), each task within one:")
            for group in result.per_group:
                print(f"  {group['group']}: {100 * group['accuracy']:.2f}% ± {100 * group['ci95']:.2f}% "
                      f"({group['episodes']} episodes)")
            print(f"  mean over {len(result.per_group)} alphabets: {100 * result.group_mean:.2f}% "
                  f"± {100 * result.group_ci95:.2f}% (95% CI over alphabets, Student t)")
        if result.confused_pairs:
            print("most frequent errors (true -> predicted: share of all errors):")
            for pair in result.confused_pairs:
                print(f"  {pair['true']} -> {pair['predicted']}: {100 * pair['share']:.1f}% ({pair['count']} queries)")
    return 0


def _transduction(spec) -> dict[str, Any]:
    """What ``evaluate --json`` reports of the transductive setting, so that figures say how they were made."""
    return {"transductive_steps": spec.transductive_steps, "transductive_temperature": spec.transductive_temperature,
            "transductive_balance": spec.transductive_balance}


def _evaluation_dataset(args: argparse.Namespace, spec) -> FewShotDataset:
    """The classes ``evaluate`` and ``calibrate`` draw episodes from, preprocessed as the model's training images
    were (an image folder gets the checkpoint's size, channels and ink polarity, as ``predict`` gives it)."""
    if args.dataset == "folder":
        from fewshot.predict import load_image_folder

        if args.root is None:
            raise DataError("the folder dataset needs --root, a folder with one sub-folder of images per class")
        dataset = load_image_folder(spec, args.root)
    else:
        dataset = load_dataset(args.dataset, args.root, args.split, spec.image_shape[-1], seed=args.seed)
    if args.alphabets:
        dataset = select_groups(dataset, _alphabets(args.alphabets))
    return dataset


# -- calibrate -------------------------------------------------------------------------------------
def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit the temperature of a checkpoint's probabilities on labelled episodes and save it in the checkpoint."""
    from fewshot.data import TaskSampler
    from fewshot.evaluation.evaluate import fit_model_temperature
    from fewshot.training.checkpoint import checkpoint_file, load_model, read_checkpoint
    from fewshot.utils import atomic_torch_save, default_precision, resolve_device

    device = resolve_device(args.device)
    model, spec = load_model(args.checkpoint, device)
    precision = args.precision if args.precision != "auto" else default_precision(device)
    dataset = _evaluation_dataset(args, spec)
    if args.episodes < 100:
        raise DataError(f"--episodes {args.episodes} is too few to fit a temperature; use 100 or more (default 600)")
    specs = TaskSampler(dataset, args.ways, args.shots, args.queries, args.episodes, args.seed,
                        within_group=args.within_alphabet).specs()
    fit = fit_model_temperature(model, dataset, specs, device, precision, current=spec.temperature, progress=True)
    if "failed" in fit:
        raise DataError(f"cannot calibrate {args.checkpoint}: {fit['failed']}")
    temperature = fit["temperature"]
    before, after = (f"ECE {100 * fit[k]['ece']:.2f}%, NLL {fit[k]['nll']:.4f}" for k in ("before", "after"))
    print(f"temperature {spec.temperature:.4g} -> {temperature:.4g} on {len(specs)} {args.ways}-way "
          f"{args.shots}-shot episodes: {before} -> {after}")
    file = checkpoint_file(args.checkpoint)
    checkpoint = read_checkpoint(file)
    checkpoint["spec"]["temperature"] = temperature
    atomic_torch_save(checkpoint, file)
    print(f"saved in {file}; predict and evaluate now use it (calibrate on classes the model did not train on)",
          file=sys.stderr)
    return 0


def _evaluate_instances(args: argparse.Namespace, model, dataset: FewShotDataset, device, precision: str) -> int:
    from fewshot.evaluation.sequence import REPORTED_INSTANCES, instance_accuracy

    table = instance_accuracy(model, dataset, args.ways, args.instances, args.episodes, args.seed,
                              within_group=args.within_alphabet, device=device, precision=precision,
                              progress=not args.json)
    if args.json:
        print(json.dumps({"ways": args.ways, "instances": args.instances, "episodes": args.episodes,
                          "accuracy": {str(k): a for k, (a, _) in table.items()},
                          "ci95": {str(k): c for k, (_, c) in table.items()}}, indent=1))
        return 0
    print(f"{args.ways}-class sequences, {args.instances} instances per class, {args.episodes} episodes")
    for k, (accuracy, ci95) in table.items():
        if k in REPORTED_INSTANCES or k == args.instances:
            print(f"instance {k:>2}: {100 * accuracy:.1f}% ± {100 * ci95:.1f}%")
    return 0


# -- predict ---------------------------------------------------------------------------------------
def cmd_predict(args: argparse.Namespace) -> int:
    from fewshot.predict import predict
    from fewshot.training.checkpoint import load_model

    model, spec = load_model(args.checkpoint, test_views=args.test_views, transductive_steps=args.transductive_steps)
    if spec.transductive_balance and not args.balanced_queries:
        print(f"note: {args.checkpoint} balances its predictions over the classes, which assumes the queries "
              "are spread evenly over them; not assumed here (--balanced-queries if they are)", file=sys.stderr)
    predictions = predict(model, spec, args.support, args.query, skip_corrupt=args.skip_corrupt,
                          balanced_queries=args.balanced_queries)
    _print_predictions(predictions, args.json)
    return 0


def _print_predictions(predictions: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps([p.__dict__ for p in predictions], indent=1))
        return
    width = max([len(p.file) for p in predictions] + [4])
    print(f"{'file':<{width}}  {'predicted':<20} {'prob':>6}  runner-up")
    for p in predictions:
        runner = f"{p.runner_up} ({p.runner_up_probability:.3f})" if p.runner_up else "-"
        print(f"{p.file:<{width}}  {p.predicted:<20} {p.probability:>6.3f}  {runner}")


# -- memory ----------------------------------------------------------------------------------------
def cmd_memory(args: argparse.Namespace) -> int:
    """Write a memory from a support folder, add a class to it, or predict from it (memorynet checkpoints)."""
    from fewshot.methods.memorynet import Memory, MemoryNet
    from fewshot.predict import load_image_folder, load_queries, rank
    from fewshot.training.checkpoint import load_model

    needed = {"write": ("support", "--support DIR"), "add": ("images", "--class NAME --images FILE_OR_DIR..."),
              "predict": ("query", "--query FILE_OR_DIR...")}[args.action]
    if not getattr(args, needed[0]):
        raise DataError(f"memory {args.action} needs {needed[1]}")
    model, spec = load_model(args.checkpoint)
    if not isinstance(model, MemoryNet):
        raise DataError(f"{args.checkpoint} holds a '{spec.method}' model; 'fewshot memory' needs a memorynet "
                        "checkpoint (train one with --method memorynet)")
    if args.action == "write":
        support = load_image_folder(spec, args.support, args.skip_corrupt)
        memory = model.new_memory()
        memory.spec = spec.to_dict()
        for label, name in enumerate(support.class_names):
            memory = model.add_class(memory, name, support.images[torch.as_tensor(support.item_classes) == label])
        memory.save(args.memory)
        print(f"wrote {len(memory.class_names)} classes, {len(memory)} of {memory.capacity} slots, to {args.memory}",
              file=sys.stderr)
        return 0
    memory = Memory.load(args.memory)
    if args.action == "add":
        if not args.class_name:
            raise DataError("memory add needs --class NAME for the new class")
        _, images = load_queries(spec, args.images, args.skip_corrupt)
        memory = model.add_class(memory, args.class_name, images)
        memory.save(args.out or args.memory)
        print(f"added '{args.class_name}' from {len(images)} images; the memory now holds "
              f"{len(memory.class_names)} classes in {len(memory)} slots", file=sys.stderr)
        return 0
    files, images = load_queries(spec, args.query, args.skip_corrupt)
    logits = model.predict_memory(memory, images) / spec.temperature
    _print_predictions(rank(logits, memory.class_names, files), args.json)
    return 0


# -- ensemble --------------------------------------------------------------------------------------
def cmd_ensemble(args: argparse.Namespace) -> int:
    from fewshot.training.checkpoint import combine_checkpoints

    if Path(args.out, "best.pt").exists():
        raise DataError(f"{args.out} already holds a best.pt; choose another --out")
    spec = combine_checkpoints(args.checkpoints, args.out)
    print(f"wrote an ensemble of {spec.ensemble} {spec.method}/{spec.backbone} models to {Path(args.out, 'best.pt')}",
          file=sys.stderr)
    return 0


# -- demo ------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from fewshot.demo import run_demo

    run_demo(Path(args.out), minutes=args.minutes, seed=args.seed)
    return 0


# -- parsers ---------------------------------------------------------------------------------------
def _add_train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-train a method; writes a run folder",
                       description="Settings: built-in defaults < --recipe < flags given here.")
    p.add_argument("--recipe", help="named best settings, e.g. omniglot-protonet")
    p.add_argument("--method", help="protonet (default)")
    p.add_argument("--backbone", help="conv4 (default) | resnet12")
    p.add_argument("--distance", help="protonet: euclidean (default) | cosine")
    p.add_argument("--method-options", help="method keyword arguments, e.g. 'loss=triplet,margin=0.5'")
    p.add_argument("--backbone-options", help="backbone keyword arguments, e.g. 'hidden=32'")
    p.add_argument("--dataset", choices=("omniglot", "glyphs", "folder"))
    p.add_argument("--root")
    p.add_argument("--split")
    p.add_argument("--image-size", type=int)
    p.add_argument("--rotations", action=argparse.BooleanOptionalAction, default=None,
                   help="add rotated Omniglot classes, for training (every omniglot recipe does)")
    p.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None,
                   help="add mirrored Omniglot classes (of the rotated ones too), for training")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--val-alphabets", help="alphabets for validation, comma-separated")
    g.add_argument("--val-fraction", type=float, help="fraction of classes (whole alphabets) for validation")
    g.add_argument("--final", action="store_const", const=True, help="train on every class, no validation")
    p.add_argument("--holdout-alphabets", help="alphabets kept out of training and validation (your test set)")
    p.add_argument("--ways", type=int)
    p.add_argument("--shots", type=int)
    p.add_argument("--queries", type=int)
    p.add_argument("--within-alphabet", action="store_const", const=True,
                   help="draw each training task from one alphabet (harder negatives, like Lake's runs)")
    p.add_argument("--meta-batch", type=int, help="tasks per optimizer step (default 1)")
    p.add_argument("--episodes", type=int, help="episode budget (optimizer steps)")
    p.add_argument("--time-budget", type=float, help="wall-time budget in seconds")
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-schedule", choices=("cosine", "step", "constant"))
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--augment", help="e.g. 'rotation=10,shear=5,scale=0.9:1.1,shift=0.1,elastic=8:4' or none")
    p.add_argument("--val-every", type=int)
    p.add_argument("--val-episodes", type=int)
    p.add_argument("--val-ways", type=int)
    p.add_argument("--val-shots", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--ensemble", type=int, metavar="M",
                   help="metric methods whose weights are all in the backbone (protonet, siamese): train M members "
                   "one after the other (seeds S, S+1, ...; each 1/M of --time-budget) into RUN/member1 ... and "
                   "combine them into RUN/best.pt, the mean of their logits (default 1: one model)")
    p.add_argument("--test-views", type=int, help="metric methods, ANIL, Proto-MAML: average the features of "
                   "this many seeded transforms of each image at test time (default 1: none)")
    p.add_argument("--test-augment", help="the transforms of --test-views (default: --augment, else "
                   "'rotation=8,shear=5,scale=0.92:1.08,shift=0.05')")
    p.add_argument("--transductive-steps", type=int, help=TRANSDUCTIVE_HELP + " (default 0: none)")
    p.add_argument("--transductive-temperature", type=float, help=TEMPERATURE_HELP + " (default 1)")
    p.add_argument("--transductive-balance", type=int, metavar="ITERATIONS", help=BALANCE_HELP + " (default 0: none)")
    p.add_argument("--device", help="auto (default), cpu, cuda")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"))
    p.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False)
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from the weights of this run folder or .pt file instead of random ones (fine-tuning, "
                   "e.g. an Omniglot run on your --dataset folder): its backbone, which must be the same "
                   "(--backbone, --backbone-options, image channels), and the method's own weights if it is the same "
                   "method")
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _add_episode_arguments(p: argparse.ArgumentParser, purpose: str, episodes: int) -> None:
    """The seeded episodes a checkpoint is run on, and how: what ``evaluate`` and ``calibrate`` share."""
    p.add_argument("--dataset", choices=("omniglot", "glyphs", "folder"), default="omniglot")
    p.add_argument("--root")
    p.add_argument("--split")
    p.add_argument("--alphabets", help=f"{purpose} on these alphabets only, comma-separated")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--within-alphabet", action="store_true")
    p.add_argument("--episodes", type=int, default=episodes)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32")


def _add_evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="accuracy ± 95%% CI over seeded episodes, or Lake's runs")
    p.add_argument("--checkpoint", required=True, help="run folder or .pt file")
    _add_episode_arguments(p, "evaluate", episodes=1000)
    p.add_argument("--tasks", help="replay the task list in this JSON file")
    p.add_argument("--save-tasks", help="write the evaluated task list to this JSON file")
    p.add_argument("--csv", help="write per-episode scores to this CSV file")
    p.add_argument("--confusions", type=int, default=5, help="list the N most frequent (true, predicted) class "
                   "pairs among the errors (default 5; 0: none)")
    p.add_argument("--lake-runs", help="all_runs.zip or its folder: Lake et al.'s 20 one-shot runs")
    p.add_argument("--instances", type=int, help="sequence methods (mann): accuracy of the 1st..Nth presentation "
                   "of each class in sequences of --ways classes with this many images each")
    p.add_argument("--test-views", type=int, help="test-time views per image (metric methods, ANIL, Proto-MAML); "
                   "default: as trained")
    p.add_argument("--transductive-steps", type=int, help=TRANSDUCTIVE_HELP + "; default: as trained, 0 turns it off")
    p.add_argument("--transductive-temperature", type=float, help=TEMPERATURE_HELP + "; default: as trained")
    p.add_argument("--transductive-balance", type=int, metavar="ITERATIONS",
                   help=BALANCE_HELP + "; default: as trained, 0 turns it off")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)


def _add_calibrate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit the temperature of a checkpoint's probabilities on labelled episodes")
    p.add_argument("--checkpoint", required=True, help="run folder or .pt file; the temperature is saved in it")
    _add_episode_arguments(p, "calibrate (classes the model did not train on)", episodes=600)
    p.set_defaults(func=cmd_calibrate)


def register(sub: argparse._SubParsersAction) -> None:
    _add_train_parser(sub)
    _add_evaluate_parser(sub)
    _add_calibrate_parser(sub)

    p = sub.add_parser("predict", help="classify query images from a folder of labelled support images")
    p.add_argument("--checkpoint", required=True, help="run folder or .pt file")
    p.add_argument("--support", required=True, help="folder with one sub-folder of images per class")
    p.add_argument("--query", required=True, nargs="+", help="image files or folders")
    p.add_argument("--test-views", type=int, help="test-time views per image (metric methods, ANIL, Proto-MAML); "
                   "default: as trained")
    p.add_argument("--transductive-steps", type=int, help=TRANSDUCTIVE_HELP + "; default: as trained, 0 predicts "
                   "each query on its own")
    p.add_argument("--balanced-queries", action="store_true",
                   help="the query images are spread evenly over the support's classes: let a model saved with "
                   "--transductive-balance assume it (by default predict does not)")
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images with a warning")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("memory", help="memorynet: write a support folder into a memory file, add a class, predict")
    p.add_argument("action", choices=("write", "add", "predict"))
    p.add_argument("--checkpoint", required=True, help="memorynet run folder or .pt file")
    p.add_argument("--memory", required=True, help="memory file to write (write) or read (add, predict)")
    p.add_argument("--support", help="write: folder with one sub-folder of images per class")
    p.add_argument("--class", dest="class_name", help="add: name of the new class")
    p.add_argument("--images", nargs="+", help="add: image files or folders of the new class")
    p.add_argument("--out", help="add: write the extended memory here instead of over --memory")
    p.add_argument("--query", nargs="+", help="predict: image files or folders")
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images with a warning")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_memory)

    p = sub.add_parser("ensemble", help="combine runs of one metric method into one model (their features side by "
                       "side; for ProtoNet the mean of their logits)")
    p.add_argument("--checkpoints", required=True, nargs="+", help="run folders or .pt files, 2 or more")
    p.add_argument("--out", required=True, help="run folder to write best.pt into")
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("demo", help="train and evaluate a ProtoNet on synthetic glyphs (about two minutes)")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--minutes", type=float, default=2.0, help="training time")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)
