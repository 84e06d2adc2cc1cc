"""Tables of ``benchmarks/alphabet_folds.sh``: accuracy ± 95% CI per held-out alphabet, and their mean.

Reads ``OUT/METHOD_FOLD_ALPHABET_{20,5}w.json``. The mean is unweighted over alphabets (each alphabet is one
draw of "a new alphabet", as each of Lake's runs is), with two 95% intervals: one from the alphabets' own CIs
(``sqrt(sum ci^2) / n``), which covers only the sampling of tasks, and one from the spread of the alphabets'
accuracies (Student t, n - 1 degrees of freedom), which also covers which alphabets happened to be in ``minimal``:
the one to read when predicting accuracy on other alphabets.

With several methods it also prints one summary row per method (its means, the episodes each fold trained and the
training time, from the fold's ``metrics.csv``) and each method's difference from the first one, paired by
alphabet: the alphabets' spread is mostly shared by the methods (Balinese is hard for all of them), so the t
interval of the paired differences is far narrower than either mean's and says whether one method is ahead.

    python benchmarks/folds_table.py runs/folds protonet [siamese memorynet ...]
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

from scipy import stats

WAYS = (20, 5)
Results = dict[tuple[str, str], dict[int, dict]]  # (fold, alphabet) -> ways -> evaluate's JSON


def load(out: Path, method: str) -> Results:
    results: Results = {}
    for path in sorted(out.glob(f"{method}_F*_*w.json")):
        if not path.stat().st_size:
            continue
        fold, rest = path.stem.removeprefix(f"{method}_").split("_", 1)
        alphabet, ways = rest.rsplit("_", 1)
        results.setdefault((fold, alphabet), {})[int(ways.removesuffix("w"))] = json.loads(path.read_text())
    return results


def t_interval(values: list[float]) -> float:
    """Half-width of the 95% Student-t interval of the mean of ``values``."""
    return stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5


def accuracies(results: Results, ways: int) -> dict[tuple[str, str], float]:
    return {key: by_ways[ways]["accuracy"] for key, by_ways in results.items() if ways in by_ways}


def training(out: Path, method: str) -> list[tuple[int, float]]:
    """(episodes, seconds) of each fold's training run, from the last row of its ``metrics.csv``."""
    rows = []
    for path in sorted(out.glob(f"{method}_F[0-9]/metrics.csv")):
        with path.open() as f:
            last = list(csv.DictReader(f))[-1]
        rows.append((int(last["episode"]), float(last["elapsed_s"])))
    return rows


def print_method(results: Results) -> None:
    print("| fold | held-out alphabet | 20-way 1-shot within (%) | 5-way 1-shot within (%) |")
    print("|---|---|---|---|")
    for (fold, alphabet), by_ways in sorted(results.items()):
        cells = [f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}" if (r := by_ways.get(w)) else "n/a"
                 for w in WAYS]
        print(f"| {fold} | {alphabet} | {cells[0]} | {cells[1]} |")
    for ways in WAYS:
        rows = [by_ways[ways] for by_ways in results.values() if ways in by_ways]
        if not rows:
            continue
        mean = statistics.fmean(r["accuracy"] for r in rows)
        ci = sum(r["ci95"] ** 2 for r in rows) ** 0.5 / len(rows)
        line = f"\n{ways}-way mean over {len(rows)} alphabets: {100 * mean:.1f}% (error {100 * (1 - mean):.1f}%); "
        line += f"95% CI ± {100 * ci:.1f} over tasks"
        if len(rows) > 1:
            values = [r["accuracy"] for r in rows]
            line += (f", ± {100 * t_interval(values):.1f} over alphabets "
                     f"(standard deviation {100 * statistics.stdev(values):.1f} points)")
        print(line)


def print_summary(out: Path, methods: list[str], results: dict[str, Results]) -> None:
    first = methods[0]
    print(f"\n| method | 20-way mean (%) | 5-way mean (%) | 20-way minus {first}, paired (points) | "
          f"5-way minus {first}, paired (points) | episodes per fold | minutes per fold |")
    print("|---|---|---|---|---|---|---|")
    for method in methods:
        cells = []
        for ways in WAYS:
            values = list(accuracies(results[method], ways).values())
            cells.append(f"{100 * statistics.fmean(values):.1f} ± {100 * t_interval(values):.1f}"
                         if len(values) > 1 else "n/a")
        for ways in WAYS:
            mine, theirs = accuracies(results[method], ways), accuracies(results[first], ways)
            shared = sorted(set(mine) & set(theirs))
            differences = [100 * (mine[key] - theirs[key]) for key in shared]
            if method == first or len(differences) < 2:
                cells.append("")
                continue
            cells.append(f"{statistics.fmean(differences):+.1f} ± {t_interval(differences):.1f} "
                         f"({sum(d > 0 for d in differences)}/{len(differences)} ahead)")
        runs = training(out, method)
        cells.append(", ".join(str(episodes) for episodes, _ in runs))
        cells.append(f"{statistics.fmean(s for _, s in runs) / 60:.1f}" if runs else "")
        print(f"| {method} | " + " | ".join(cells) + " |")


def main() -> None:
    out, methods = Path(sys.argv[1]), sys.argv[2:]
    results = {method: load(out, method) for method in methods}
    for method in methods:
        if len(methods) > 1:
            print(f"\n## {method}\n")
        print_method(results[method])
    if len(methods) > 1:
        print_summary(out, methods, results)


if __name__ == "__main__":
    main()
