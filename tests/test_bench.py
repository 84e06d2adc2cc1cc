"""``fewshot bench`` end to end on Omniglot minimal, with tiny budgets (training runs in child processes)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot import bench
from fewshot.cli import main
from fewshot.data.lake_runs import write_lake_runs

pytestmark = pytest.mark.slow

TINY = ["--methods", "protonet,relationnet", "--train-episodes", "4", "--val-every", "2", "--val-episodes", "5",
        "--eval-episodes", "4", "--seed", "0"]


def _run(root: Path, out: Path, *extra: str) -> int:
    return main(["bench", "--root", str(root), *TINY, *extra, "--out", str(out)])


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv") as f:
        return list(csv.DictReader(f))


def _accuracies(out: Path) -> dict[tuple[str, str], tuple[str, str]]:
    return {(r["method"], r["setting"]): (r["accuracy"], r["ci95"]) for r in _rows(out)}


@pytest.fixture(scope="module")
def lake_runs(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    runs = []
    for _ in range(2):
        support = torch.from_numpy((rng.random((5, 1, 28, 28)) < 0.1).astype(np.float32))
        runs.append((support, support[[3, 1, 4, 0, 2]], torch.tensor([3, 1, 4, 0, 2])))
    return write_lake_runs(tmp_path_factory.mktemp("lake") / "all_runs", runs)


@pytest.fixture(scope="module")
def bench_a(omniglot_root, lake_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "a"
    assert _run(omniglot_root, out, "--lake-runs", str(lake_runs)) == 0
    return out


def test_writes_results_csv_markdown_and_plot(bench_a):
    rows = _rows(bench_a)
    assert len(rows) == 16
    assert {(r["method"], r["setting"]) for r in rows} == {
        (m, s.name) for m in ("protonet", "relationnet") for s in bench.SETTINGS}
    for r in rows:
        assert 0 <= float(r["accuracy"]) <= 1 and float(r["ci95"]) >= 0, r
        assert r["episodes"] == "4" and r["train_episodes"] == "4" and r["note"] == ""
        assert float(r["peak_memory_mib"]) > 50 and float(r["episodes_per_s"]) > 0
        assert 0 <= float(r["lake_error"]) <= 1
    assert {(r["ways"], r["shots"], r["within_alphabet"]) for r in rows if r["setting"] == "20way5shot-within"} == {
        ("20", "5", "True")}

    md = (bench_a / "results.md").read_text()
    assert "fewshot bench --root" in md and "--methods protonet,relationnet --train-episodes 4" in md
    assert f"--out {bench_a}" in md
    assert "| protonet (transductive, 10 steps, balanced) |" in md
    assert "| relationnet (transductive, 10 steps, balanced) |" in md
    assert "Lake runs error" in md
    anchors = md.split("## Published anchors (published figures, not ours)")[1]
    assert "Vinyals et al." in anchors and "| Prototypical networks | Snell et al. 2017 | 98.8 | 99.7 | 96 |" in anchors
    assert "humans 4.5%" in anchors and "Santoro et al. 2016" in anchors

    image = Image.open(bench_a / "accuracy_vs_time.png")
    image.load()
    assert image.format == "PNG" and image.size[0] > 500
    for s in bench.SETTINGS:
        assert (bench_a / "episodes" / f"{s.name}.json").is_file()


def test_interrupted_bench_resumes_and_same_seed_gives_identical_numbers(bench_a, omniglot_root, tmp_path,
                                                                         monkeypatch):
    out = tmp_path / "b"
    real = bench.train_in_child

    def killed(settings, run, show_progress):  # relationnet dies after its checkpoint at episode 2
        if settings["method"] == "relationnet":
            bench.train_method(settings, run, False, stop_after=2)
            raise KeyboardInterrupt
        return real(settings, run, show_progress)

    monkeypatch.setattr(bench, "train_in_child", killed)
    assert _run(omniglot_root, out, "--quiet") == 130
    assert (out / "runs" / "relationnet" / "last.pt").is_file()
    assert not (out / "runs" / "relationnet" / "training.json").exists()
    protonet_best = (out / "runs" / "protonet" / "best.pt").stat().st_mtime_ns

    trained = []

    def counted(settings, run, show_progress):
        trained.append(settings["method"])
        return real(settings, run, show_progress)

    monkeypatch.setattr(bench, "train_in_child", counted)
    assert _run(omniglot_root, out, "--quiet") == 0
    assert trained == ["relationnet"]  # protonet had finished: neither retrained nor re-evaluated
    assert (out / "runs" / "protonet" / "best.pt").stat().st_mtime_ns == protonet_best
    record = json.loads((out / "runs" / "relationnet" / "training.json").read_text())
    assert record["resumed_from"] == 2 and record["episodes"] == 4

    # Same seed, other --out: identical episodes and identical numbers (relationnet despite its interruption).
    for s in bench.SETTINGS:
        name = f"{s.name}.json"
        assert (out / "episodes" / name).read_bytes() == (bench_a / "episodes" / name).read_bytes()
    assert _accuracies(out) == _accuracies(bench_a)


def test_rerun_keeps_finished_work_and_redoes_only_what_is_missing(bench_a, omniglot_root, monkeypatch):
    def no_training(*args):
        raise AssertionError("a finished method was trained again")

    evaluated = []
    real_evaluate = bench.evaluate_setting

    def counted(model, dataset, specs, device):
        evaluated.append(len(specs[0].classes))
        return real_evaluate(model, dataset, specs, device)

    monkeypatch.setattr(bench, "train_in_child", no_training)
    monkeypatch.setattr(bench, "evaluate_setting", counted)
    before = _accuracies(bench_a)
    evaluations = bench_a / "runs" / "relationnet" / "evaluations.json"
    stamp = evaluations.stat().st_mtime_ns
    assert _run(omniglot_root, bench_a, "--quiet") == 0
    assert evaluated == [] and evaluations.stat().st_mtime_ns == stamp

    saved = json.loads(evaluations.read_text())
    del saved["20way1shot-across"]
    evaluations.write_text(json.dumps(saved))
    assert _run(omniglot_root, bench_a, "--quiet") == 0
    assert evaluated == [20]  # just the missing setting
    assert _accuracies(bench_a) == before


def test_unknown_method_and_other_settings_exit_2(bench_a, omniglot_root, tmp_path, capsys):
    assert main(["bench", "--root", str(omniglot_root), "--methods", "protonet,nosuch", "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nosuch" in err and "protonet" in err and "relationnet" in err
    assert not (tmp_path / "x").exists()

    assert main(["bench", "--root", str(omniglot_root), *TINY, "--seed", "1", "--out", str(bench_a)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "seed 1 (it has 0)" in err and "choose another --out" in err


def test_a_setting_the_method_cannot_do_is_na_with_the_reason(omniglot_root, tmp_path, monkeypatch):
    from fewshot.data import TaskSampler
    from fewshot.training.checkpoint import ModelSpec

    maml = ModelSpec("maml", "conv4", {"ways": 5}, {}, (1, 28, 28)).build().eval()
    test_set = bench.test_dataset(str(omniglot_root))
    specs = TaskSampler(test_set, 20, 1, 5, 1, seed=0, within_group=True).specs()
    result = bench.evaluate_setting(maml, test_set, specs, torch.device("cpu"))
    assert result["accuracy"] is None and result["note"].startswith("n/a: ValueError: this task has 20 classes")

    # A method whose training fails gets n/a rows with the reason, and the bench goes on.
    monkeypatch.setattr(bench, "train_in_child", lambda settings, run, show: {
        "status": "failed", "method": settings["method"], "error": "the loss became nan", "peak_rss_mib": 1.0})
    assert _run(omniglot_root, tmp_path / "c", "--quiet") == 0
    rows = _rows(tmp_path / "c")
    assert len(rows) == 16 and all(r["accuracy"] == "" and "the loss became nan" in r["note"] for r in rows)
    assert "| protonet | n/a |" in (tmp_path / "c" / "results.md").read_text()
    assert (tmp_path / "c" / "accuracy_vs_time.png").is_file()
