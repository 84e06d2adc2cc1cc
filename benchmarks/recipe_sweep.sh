#!/usr/bin/env bash
# The validation sweep behind the omniglot-protonet and omniglot-memorynet recipes (docs/results.md, "Recipe
# sweep"). Each variant trains on `minimal` without Korean and Balinese (never looked at here) and is scored on
# Early_Aramaic only: 300 seeded 20-way 1-shot within-alphabet tasks, every 250 episodes; the figure is the best
# of those. Two variants at a time, one thread each, 10 minutes each (about 5 minutes of the whole machine).
#
#   OUT=runs/sweep bash benchmarks/recipe_sweep.sh            # all variants, about 80 minutes
#   OUT=runs/sweep bash benchmarks/recipe_sweep.sh D_elastic  # some of them
#   VAL=Sanskrit OUT=runs/sweep_sanskrit bash benchmarks/recipe_sweep.sh A_base D_elastic  # another validation alphabet
#   SEED=1 VAL=Sanskrit OUT=runs/sweep_sanskrit_seed1 bash benchmarks/recipe_sweep.sh Z_el_flips  # another seed
# Variants start from the current recipe; all but Z and N say --no-flips to stay what they were before mirrored
# classes joined the protonet and memorynet recipes, and the protonet ones but ZW* keep the 64-channel Conv-4.
set -euo pipefail
ROOT=${ROOT:-../shared/data/omniglot}
OUT=${OUT:-runs/sweep}
BUDGET=${BUDGET:-600}
VAL=${VAL:-Early_Aramaic}
SEED=${SEED:-0}
AFFINE=rotation=10,shear=5,scale=0.9:1.1,shift=0.08
WIDTH64="--backbone-options hidden=64"  # the Conv-4 of the protonet recipe until session 11 (ZW*: the narrower one)
declare -A VARIANTS=(
  [A_base]="protonet --augment $AFFINE --no-flips $WIDTH64"
  [B_within]="protonet --augment $AFFINE --within-alphabet --no-flips $WIDTH64"
  [C_size40]="protonet --augment $AFFINE --image-size 40 --no-flips $WIDTH64"
  [D_elastic]="protonet --augment $AFFINE,elastic=1.5:4 --no-flips $WIDTH64"
  [E_el15_within]="protonet --augment $AFFINE,elastic=1.5:4 --within-alphabet --no-flips $WIDTH64"
  [F_el3]="protonet --augment $AFFINE,elastic=3:4 --no-flips $WIDTH64"
  [G_el_lr2]="protonet --augment $AFFINE,elastic=1.5:4 --lr 2e-3 --no-flips $WIDTH64"
  [H_el_q2]="protonet --augment $AFFINE,elastic=1.5:4 --queries 2 --no-flips $WIDTH64"
  [I_el_pools3]="protonet --augment $AFFINE,elastic=1.5:4 --backbone-options pools=3,hidden=64 --no-flips"
  [J_el2]="protonet --augment $AFFINE,elastic=2:4 --no-flips $WIDTH64"
  [S_siamese_el]="siamese --augment $AFFINE,elastic=1.5:4"
  [M_memorynet_el]="memorynet --augment $AFFINE,elastic=1.5:4 --no-flips"
  [R_relationnet_el]="relationnet --augment $AFFINE,elastic=1.5:4"
  [X_matchingnet_el]="matchingnet --augment $AFFINE,elastic=1.5:4"
  [K_el_wide96]="protonet --augment $AFFINE,elastic=1.5:4 --backbone-options hidden=96 --no-flips"
  [L_el_cosine]="protonet --augment $AFFINE,elastic=1.5:4 --method-options distance=cosine --no-flips $WIDTH64"
  [P_maml_fp32]="maml --precision fp32"
  [Q_maml_bf16]="maml --precision bf16"
  [U_maml_shared]="maml --method-options inner_steps=1,inner_lr=0.1,test_inner_steps=3,shared_head=True"
  [Z_el_flips]="protonet --augment $AFFINE,elastic=1.5:4 --flips $WIDTH64"
  [N_memorynet_el_flips]="memorynet --augment $AFFINE,elastic=1.5:4 --flips"
  [Z2_flips_shift12]="protonet --augment rotation=10,shear=5,scale=0.9:1.1,shift=0.12,elastic=1.5:4 --flips $WIDTH64"
  [Z3_flips_wide_affine]="protonet --augment rotation=10,shear=5,scale=0.85:1.15,shift=0.12,elastic=1.5:4 --flips $WIDTH64"
  # Z4_flips_splices242 and Z5_flips_splices968 (--splices 242 / 968, spliced characters) ran at commit de9d3d1
  [Z6_flips_size40]="protonet --augment $AFFINE,elastic=2.1:5.7 --flips --image-size 40 $WIDTH64"  # elastic scaled with the image
  [Z7_flips_size32]="protonet --augment $AFFINE,elastic=1.7:4.6 --flips --image-size 32 $WIDTH64"
  [V_metasgd_shared]="metasgd --method-options inner_steps=1,inner_lr=0.1,test_inner_steps=3,shared_head=True"
  # Proto-MAML as its recipe stood until session 9 (pairs of 20-way tasks, no augmentation), and trained like
  # omniglot-protonet (60-way, mirrored classes, elastic distortion, one task per step): its recipe since session 10
  [T0_protomaml]="protomaml --augment none --no-flips --ways 20 --meta-batch 2"
  # ZC_flips_centre (ink centring, --backbone-options centre=True) and ZB_flips_blurpool (anti-aliased max-blur
  # pooling, pooling=blur) ran at commit efcfc75; average pooling:
  [ZA_flips_avgpool]="protonet --augment $AFFINE,elastic=1.5:4 --flips --backbone-options pooling=avg,hidden=64"
  # Narrower first block (half the cost of a step), and wider last blocks on top of it
  [ZW_flips_first32]="protonet --augment $AFFINE,elastic=1.5:4 --flips --backbone-options hidden=(32,64,64,64)"
  [ZW2_flips_32_64_96_128]="protonet --augment $AFFINE,elastic=1.5:4 --flips --backbone-options hidden=(32,64,96,128)"
  [ZW3_flips_first16]="protonet --augment $AFFINE,elastic=1.5:4 --flips --backbone-options hidden=(16,64,64,64)"
  [ZW4_flips_16_32_64_64]="protonet --augment $AFFINE,elastic=1.5:4 --flips --backbone-options hidden=(16,32,64,64)"
  [T1_protomaml_protonet_training]="protomaml --augment $AFFINE,elastic=1.5:4 --flips --ways 60 --meta-batch 1"
  # The narrower first block for the memory meta-net and Proto-MAML (their recipes plus it)
  [NW_memorynet_first32]="memorynet --augment $AFFINE,elastic=1.5:4 --flips --backbone-options hidden=(32,64,64,64)"
  # The memory meta-net on ProtoNet's 60-way tasks, with widths 64 and with the narrower first block (session 14)
  [N60_memorynet_60way]="memorynet --augment $AFFINE,elastic=1.5:4 --flips --ways 60"
  [N60W_memorynet_60way_first32]="memorynet --augment $AFFINE,elastic=1.5:4 --flips --ways 60 --backbone-options hidden=(32,64,64,64)"
  [TW_protomaml_first32]="protomaml --augment $AFFINE,elastic=1.5:4 --flips --ways 60 --meta-batch 1 --backbone-options hidden=(32,64,64,64)"
  # Session 15: classifier pre-training (benchmarks/pretrain_probe.py --val Sanskrit --budget 300 --seed SEED
  # --backbone-options "hidden=(32,64,64,64)" --out runs/pretrain_sk/p300_sSEED), then the recipe from its weights
  # (--init), for BUDGET=300: half the sweep's time in each
  [ZH_pretrain300_then_episodic]="protonet --augment $AFFINE,elastic=1.5:4 --flips --backbone-options hidden=(32,64,64,64) --init runs/pretrain_sk/p300_s$SEED/best.pt"
  # Issue 4's recipes as they stand (S0, X0, R0) and with ProtoNet's session-11 training: mirrored classes and the
  # narrower first block (matching networks also 60-way, as ProtoNet)
  [S0_siamese]="siamese"
  [SW_siamese_flips_first32]="siamese --flips --backbone-options hidden=(32,64,64,64)"
  [X0_matchingnet]="matchingnet"
  [XW_matchingnet_60way_flips_first32]="matchingnet --ways 60 --flips --backbone-options hidden=(32,64,64,64)"
  [R0_relationnet]="relationnet"
  [RW_relationnet_flips_first32]="relationnet --flips --backbone-options hidden=(32,64,64,64)"
  # Session 16: ANIL as its recipe stands (a 5-row head, 3 test steps), with one test step, and with MAML's shared
  # head row (any number of ways) for one and for five inner steps (head-only steps are cheap)
  [W0_anil]="anil"
  [W1_anil_1step]="anil --method-options inner_steps=1,inner_lr=0.1,test_inner_steps=1"
  [W2_anil_shared]="anil --method-options inner_steps=1,inner_lr=0.1,test_inner_steps=1,shared_head=True"
  # Session 19: ProtoNet's recipe with transductive inference (10 soft k-means steps) in validation. Beside it ran
  # ZT1_transductive_training, the same with the refinement in the training loss too (Ren et al. 2018), through a
  # ProtoNet option since removed: validation 77.3 against 88.6% after 3500 episodes
  [ZT0_transductive]="protonet --augment $AFFINE,elastic=1.5:4 --flips --backbone-options hidden=(32,64,64,64) --transductive-steps 10"
  [W3_anil_shared_5steps]="anil --method-options inner_steps=5,inner_lr=0.1,test_inner_steps=5,shared_head=True"
  # Session 21: ZE1_average999 and ZE2_average995 (a moving average of the weights validated and saved, decay 0.999
  # and 0.995, each run's last.pt the trained weights of the same trajectory) ran at commit 237f00f; and two choices
  # first probed on Early_Aramaic (near its ceiling), again on Sanskrit with the recipe
  [ZP3_pools3]="protonet --backbone-options pools=3"
  [ZB2_within]="protonet --within-alphabet"
  # Session 21: ZO_pool_first, ZO2_pool_first2 and ZO1_pool_first1 (max-pooling before batch norm and ReLU in every
  # block, in the first two, in the first one: --backbone-options pool_first=4, 2, 1) ran at commit ed314b7
  # ZX1_auxiliary1 and ZX3_auxiliary03 (an auxiliary cross-entropy over the 1088 training classes on the same
  # features, weight 1 and 0.3: --method-options auxiliary_classes=1088,auxiliary_weight=W) ran at commit fcaca33
  # Matching networks: the recipe as it stands, and its cosine attention starting from scale 30 instead of 10
  [X1_matchingnet_recipe]="matchingnet"
  [XS_matchingnet_scale30]="matchingnet --method-options scale=30"
  # Session 22: the relation network's recipe, with cross-entropy on its logits instead of the squared error of its
  # scores, and with a third pooled block (3x3 maps: a cheaper relation module); matching networks from scale 50
  [R1_relationnet_recipe]="relationnet"
  [R2_relationnet_ce]="relationnet --method-options class_pooling=mean,loss=ce"
  [R3_relationnet_pool3]="relationnet --method-options class_pooling=mean,embedding_pool_layers=3"
  [XS50_matchingnet_scale50]="matchingnet --method-options scale=50"
  # both of the relation network's changes, on its 20-way tasks and on ProtoNet's 60-way ones
  [R4_relationnet_ce_pool3]="relationnet --method-options class_pooling=mean,loss=ce,embedding_pool_layers=3"
  [R5_relationnet_ce_pool3_60way]="relationnet --method-options class_pooling=mean,loss=ce,embedding_pool_layers=3 --ways 60"
  # Session 24: an auxiliary prototypical loss on the embedding maps, weights 1 and 0.1
  [RP1_relationnet_proto1]="relationnet --method-options class_pooling=mean,proto_weight=1"
  [RP01_relationnet_proto01]="relationnet --method-options class_pooling=mean,proto_weight=0.1"
  # and 2 queries per class in training instead of 5 (a fifth of the relation module's pairs per task), without and
  # with the auxiliary loss
  [RQ2_relationnet_queries2]="relationnet --queries 2"
  [RQ2P1_relationnet_queries2_proto1]="relationnet --queries 2 --method-options class_pooling=mean,proto_weight=1"
  [RQ1_relationnet_queries1]="relationnet --queries 1"
  # Session 25: ProtoNet's recipe as it stands, and with more classes per training task at the same 360 images
  # (120-way 2 queries per class, 180-way 1 query): harder negatives for every query at the same cost per episode
  [ZR0_protonet_recipe]="protonet"
  [ZM120_120way_q2]="protonet --ways 120 --queries 2"
  [ZM180_180way_q1]="protonet --ways 180 --queries 1"
  # Session 26: a learnable scale on ProtoNet's squared distances (metric scaling, Oreshkin et al. 2018), from 1
  [ZS1_euclidean_scale1]="protonet --method-options euclidean_scale=1"
  [ZS03_euclidean_scale03]="protonet --method-options euclidean_scale=0.3"
  [ZS3_euclidean_scale3]="protonet --method-options euclidean_scale=3"
  # and wider blocks, now that a 10-minute run on this CPU (bf16) trains past where validation levels off
  [ZC1_widths_32_64_128_128]="protonet --backbone-options hidden=(32,64,128,128)"
  [ZC2_widths_48_96_96_96]="protonet --backbone-options hidden=(48,96,96,96)"
  [ZC3_widths_64_128_128_128]="protonet --backbone-options hidden=(64,128,128,128)"
  [ZC4_widths_48_96_128_128]="protonet --backbone-options hidden=(48,96,128,128)"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(A_base B_within C_size40 D_elastic E_el15_within F_el3 G_el_lr2 H_el_q2 I_el_pools3 J_el2
                                  S_siamese_el M_memorynet_el R_relationnet_el X_matchingnet_el K_el_wide96 L_el_cosine
                                  P_maml_fp32 Q_maml_bf16 U_maml_shared V_metasgd_shared Z_el_flips N_memorynet_el_flips)
mkdir -p "$OUT"
train() {  # NAME METHOD FLAGS...
  local name=$1 method=$2; shift 2
  [ -f "$OUT/$name/best.pt" ] && return 0
  OMP_NUM_THREADS=1 fewshot train --recipe "omniglot-$method" --root "$ROOT" --split minimal \
      --holdout-alphabets Korean,Balinese --val-alphabets "$VAL" --time-budget "$BUDGET" --seed "$SEED" \
      --test-views 1 --out "$OUT/$name" --quiet "$@" > "$OUT/$name.log" 2>&1
}
for ((i = 0; i < ${#names[@]}; i += 2)); do
  for name in "${names[@]:i:2}"; do
    # shellcheck disable=SC2086
    train "$name" ${VARIANTS[$name]} &
  done
  wait
done
for name in "${names[@]}"; do
  awk -F, -v name="$name" 'NR > 1 && $6 != "" { if ($6 > best) { best = $6; ci = $7 }; n = $1 }
       END { printf "%-16s validation %.1f ± %.1f%%  (%d episodes)\n", name, 100 * best, 100 * ci, n }' \
      "$OUT/$name/metrics.csv"
done
