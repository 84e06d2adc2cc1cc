"""Summarise the four folds' transductive probes: validation accuracy per fold, and the mean over the seven
20-way held-out alphabets with a Student-t 95% interval over them (what to expect on a new alphabet).

    python benchmarks/probe_summary.py runs/scored/memorynet    # reads runs/scored/memorynet_F1.probe.txt .. F4
    python benchmarks/probe_summary.py runs/scored/memorynet --against runs/old/memorynet   # and paired by alphabet
    python benchmarks/probe_summary.py runs/scored/memorynet runs/scored/memorynet-s1   # two seeds, and their mean

With several prefixes (the same recipe trained with other seeds), each is summarised, then their mean: each alphabet's
accuracy averaged over the trainings first, the interval still over the seven alphabets. ``--against`` takes one or
more prefixes too and compares the two means, paired by alphabet.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats

# fold: (validation alphabet, held-out alphabets probed at 20 ways)
FOLDS = {"F1": ("Early_Aramaic", ["Korean", "Balinese"]), "F2": ("Sanskrit", ["Japanese_(katakana)"]),
         "F3": ("Japanese_(katakana)", ["Sanskrit", "Greek"]), "F4": ("Sanskrit", ["Latin", "Early_Aramaic"])}


def read_probe(path: Path) -> dict[str, dict[str, float]]:
    """The probe's closing JSON line: ``{alphabet: {variant: accuracy in percent}}``."""
    if not path.is_file():
        raise SystemExit(f"{path} not found: run benchmarks/scored_folds.sh with this OUT and TAG first")
    lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"{path} holds no probe summary: did the probe finish? (rerun scored_folds.sh)")
    return json.loads(lines[-1])


def read_folds(prefix: str) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Each fold's validation accuracies and each held-out alphabet's, ``{name: {variant: percent}}``."""
    validation: dict[str, dict[str, float]] = {}
    held_out: dict[str, dict[str, float]] = {}
    for fold, (val_alphabet, held) in FOLDS.items():
        probe = read_probe(Path(f"{prefix}_{fold}.probe.txt"))
        validation[fold] = probe[val_alphabet]
        held_out.update({alphabet: probe[alphabet] for alphabet in held})
    return validation, held_out


def t_interval(values: np.ndarray) -> float:
    """Half-width of the Student-t 95% interval of the mean of ``values`` (n,)."""
    return float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))


def mean_of(runs: list[tuple[dict, dict]]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """The per-fold and per-alphabet accuracies averaged over several trainings, for the variants all of them have."""
    def average(tables: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
        variants = [v for v in tables[0][next(iter(tables[0]))] if all(v in t[k] for t in tables for k in t)]
        return {key: {v: float(np.mean([t[key][v] for t in tables])) for v in variants} for key in tables[0]}
    return average([validation for validation, _ in runs]), average([held for _, held in runs])


def print_summary(validation: dict[str, dict[str, float]], held_out: dict[str, dict[str, float]]) -> None:
    print("variant | validation F1 / F2 / F3 / F4 (mean) | held-out mean ± 95% CI (7) | error | " +
          " ".join(held_out))
    for variant in validation["F1"]:
        val = [validation[fold][variant] for fold in FOLDS]
        held = np.array([held_out[alphabet][variant] for alphabet in held_out])
        print(f"{variant} | {' / '.join(f'{v:.1f}' for v in val)} ({np.mean(val):.2f}) | {held.mean():.2f} ± "
              f"{t_interval(held):.1f} | {100 - held.mean():.1f}% | " + " ".join(f"{a:.1f}" for a in held))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefixes", nargs="+", metavar="PREFIX",
                   help="run folders' prefix: PREFIX_F1.probe.txt ... PREFIX_F4.probe.txt; several: one per seed")
    p.add_argument("--against", nargs="+", metavar="PREFIX", help="another set of folds probed alike (one or more "
                   "seeds): print the held-out difference paired by alphabet (this minus that) for each variant both "
                   "have")
    args = p.parse_args()
    runs = [read_folds(prefix) for prefix in args.prefixes]
    for prefix, (validation, held_out) in zip(args.prefixes, runs, strict=True):
        if len(runs) > 1:
            print(f"{prefix}:")
        print_summary(validation, held_out)
    validation, held_out = mean_of(runs)
    if len(runs) > 1:
        print(f"mean of the {len(runs)} trainings, per alphabet first:")
        print_summary(validation, held_out)
    if args.against:
        _, other = mean_of([read_folds(prefix) for prefix in args.against])
        print(f"paired by alphabet, {' + '.join(args.prefixes)} minus {' + '.join(args.against)}:")
        for variant in held_out["Korean"]:
            if variant not in other["Korean"]:
                continue
            diff = np.array([held_out[a][variant] - other[a][variant] for a in held_out])
            print(f"{variant} | {diff.mean():+.2f} ± {t_interval(diff):.2f} | ahead on {(diff > 0).sum()} of "
                  f"{len(diff)} | " + " ".join(f"{d:+.1f}" for d in diff))


if __name__ == "__main__":
    main()
