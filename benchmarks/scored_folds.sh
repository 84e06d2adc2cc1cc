#!/usr/bin/env bash
# The four leave-alphabets-out folds of Omniglot `minimal` (alphabet_folds.sh's), each trained for exactly the
# number of episodes the recipe's scored command (`--final --time-budget S`) trains, then probed at the recipe's
# inference on 20-way 1-shot tasks within each alphabet, one query per class (Lake's setting), and summarised.
#
# A fold run's time budget includes its validation checks and the scored run has none, so a fold trained for the
# recipe's time trains fewer episodes than the command that will be scored; an episode count does not depend on the
# machine's speed or load either. Measure the count first (nothing else running), e.g. for memorynet:
#
#   fewshot train --recipe omniglot-memorynet --root ../shared/data/omniglot --split minimal --final \
#       --time-budget 900 --seed 0 --out runs/final_memorynet --quiet
#   python -c "import torch; print(torch.load('runs/final_memorynet/last.pt', weights_only=False)['episode'])"
#
# then (two folds at a time, one thread each; a fold whose run folder holds best.pt is not retrained):
#
#   OUT=runs/scored bash benchmarks/scored_folds.sh memorynet 31161 1     # method, episodes, temperature
#   VAL_EVERY=1000 SEED=1 TAG=memorynet-s1 ... scored_folds.sh memorynet 31161 1
#
# The temperature is the recipe's `transductive_temperature`; the probe scores inductive, unbalanced and
# balanced (10 Sinkhorn iterations) inference. Tagalog (17 characters) is held out but not probed at 20 ways.
set -euo pipefail
ROOT=${ROOT:-../shared/data/omniglot}
OUT=${OUT:-runs/scored}
VAL_EVERY=${VAL_EVERY:-1000}
SEED=${SEED:-0}
[ $# -eq 3 ] || { echo "usage: scored_folds.sh METHOD EPISODES TEMPERATURE" >&2; exit 2; }
method=$1 episodes=$2 temperature=$3
TAG=${TAG:-$method}
here=$(dirname "$0")
mkdir -p "$OUT"
fold() {  # name, held-out alphabets, validation alphabet, alphabets to probe (validation first)
  local run="$OUT/${TAG}_$1"
  [ -f "$run/best.pt" ] || OMP_NUM_THREADS=1 fewshot train --recipe "omniglot-$method" --root "$ROOT" \
      --split minimal --holdout-alphabets "$2" --val-alphabets "$3" --episodes "$episodes" --time-budget 1000000 \
      --val-every "$VAL_EVERY" --seed "$SEED" --out "$run" --quiet > "$run.log" 2>&1
  OMP_NUM_THREADS=1 python "$here/transductive_probe.py" "$run" --root "$ROOT" --alphabets "$4" \
      --temperatures "$temperature" --balances 0,10 > "$run.probe.txt" 2> "$run.probe.log"
}
fold F1 "Korean,Balinese" Early_Aramaic "Early_Aramaic,Korean,Balinese" & first=$!
fold F2 "Japanese_(katakana),Tagalog" Sanskrit "Sanskrit,Japanese_(katakana)" & second=$!
wait $first; wait $second   # a failed fold stops the script: see OUT/TAG_FOLD.log and OUT/TAG_FOLD.probe.log
fold F3 "Sanskrit,Greek" "Japanese_(katakana)" "Japanese_(katakana),Sanskrit,Greek" & first=$!
fold F4 "Latin,Early_Aramaic" Sanskrit "Sanskrit,Latin,Early_Aramaic" & second=$!
wait $first; wait $second
python "$here/probe_summary.py" "$OUT/$TAG"
