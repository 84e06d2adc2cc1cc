#!/usr/bin/env bash
# Fine-tuning with `fewshot train --init`: when a user's classes come from another domain and time is short, does
# starting from an Omniglot run beat random weights? The other domain here is the synthetic glyphs. For each budget,
# a ProtoNet (the glyphs-protonet recipe, with CHECKPOINT's backbone settings) trains on the glyph background
# classes once from random weights and once from CHECKPOINT; each is scored on the glyph evaluation classes (never
# trained on), 5-way and 20-way 1-shot, 1000 seeded tasks, one test view; so is CHECKPOINT with no glyph training.
#
#   bash benchmarks/init_transfer.sh runs/folds/protonet_F1      # about 10 minutes with the default budgets
#   BUDGETS="30 120" OUT=runs/init_transfer SEED=0 bash benchmarks/init_transfer.sh CHECKPOINT
set -euo pipefail
CHECKPOINT=$1
OUT=${OUT:-runs/init_transfer}
BUDGETS=${BUDGETS:-"30 120"}
SEED=${SEED:-0}
BACKBONE=${BACKBONE:-"hidden=(32,64,64,64)"}  # must be CHECKPOINT's: --init refuses another backbone

score() {  # checkpoint, output prefix
  for ways in 5 20; do
    [ -f "$2_${ways}w.json" ] || fewshot evaluate --checkpoint "$1" --dataset glyphs --split evaluation --ways "$ways" \
      --shots 1 --queries 5 --episodes 1000 --seed 1 --test-views 1 --json > "$2_${ways}w.json"
  done
}

mkdir -p "$OUT"
score "$CHECKPOINT" "$OUT/no-glyph-training"
for budget in $BUDGETS; do
  for start in random init; do
    run=$OUT/${start}_${budget}s
    extra=()
    [ "$start" = init ] && extra=(--init "$CHECKPOINT")
    [ -f "$run/best.pt" ] || fewshot train --recipe glyphs-protonet --backbone-options "$BACKBONE" \
      --time-budget "$budget" --val-every 50 --seed "$SEED" --quiet "${extra[@]}" --out "$run"
    score "$run/best.pt" "$OUT/${start}_${budget}s"
  done
done

python - "$OUT" "$BUDGETS" <<'PY'
import json, sys
from pathlib import Path

out, budgets = Path(sys.argv[1]), sys.argv[2].split()
print("| start | glyph training | episodes | 5-way 1-shot | 20-way 1-shot |\n|---|---|---|---|---|")
rows = [("CHECKPOINT, no glyph training", "none", "no-glyph-training", None)]
rows += [(f"{'random weights' if s == 'random' else 'CHECKPOINT (--init)'}", f"{b} s", f"{s}_{b}s", f"{s}_{b}s")
         for b in budgets for s in ("random", "init")]
for label, budget, prefix, run in rows:
    cells = []
    for ways in (5, 20):
        r = json.loads((out / f"{prefix}_{ways}w.json").read_text())
        cells.append(f"{100 * r['accuracy']:.1f} ± {100 * r['ci95']:.1f}")
    episodes = "" if run is None else (out / run / "metrics.csv").read_text().split()[-1].split(",")[0]
    print(f"| {label} | {budget} | {episodes} | {cells[0]} | {cells[1]} |")
PY
