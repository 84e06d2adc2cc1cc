"""Table of ``benchmarks/alphabet_folds.sh``: accuracy ± 95% CI per held-out alphabet, and their mean.

Reads ``OUT/METHOD_FOLD_ALPHABET_{20,5}w.json``. The mean is unweighted over alphabets (each alphabet is one
draw of "a new alphabet", as each of Lake's runs is), with two 95% intervals: one from the alphabets' own CIs
(``sqrt(sum ci^2) / n``), which covers only the sampling of tasks, and one from the spread of the alphabets'
accuracies (Student t, n - 1 degrees of freedom), which also covers which alphabets happened to be in ``minimal``:
the one to read when predicting accuracy on other alphabets.

    python benchmarks/folds_table.py runs/folds protonet
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from scipy import stats


def main() -> None:
    out, method = Path(sys.argv[1]), sys.argv[2]
    results: dict[tuple[str, str], dict[int, dict]] = {}
    for path in sorted(out.glob(f"{method}_F*_*w.json")):
        if not path.stat().st_size:
            continue
        fold, rest = path.stem.removeprefix(f"{method}_").split("_", 1)
        alphabet, ways = rest.rsplit("_", 1)
        results.setdefault((fold, alphabet), {})[int(ways.removesuffix("w"))] = json.loads(path.read_text())
    print("| fold | held-out alphabet | 20-way 1-shot within (%) | 5-way 1-shot within (%) |")
    print("|---|---|---|---|")
    for (fold, alphabet), by_ways in sorted(results.items()):
        cells = [f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}" if (r := by_ways.get(w)) else "n/a"
                 for w in (20, 5)]
        print(f"| {fold} | {alphabet} | {cells[0]} | {cells[1]} |")
    for ways in (20, 5):
        rows = [by_ways[ways] for by_ways in results.values() if ways in by_ways]
        if not rows:
            continue
        accuracies = [r["accuracy"] for r in rows]
        mean = statistics.fmean(accuracies)
        ci = sum(r["ci95"] ** 2 for r in rows) ** 0.5 / len(rows)
        line = f"\n{ways}-way mean over {len(rows)} alphabets: {100 * mean:.1f}% (error {100 * (1 - mean):.1f}%); "
        line += f"95% CI ± {100 * ci:.1f} over tasks"
        if len(rows) > 1:
            spread = statistics.stdev(accuracies)
            over_alphabets = stats.t.ppf(0.975, len(rows) - 1) * spread / len(rows) ** 0.5
            line += f", ± {100 * over_alphabets:.1f} over alphabets (standard deviation {100 * spread:.1f} points)"
        print(line)


if __name__ == "__main__":
    main()
