#!/usr/bin/env bash
# Leave-alphabets-out results on Omniglot `minimal`: for each method, train its recipe on every alphabet but
# Korean and Balinese (validation: Early_Aramaic, for checkpoint selection only) within a time budget, then
# evaluate the selected checkpoint on Korean and Balinese: 20-way and 5-way 1-shot within-alphabet, 1000
# seeded episodes each. Prints a markdown table (benchmarks/results_table.py).
#
#   BUDGET=300 OUT=runs/loo ROOT=../shared/data/omniglot bash benchmarks/leave_alphabets_out.sh protonet siamese
set -euo pipefail
ROOT=${ROOT:-../shared/data/omniglot}
BUDGET=${BUDGET:-300}
OUT=${OUT:-runs/loo}
mkdir -p "$OUT"
for method in "$@"; do
  run="$OUT/${method}_${BUDGET}s"
  [ -f "$run/best.pt" ] || fewshot train --recipe "omniglot-$method" --root "$ROOT" --split minimal \
      --holdout-alphabets Korean,Balinese --val-alphabets Early_Aramaic --time-budget "$BUDGET" --seed 0 \
      --out "$run" --quiet
  for ways in 20 5; do
    fewshot evaluate --checkpoint "$run" --dataset omniglot --root "$ROOT" --split minimal \
        --alphabets Korean,Balinese --ways "$ways" --shots 1 --queries 5 --within-alphabet --episodes 1000 \
        --seed 0 --json > "${run}_eval_${ways}w.json" || echo "$method: no ${ways}-way evaluation" >&2
  done
done
python "$(dirname "$0")/results_table.py" "$OUT"
