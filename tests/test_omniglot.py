from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fewshot.data import DataError, TaskSampler, omniglot, select_groups, split_by_groups
from fewshot.data.omniglot import Omniglot

EPISODES = [
    "episodes",
    "--dataset", "omniglot", "--split", "minimal", "--ways", "20", "--shots", "1", "--queries", "1",
    "--within-alphabet", "--count", "50",
]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fewshot", *args], capture_output=True, text=True)


def test_minimal_split_is_the_union_of_both_minimal_sets(omniglot_minimal):
    ds = omniglot_minimal
    groups = {g: len(cs) for g, cs in ds.groups().items()}
    assert ds.num_classes == 242 and len(groups) == 8
    assert groups["Japanese_(katakana)"] == 47 and groups["Latin"] == 26
    assert len(ds) == 242 * 20
    assert ds.images.shape == (4840, 1, 28, 28)
    # ink is 1: most pixels are paper (0)
    assert 0.02 < ds.images.mean() < 0.25 and ds.images.max() > 0.9


def test_rotations_quadruple_classes_and_keep_alphabets(omniglot_root):
    ds = Omniglot(omniglot_root, "minimal1", rotations=True)
    base = Omniglot(omniglot_root, "minimal1")
    assert ds.num_classes == 4 * base.num_classes
    name = base.class_names[0]
    c = ds.class_names.index(f"{name}/rot90")
    assert ds.class_groups[c] == base.class_groups[0]
    first = ds.items_per_class()[c][0]
    assert (ds.images[first] - base.images[0].rot90(1, dims=(1, 2))).abs().max() == 0


def test_flips_double_classes_mirror_images_and_keep_alphabets(omniglot_root):
    base = Omniglot(omniglot_root, "minimal1")
    ds = Omniglot(omniglot_root, "minimal1", rotations=True, flips=True)
    assert ds.num_classes == 8 * base.num_classes and len(ds) == 8 * len(base)
    name = base.class_names[3]
    c = ds.class_names.index(f"{name}/rot90/flip")
    assert ds.class_groups[c] == base.class_groups[3]
    first = ds.items_per_class()[c][0]
    expected = base.images[ds.items_per_class()[3][0]].rot90(1, dims=(1, 2)).flip(-1)
    assert (ds.images[first] - expected).abs().max() == 0
    unflipped = ds.items_per_class()[ds.class_names.index(f"{name}/rot90")][0]
    assert (ds.images[first] - ds.images[unflipped]).abs().max() > 0


def test_image_size_is_configurable(omniglot_root):
    assert Omniglot(omniglot_root, "minimal1", image_size=20).images.shape[-2:] == (20, 20)


def test_leave_alphabets_out_split_is_class_disjoint(omniglot_minimal):
    train, test = split_by_groups(omniglot_minimal, ["Korean", "Tagalog"])
    assert set(train.class_names).isdisjoint(test.class_names)
    assert set(test.class_groups) == {"Korean", "Tagalog"}
    assert train.num_classes + test.num_classes == 242
    assert set(train.item_ids).isdisjoint(test.item_ids)
    with pytest.raises(DataError, match="unknown alphabet"):
        split_by_groups(omniglot_minimal, ["Klingon"])
    with pytest.raises(DataError, match="no classes to train on"):
        split_by_groups(omniglot_minimal, sorted(set(omniglot_minimal.class_groups)))


def test_evaluation_may_select_every_alphabet(omniglot_minimal):
    everything = select_groups(omniglot_minimal, sorted(set(omniglot_minimal.class_groups)))
    assert everything.num_classes == 242
    korean = select_groups(omniglot_minimal, ["Korean"])
    assert korean.class_names == split_by_groups(omniglot_minimal, ["Korean"])[1].class_names
    with pytest.raises(DataError, match=r"unknown alphabet.*Korean"):
        select_groups(omniglot_minimal, ["Klingon"])


def test_within_alphabet_tasks(omniglot_minimal):
    for spec in TaskSampler(omniglot_minimal, 20, 1, 1, 50, seed=7, within_group=True).specs():
        assert len({omniglot_minimal.class_groups[c] for c in spec.classes}) == 1


def test_missing_files_offline_say_what_to_put_where(tmp_path):
    with pytest.raises(DataError, match=r"images_evaluation\.zip .*in " + str(tmp_path)):
        Omniglot(tmp_path, "evaluation")


def test_offline_download_fails_with_a_clear_message(tmp_path, monkeypatch):
    import fewshot.data.omniglot as omniglot

    monkeypatch.setattr(omniglot, "RELEASE_URL", "http://127.0.0.1:9/omniglot")  # nothing listens there
    with pytest.raises(DataError, match=r"could not download .*put it at .*images_background\.zip"):
        Omniglot(tmp_path, "background", download=True)
    assert not list(tmp_path.iterdir())  # no partial file left behind


def test_download_checksum_mismatch_is_refused(tmp_path, omniglot_root):
    from fewshot.data.download import download_file

    url = (omniglot_root / "images_background_small1.zip").as_uri()
    with pytest.raises(DataError, match="expected"):
        download_file(url, tmp_path / "x.zip", ("sha256", "0" * 64))
    ok = download_file(url, tmp_path / "y.zip", ("sha256", omniglot.RELEASE_FILES["minimal1"].checksum[1]))
    assert ok.stat().st_size > 0


def test_extracted_folder_reads_like_the_zip(tmp_path, omniglot_root):
    import zipfile

    with zipfile.ZipFile(omniglot_root / "images_background_small1.zip") as zf:
        zf.extractall(tmp_path)
    from_folder = Omniglot(tmp_path, "minimal1")
    from_zip = Omniglot(omniglot_root, "minimal1")
    assert from_folder.item_ids == from_zip.item_ids
    assert (from_folder.images - from_zip.images).abs().max() == 0


def test_cli_episodes_reproducible_within_alphabet_disjoint(omniglot_root, tmp_path):
    first = run_cli(*EPISODES, "--root", str(omniglot_root), "--seed", "7", "--save", str(tmp_path / "t.json"))
    assert first.returncode == 0, first.stderr
    tasks = json.loads(first.stdout)
    assert len(tasks) == 50
    for task in tasks:
        assert task["ways"] == 20 and len(task["classes"]) == 20
        assert len({c["alphabet"] for c in task["classes"]}) == 1
        support = {s for c in task["classes"] for s in c["support"]}
        query = {q for c in task["classes"] for q in c["query"]}
        assert not support & query
        assert all(Path(s).parent.name == Path(c["name"]).name for c in task["classes"] for s in c["support"])
    assert json.loads((tmp_path / "t.json").read_text()) == tasks
    second = run_cli(*EPISODES, "--root", str(omniglot_root), "--seed", "7")
    assert second.stdout == first.stdout
    other = run_cli(*EPISODES, "--root", str(omniglot_root), "--seed", "8")
    assert other.stdout != first.stdout


def test_cli_too_many_ways_exits_2_naming_largest_alphabet(omniglot_root):
    args = [a if a != "20" else "50" for a in EPISODES]
    result = run_cli(*args, "--root", str(omniglot_root), "--seed", "7")
    assert result.returncode == 2
    assert "47 classes" in result.stderr and "Japanese_(katakana)" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [["--ways", "0"], ["--split", "nope"], ["--bogus"], ["--shots", "19", "--queries", "2"], ["--ways", "x"]],
)
def test_cli_bad_arguments_exit_2_with_one_line(omniglot_root, args):
    result = run_cli("episodes", "--root", str(omniglot_root), *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1

