#!/usr/bin/env bash
# Leave-alphabets-out over every alphabet of Omniglot `minimal`, not just Korean and Balinese: four folds, each
# holding out two alphabets for test and one more for validation (checkpoint selection only). Each fold trains
# the method's recipe from scratch within the budget (the whole machine, one fold at a time), then scores each
# held-out alphabet on its own: 20-way 1-shot within the alphabet (Lake's setting; Tagalog has 17 characters, so
# 5-way only there) and 5-way 1-shot, 5 queries per class, 1000 seeded tasks. Prints a table per alphabet and the
# mean over the seven 20-way alphabets (benchmarks/folds_table.py).
#
#   BUDGET=600 OUT=runs/folds bash benchmarks/alphabet_folds.sh protonet          # all four folds, ~45 minutes
#   BUDGET=600 OUT=runs/folds bash benchmarks/alphabet_folds.sh protonet F2 F3    # some of them
# A fold's run folder that already holds best.pt is not retrained (a link to an earlier run with the same
# settings works: fold F1 is leave_alphabets_out.sh's split).
#   VIEWS=1 TAG=protomaml-1view ... alphabet_folds.sh protomaml   # evaluate with that many test views instead of
#                                   the checkpoint's, into OUT/TAG_FOLD_ALPHABET_WAYSw.json (TAG: the method)
#   EVAL_FLAGS="--queries 1 --transductive-steps 10" TAG=protonet-q1-t10 ... alphabet_folds.sh protonet
#                                   # the same checkpoints evaluated otherwise (flags added to `fewshot evaluate`);
#                                   # RUNS=memorynet-w32 evaluates the run folders OUT/memorynet-w32_FOLD instead
#   FLAGS="--backbone-options hidden=(32,64,64,64)" TAG=memorynet-w32 ... alphabet_folds.sh memorynet
#                                   # a variant of the recipe: extra training flags, run folders OUT/TAG_FOLD
set -euo pipefail
ROOT=${ROOT:-../shared/data/omniglot}
BUDGET=${BUDGET:-600}
OUT=${OUT:-runs/folds}
method=$1; shift
TAG=${TAG:-$method}
FLAGS=${FLAGS:-}
run_name=$method
if [ -n "$FLAGS" ]; then
  [ "$TAG" != "$method" ] || { echo "FLAGS make a variant of the recipe: give it its own TAG" >&2; exit 2; }
  run_name=$TAG
fi
run_name=${RUNS:-$run_name}
EVAL_FLAGS=${EVAL_FLAGS:-}
views=()
[ -n "${VIEWS:-}" ] && views=(--test-views "$VIEWS")
declare -A FOLDS=(  # held-out alphabets : validation alphabet
  [F1]="Korean,Balinese:Early_Aramaic"
  [F2]="Japanese_(katakana),Tagalog:Sanskrit"
  [F3]="Sanskrit,Greek:Japanese_(katakana)"
  [F4]="Latin,Early_Aramaic:Sanskrit"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(F1 F2 F3 F4)
mkdir -p "$OUT"
for fold in "${names[@]}"; do
  holdout=${FOLDS[$fold]%%:*} val=${FOLDS[$fold]##*:}
  run="$OUT/${run_name}_${fold}"
  # shellcheck disable=SC2086
  [ -f "$run/best.pt" ] || [ -n "${RUNS:-}" ] || fewshot train --recipe "omniglot-$method" --root "$ROOT" --split minimal \
      --holdout-alphabets "$holdout" --val-alphabets "$val" --time-budget "$BUDGET" --seed 0 --out "$run" --quiet \
      $FLAGS
  IFS=, read -ra alphabets <<< "$holdout"
  for alphabet in "${alphabets[@]}"; do
    for ways in 20 5; do
      [ "$alphabet" = Tagalog ] && [ "$ways" = 20 ] && continue
      out="$OUT/${TAG}_${fold}_${alphabet}_${ways}w.json"
      [ -s "$out" ] || fewshot evaluate --checkpoint "$run" --dataset omniglot --root "$ROOT" --split minimal \
          --alphabets "$alphabet" --ways "$ways" --shots 1 --queries 5 --within-alphabet --episodes 1000 \
          --seed 0 "${views[@]}" $EVAL_FLAGS --json > "$out"
    done
  done
done
python "$(dirname "$0")/folds_table.py" "$OUT" "$TAG"
