"""benchmarks/probe_summary.py: the held-out mean of the four folds' probes and the paired comparison."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "probe_summary.py"
FOLDS = {"F1": ["Early_Aramaic", "Korean", "Balinese"], "F2": ["Sanskrit", "Japanese_(katakana)"],
         "F3": ["Japanese_(katakana)", "Sanskrit", "Greek"], "F4": ["Sanskrit", "Latin", "Early_Aramaic"]}


def write_probes(prefix: Path, accuracy: dict[str, float]) -> None:
    """Probe outputs as transductive_probe.py ends them: a table, then one JSON line."""
    for fold, alphabets in FOLDS.items():
        summary = {a: {"inductive": accuracy[a] - 5, "T1 balance10": accuracy[a]} for a in alphabets}
        Path(f"{prefix}_{fold}.probe.txt").write_text("Korean  inductive  90.0 ± 0.3\n" + json.dumps(summary) + "\n")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False)


HELD = ["Korean", "Balinese", "Japanese_(katakana)", "Sanskrit", "Greek", "Latin", "Early_Aramaic"]


def test_held_out_mean_and_paired_difference(tmp_path: Path) -> None:
    base = dict(zip(HELD, [98.0, 60.0, 94.0, 92.0, 99.0, 96.0, 91.0], strict=True))
    better = {a: v + (1.0 if a != "Greek" else -0.5) for a, v in base.items()}
    write_probes(tmp_path / "new", better)
    write_probes(tmp_path / "old", base)
    result = run(str(tmp_path / "new"), "--against", str(tmp_path / "old"))
    assert result.returncode == 0, result.stderr
    balanced = next(line for line in result.stdout.splitlines() if line.startswith("T1 balance10 |"))
    expected_mean = sum(better.values()) / 7
    assert f"{expected_mean:.2f} ±" in balanced
    assert f"{100 - expected_mean:.1f}%" in balanced
    paired = [line for line in result.stdout.splitlines() if "ahead on" in line]
    assert len(paired) == 2  # inductive and balanced, both in each set
    assert paired[1].startswith(f"T1 balance10 | {(6 * 1.0 - 0.5) / 7:+.2f} ±")
    assert "ahead on 6 of 7" in paired[1]


def test_missing_probe_says_what_to_run(tmp_path: Path) -> None:
    result = run(str(tmp_path / "absent"))
    assert result.returncode != 0
    assert "scored_folds.sh" in result.stderr and "absent_F1.probe.txt" in result.stderr


@pytest.mark.parametrize("content", ["Korean inductive 90.0\n", ""])
def test_unfinished_probe_is_named(tmp_path: Path, content: str) -> None:
    write_probes(tmp_path / "run", dict.fromkeys(HELD, 90.0))
    (tmp_path / "run_F3.probe.txt").write_text(content)
    result = run(str(tmp_path / "run"))
    assert result.returncode != 0 and "run_F3.probe.txt holds no probe summary" in result.stderr


def test_several_seeds_are_averaged_per_alphabet(tmp_path: Path) -> None:
    seed0 = dict(zip(HELD, [98.0, 60.0, 94.0, 92.0, 99.0, 96.0, 91.0], strict=True))
    seed1 = {a: v - (2.0 if a == "Balinese" else 0.5) for a, v in seed0.items()}
    write_probes(tmp_path / "s0", seed0)
    write_probes(tmp_path / "s1", seed1)
    write_probes(tmp_path / "old", dict.fromkeys(HELD, 90.0))
    result = run(str(tmp_path / "s0"), str(tmp_path / "s1"), "--against", str(tmp_path / "old"))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    mean_at = lines.index("mean of the 2 trainings, per alphabet first:")
    balanced = [line for line in lines if line.startswith("T1 balance10 |") and "ahead on" not in line]
    assert len(balanced) == 3  # each seed, then their mean
    mean = {a: (seed0[a] + seed1[a]) / 2 for a in HELD}
    expected = sum(mean.values()) / 7
    assert lines.index(balanced[2]) > mean_at and f"| {expected:.2f} ±" in balanced[2]
    assert f"{mean['Balinese']:.1f}" in balanced[2].split("|")[-1]
    paired = next(line for line in lines if line.startswith("T1 balance10 |") and "ahead on" in line)
    assert paired.startswith(f"T1 balance10 | {expected - 90.0:+.2f} ±")
