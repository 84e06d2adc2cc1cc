"""Markdown table of leave-alphabets-out runs made by ``benchmarks/leave_alphabets_out.sh``.

Each run folder ``NAME`` beside ``NAME_eval_20w.json`` and/or ``NAME_eval_5w.json`` gives one row: method, training
minutes and episodes (from ``metrics.csv``), episodes/s, and accuracy ± 95% CI of both evaluations.

    python benchmarks/results_table.py runs/loo
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path


def row(run: Path) -> str | None:
    evals = {w: run.parent / f"{run.name}_eval_{w}w.json" for w in (20, 5)}
    if not (run / "metrics.csv").is_file() or not any(p.is_file() for p in evals.values()):
        return None
    with open(run / "metrics.csv") as f:
        last = list(csv.DictReader(f))[-1]
    config = json.loads((run / "config.json").read_text())
    episodes, seconds = int(last["episode"]), float(last["elapsed_s"])
    cells = []
    for ways in (20, 5):
        text = evals[ways].read_text() if evals[ways].is_file() else ""
        if not text.strip():  # e.g. a 5-way MAML head cannot take 20-way tasks
            cells.append("n/a")
            continue
        result = json.loads(text)
        cells.append(f"{100 * result['accuracy']:.1f} ± {100 * result['ci95']:.1f}")
    train = f"{config['ways']}-way {config['shots']}-shot"
    return (f"| {config['model']['method']} | {cells[0]} | {cells[1]} | {seconds / 60:.1f} | {episodes} "
            f"| {episodes / seconds:.2f} | {train} |")


def main(folder: str) -> None:
    print("| method | 20-way 1-shot within-alphabet (%) | 5-way 1-shot within-alphabet (%) | training min "
          "| episodes | episodes/s | training tasks |")
    print("|---|---|---|---|---|---|---|")
    for run in sorted(p for p in Path(folder).iterdir() if p.is_dir()):
        line = row(run)
        if line:
            print(line)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/loo")
