from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import precision_recall_fscore_support

from fewshot.backbones import Conv4
from fewshot.data.lake_runs import load_lake_runs, write_lake_runs
from fewshot.evaluation.evaluate import evaluate, evaluate_tasks
from fewshot.evaluation.metrics import episode_scores, mean_and_ci95
from fewshot.methods import ProtoNet
from fewshot.methods.relationnet import RelationNet
from fewshot.utils import HeapTrimmer
from tests.helpers import blob_dataset


def test_episode_scores_match_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.integers(0, 5, 30)
        predictions = np.where(rng.random(30) < 0.6, labels, rng.integers(0, 5, 30))
        ours = episode_scores(torch.as_tensor(predictions), torch.as_tensor(labels), 5)
        p, r, f, _ = precision_recall_fscore_support(labels, predictions, average="macro", zero_division=0,
                                                     labels=np.unique(labels))
        assert ours["accuracy"] == pytest.approx((labels == predictions).mean())
        assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx((p, r, f))


def test_ci95_is_196_standard_errors():
    values = [0.5, 0.7, 0.9, 0.6]
    mean, half = mean_and_ci95(values)
    assert mean == pytest.approx(0.675)
    assert half == pytest.approx(1.96 * np.std(values, ddof=1) / 2)


def test_evaluation_is_seeded_and_reports_fractions():
    from fewshot.data import load_dataset

    data = load_dataset("glyphs", split="evaluation", glyph_classes=30)
    model = ProtoNet(torch.nn.Flatten())  # raw pixels: a real but untrained metric
    a = evaluate(model, data, 5, 1, queries=3, episodes=50, seed=1)
    b = evaluate(model, data, 5, 1, queries=3, episodes=50, seed=1)
    c = evaluate(model, data, 5, 1, queries=3, episodes=50, seed=2)
    assert a.summary() == b.summary() and a.summary() != c.summary()
    assert 0.2 < a.accuracy <= 1 and 0 < a.ci95 < 0.2 and a.episodes == 50
    assert {"accuracy", "ci95", "episodes", "ways", "shots", "precision_macro", "recall_macro",
            "f1_macro"} <= set(a.summary())


def test_task_by_task_evaluation_checks_its_memory_after_every_task(monkeypatch):
    import fewshot.evaluation.evaluate as evaluation

    steps = []

    class Counting(HeapTrimmer):
        def step(self) -> None:
            steps.append(True)
            super().step()

    monkeypatch.setattr(evaluation, "HeapTrimmer", Counting)
    model = RelationNet(Conv4(hidden=8), channels=8)  # no batched classify: one task at a time
    evaluate(model, blob_dataset(), 3, 1, queries=2, episodes=25, seed=0)
    assert len(steps) == 25


def test_heap_trimmer_releases_only_after_the_slack_is_used_up():
    readings = iter([1000, 1100, 1250, 1300, 1050, 1300, 1320, 1200, 1460, 1460, 1500])
    released = []
    trimmer = HeapTrimmer(slack_mb=256, resident=lambda: next(readings), release=lambda: released.append(1) or True)
    trimmer.step()
    trimmer.step()  # 1100, 1250: within 256 of 1000
    assert trimmer.releases == 0
    trimmer.step()  # 1300: released, and 1050 after it is the new baseline
    assert trimmer.releases == 1 and trimmer.baseline == 1050
    trimmer.step()  # 1300: within the slack of 1050
    trimmer.step()  # 1320: released; the 1200 that stays is in use
    assert trimmer.releases == 2 and trimmer.baseline == 1200
    trimmer.step()  # 1460: released; nothing comes back
    trimmer.step()  # 1500: within the slack of 1460
    assert trimmer.releases == 3 == len(released) and trimmer.baseline == 1460


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_release_free_memory_returns_heap_pages_that_free_keeps():
    # Blocks below a fixed mmap threshold come from the heap; a block after each (too big to fit in any free space
    # left by the import of torch) keeps free() from shrinking it, so freeing the 1 MB blocks leaves the resident
    # memory where it was until the pages are released.
    script = """
import ctypes, sys
from fewshot.utils import release_free_memory
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallopt(-3, 16 << 20)  # M_MMAP_THRESHOLD: 16 MB, so 1 MB blocks come from the heap
def resident_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
blocks, pins = [], []
for _ in range(100):
    blocks.append(libc.malloc(1 << 20))
    ctypes.memset(blocks[-1], 1, 1 << 20)
    pins.append(libc.malloc(256 << 10))
for block in blocks:
    libc.free(block)
freed = resident_mb()
if not release_free_memory():
    sys.exit(3)
print(freed - resident_mb())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if result.returncode == 3:
        pytest.skip("this C library has no malloc_trim")
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) > 50  # of the 100 MB freed


def test_confused_pairs_count_every_pair_and_order_ties_by_class():
    from collections import Counter

    from fewshot.data import TaskSpec
    from fewshot.evaluation.evaluate import confusion_pairs, query_labels

    rng = np.random.default_rng(0)
    names = [f"c{i}" for i in range(13)]
    specs = [TaskSpec(rng.choice(13, 4, replace=False), np.zeros((4, 1), int), np.zeros((4, 3), int))
             for _ in range(200)]
    predictions = [rng.integers(0, 4, 12) for _ in specs]
    counted = Counter((names[s.classes[t]], names[s.classes[p]]) for s, y, ps in zip(specs, query_labels(specs),
                                                                                     predictions, strict=True)
                      for t, p in zip(y, ps, strict=True) if t != p)
    by_count_then_class = sorted(counted.items(), key=lambda kv: (-kv[1], names.index(kv[0][0]),
                                                                  names.index(kv[0][1])))
    pairs = confusion_pairs(specs, predictions, names, top=len(counted))
    assert [((p["true"], p["predicted"]), p["count"]) for p in pairs] == by_count_then_class
    assert sum(p["share"] for p in pairs) == pytest.approx(1.0)


@pytest.mark.parametrize("channels", [1, 3])
def test_a_loaded_model_computes_in_channels_last_with_the_same_logits(tmp_path, channels):
    from fewshot.training.checkpoint import ModelSpec, load_model, save_checkpoint

    torch.manual_seed(0)
    spec = ModelSpec("protonet", "conv4", {}, {}, (channels, 28, 28))
    save_checkpoint(tmp_path / "model.pt", spec.build().eval(), spec)
    loaded, _ = load_model(tmp_path / "model.pt")
    plain, _ = load_model(tmp_path / "model.pt", channels_last=False)
    assert loaded.backbone.blocks[1][0].weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.backbone.blocks[1][0].weight.is_contiguous()
    pooled = []
    loaded.backbone.blocks[0][2].register_forward_hook(lambda module, inputs, output: pooled.append(output))
    support, query = torch.rand(10, channels, 28, 28), torch.rand(6, channels, 28, 28)
    labels = torch.arange(5).repeat_interleave(2)
    with torch.no_grad():
        fast, reference = loaded(support, labels, query), plain(support, labels, query)
    assert pooled[0].is_contiguous(memory_format=torch.channels_last) and not pooled[0].is_contiguous()
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    assert not torch.equal(fast, torch.zeros_like(fast))


def test_confused_pairs_name_the_look_alike_classes():
    from tests.helpers import assert_cached_evaluation_matches_per_task, blob_dataset

    data = blob_dataset(num_classes=6, per_class=8)
    rng = np.random.default_rng(1)
    look_alike = (data.images[32:40] > 0.5).float() * 0.8  # class 4's square without its noise
    data.images[40:48] = look_alike + torch.from_numpy(rng.random((8, 1, 16, 16)).astype(np.float32) * 0.2)
    model = ProtoNet(torch.nn.Flatten())
    result = evaluate(model, data, 5, 1, queries=3, episodes=300, seed=0, confusions=50)
    wrong_queries = round((1 - result.accuracy) * 300 * 15)
    assert wrong_queries > 20
    assert sum(p["count"] for p in result.confused_pairs) == wrong_queries  # every error tallied once
    top_two = {(p["true"], p["predicted"]) for p in result.confused_pairs[:2]}
    assert top_two == {("class4", "class5"), ("class5", "class4")}
    assert result.confused_pairs[0]["share"] + result.confused_pairs[1]["share"] > 0.9
    assert [p["count"] for p in result.confused_pairs] == sorted((p["count"] for p in result.confused_pairs),
                                                                 reverse=True)
    assert len(evaluate(model, data, 5, 1, queries=3, episodes=300, seed=0, confusions=1).confused_pairs) == 1
    assert_cached_evaluation_matches_per_task(model, data)


def test_within_group_evaluation_scores_each_group_and_their_mean():
    from fewshot.data import TensorDataset
    from tests.helpers import blob_dataset

    blobs = blob_dataset(num_classes=6, per_class=8)
    images = blobs.images.clone()
    images[24:] = torch.rand(24, 1, 16, 16) * 0.2  # classes 3-5: noise only, nothing to tell them apart
    data = TensorDataset(images, blobs.item_classes, class_groups=["easy"] * 3 + ["hard"] * 3)
    model = ProtoNet(torch.nn.Flatten())
    result = evaluate(model, data, 3, 1, queries=3, episodes=200, seed=0, within_group=True)
    easy, hard = result.per_group
    assert (easy["group"], hard["group"]) == ("easy", "hard") and easy["episodes"] + hard["episodes"] == 200
    assert easy["accuracy"] > 0.95 and hard["accuracy"] < 0.6
    def group_of(row: dict) -> str:
        return "easy" if int(row["classes"].split()[0].removeprefix("class")) < 3 else "hard"

    for group in result.per_group:
        rows = [r["accuracy"] for r in result.per_episode if group_of(r) == group["group"]]
        assert group["episodes"] == len(rows) and group["accuracy"] == pytest.approx(np.mean(rows))
    assert result.group_mean == pytest.approx((easy["accuracy"] + hard["accuracy"]) / 2)
    assert result.group_ci95 > 5 * result.ci95  # two groups this different: the mean over groups is barely known
    assert {"per_group", "group_mean", "group_ci95"} <= set(json.loads(json.dumps(result.summary())))
    across = evaluate(model, data, 3, 1, queries=3, episodes=50, seed=0)  # tasks mix groups: nothing per group
    assert across.per_group == [] and "group_mean" not in across.summary()


def test_lake_runs_error_rate_per_run(tmp_path):
    rng = np.random.default_rng(0)
    runs = []
    for _ in range(3):
        support = torch.from_numpy((rng.random((4, 1, 16, 16)) > 0.7).astype(np.float32))
        order = rng.permutation(4)
        runs.append((support, support[order], order))  # each query is a copy of its own class image
    write_lake_runs(tmp_path / "all_runs", runs)
    named = load_lake_runs(tmp_path / "all_runs", image_size=16)
    model = ProtoNet(torch.nn.Flatten())
    result = evaluate_tasks(model, named)
    assert [r["run"] for r in result["runs"]] == ["run01", "run02", "run03"]
    assert result["error_rate"] == 0.0
    flipped = [(name, type(task)(**{**task.__dict__, "query_labels": (task.query_labels + 1) % 4}))
               for name, task in named]
    assert evaluate_tasks(model, flipped)["error_rate"] == 1.0


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fewshot", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    result = run_cli("train", "--dataset", "glyphs", "--split", "background", "--ways", "5", "--queries", "2",
                     "--episodes", "6", "--val-every", "3", "--val-episodes", "5", "--val-ways", "5",
                     "--precision", "fp32", "--out", str(run), "--quiet")
    assert result.returncode == 0, result.stderr
    return run


def test_cli_evaluate_json_keys(trained_run):
    result = run_cli("evaluate", "--checkpoint", str(trained_run), "--dataset", "glyphs", "--split", "evaluation",
                     "--ways", "5", "--shots", "1", "--queries", "3", "--episodes", "600", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert {"accuracy", "ci95", "episodes", "ways", "shots", "precision_macro", "recall_macro",
            "f1_macro"} <= set(out)
    assert out["episodes"] == 600 and out["ways"] == 5 and 0 <= out["accuracy"] <= 1
    assert len(out["confused_pairs"]) == 5 and {"true", "predicted", "count", "share"} == set(out["confused_pairs"][0])


def test_cli_calibrate_saves_a_temperature_that_lowers_nll(trained_run, tmp_path):
    import shutil

    from fewshot.training.checkpoint import load_model

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # the fixture's run is shared; calibrate rewrites its checkpoint
    episodes = ("--dataset", "glyphs", "--split", "evaluation", "--ways", "5", "--queries", "3", "--episodes", "200",
                "--seed", "3")
    start = load_model(run)[1].temperature  # fitted on the run's validation tasks at the end of training
    before = json.loads(run_cli("evaluate", "--checkpoint", str(run), *episodes, "--json").stdout)
    result = run_cli("calibrate", "--checkpoint", str(run), *episodes)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"temperature {start:.4g} -> ")
    temperature = load_model(run)[1].temperature
    assert temperature != start and f"-> {temperature:.4g} on 200 5-way 1-shot episodes" in result.stdout
    after = json.loads(run_cli("evaluate", "--checkpoint", str(run), *episodes, "--json").stdout)
    assert after["accuracy"] == before["accuracy"] and after["nll"] < before["nll"]
    too_few = run_cli("calibrate", "--checkpoint", str(run), *episodes[:-4], "--episodes", "10")
    assert too_few.returncode == 2 and "too few" in too_few.stderr


def test_cli_evaluate_lake_runs(trained_run, tmp_path):
    support = torch.rand(5, 1, 28, 28)
    write_lake_runs(tmp_path / "runs", [(support, support, [0, 1, 2, 3, 4])] * 2)
    result = run_cli("evaluate", "--checkpoint", str(trained_run), "--lake-runs", str(tmp_path / "runs"), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert [r["run"] for r in out["runs"]] == ["run01", "run02"] and 0 <= out["error_rate"] <= 1
    assert out["transductive_steps"] == 0  # the figure says whether the queries refined the classes
    result = run_cli("evaluate", "--checkpoint", str(trained_run), "--lake-runs", str(tmp_path / "runs"),
                     "--transductive-steps", "5", "--transductive-temperature", "0.5", "--transductive-balance", "4",
                     "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["transductive_steps"], out["transductive_temperature"], out["transductive_balance"]) == (5, 0.5, 4)
    refused = run_cli("evaluate", "--checkpoint", str(trained_run), "--lake-runs", str(tmp_path / "runs"),
                      "--transductive-steps", "-1")
    assert refused.returncode == 2 and "0 or more" in refused.stderr and "Traceback" not in refused.stderr


def test_cli_resume_with_another_backbone_exits_2(trained_run):
    result = run_cli("train", "--resume", str(trained_run), "--backbone", "resnet12", "--episodes", "8")
    assert result.returncode == 2
    assert "backbone conv4" in result.stderr and "Traceback" not in result.stderr


def test_cli_resume_refuses_settings_it_would_ignore(trained_run):
    result = run_cli("train", "--resume", str(trained_run), "--lr", "1e-4", "--grad-clip", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--grad-clip, --lr cannot change" in result.stderr


def test_cli_evaluate_missing_checkpoint_exits_2(tmp_path):
    result = run_cli("evaluate", "--checkpoint", str(tmp_path / "nope"), "--dataset", "glyphs")
    assert result.returncode == 2 and "does not exist" in result.stderr
