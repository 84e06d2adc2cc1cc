#!/usr/bin/env bash
# Temperature scaling, measured honestly: for each checkpoint, the test alphabets' calibration before, the
# temperature fitted on the validation alphabet only (Early_Aramaic), then the test alphabets' calibration after.
# Checkpoints are copied first (calibrate rewrites the checkpoint it is given).
#
#   OUT=runs/calib bash benchmarks/calibration.sh runs/loo3/protonet_600s runs/loo3/memorynet_900s
set -euo pipefail
ROOT=${ROOT:-../shared/data/omniglot}
OUT=${OUT:-runs/calib}
TASKS=(--root "$ROOT" --split minimal --ways 20 --shots 1 --queries 5 --within-alphabet)
mkdir -p "$OUT"
echo "| checkpoint | temperature | test ECE before -> after | test NLL before -> after | test accuracy |"
echo "|---|---|---|---|---|"
for run in "$@"; do
  copy="$OUT/$(echo "$run" | tr '/' '_')"
  rm -rf "$copy" && cp -r "$run" "$copy"
  rm -f "$copy/calibration.json"
  fewshot evaluate --checkpoint "$copy" "${TASKS[@]}" --alphabets Korean,Balinese --seed 0 --json --confusions 0 \
    > "$copy.before.json"
  fewshot calibrate --checkpoint "$copy" "${TASKS[@]}" --alphabets Early_Aramaic --episodes 600 --seed 1 \
    > "$copy.calibrate.txt" 2>/dev/null
  fewshot evaluate --checkpoint "$copy" "${TASKS[@]}" --alphabets Korean,Balinese --seed 0 --json --confusions 0 \
    > "$copy.after.json"
  python - "$run" "$copy" <<'PY'
import json, sys
from fewshot.training.checkpoint import load_model
run, copy = sys.argv[1:]
before, after = (json.load(open(f"{copy}.{k}.json")) for k in ("before", "after"))
t = load_model(copy)[1].temperature
print(f"| {run} | {t:.3g} | {100 * before['ece']:.2f}% -> {100 * after['ece']:.2f}% | "
      f"{before['nll']:.3f} -> {after['nll']:.3f} | {100 * after['accuracy']:.1f}% |")
PY
done
