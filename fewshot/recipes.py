"""Recipes: named sets of the settings chosen on validation; command-line flags override them.

docs/results.md lists the runs behind each recipe and how far each was tuned.
"""

from __future__ import annotations

from typing import Any

# What every Omniglot recipe shares: `minimal`, rotated characters as extra training classes, small affine
# augmentation (it beat no augmentation on leave-alphabets-out validation), cosine schedule, a time budget.
_OMNIGLOT: dict[str, Any] = {
    "backbone": "conv4",
    "dataset": "omniglot",
    "split": "minimal",
    "rotations": True,
    "shots": 1,
    "queries": 5,
    "lr": 1e-3,
    "lr_schedule": "cosine",
    "augment": "rotation=10,shear=5,scale=0.9:1.1,shift=0.08",
    "episodes": 1_000_000,
    "time_budget": 600,
    "val_every": 250,
}
# Test-time augmentation: each image's embedding is the mean over 16 seeded views drawn from the affine training
# augmentation (over three validation alphabets it beat views with elastic distortion as well, 83.2 against 82.6%
# on average; docs/results.md, "Recipe sweep" and "Session 6").
_VIEWS: dict[str, Any] = {**_OMNIGLOT, "test_views": 16, "test_augment": _OMNIGLOT["augment"]}
# The memory meta-net, matching networks and Proto-MAML: elastic distortion as well (it beat affine alone on
# inductive validation by 1.6 and 2.7 points for the first two; it did nothing for relation networks).
_ELASTIC: dict[str, Any] = {**_VIEWS, "augment": _OMNIGLOT["augment"] + ",elastic=1.5:4"}
# Transductive inference for the metric methods (protonet, siamese, matchingnet, memorynet): each task's classes
# are refined with its unlabelled queries by 10 soft k-means steps on the features, each query weighed by
# softmax(logits * K / temperature) at K shots. On the four folds' validation alphabets, 20-way 1-shot with one
# query per class as in Lake's runs, it gained 1.4 (relationnet) to 3.5 points, at a temperature chosen there per
# method from 0.05 to 2 (the methods' logits have different scales; matching networks' 1 became 3 when their
# attention's scale went from about 11 to 30). On the held-out alphabets: +2.6 to +2.9 points
# for protonet, memorynet, siamese and matchingnet (docs/results.md, "Session 19"). Not for the relation network
# until session 30: +1.0 ± 1.4 there (not significant), at 16 times its evaluation time (each step runs the relation
# module on every class-query pair again; docs/results.md, "Session 20"). Since session 30 the ProtoNet and relation
# network recipes balance the queries over the classes (``balance``, see ``--transductive-balance``), since
# session 32 the matching and siamese networks', and since session 33 the memory meta-net's (at 1, not 1.5).
def _transductive(temperature: float, balance: int = 0, steps: int = 10) -> dict[str, Any]:
    return {"transductive_steps": steps, "transductive_temperature": temperature, "transductive_balance": balance}


# Optimization methods: 5-way, second order, meta-batch 4 as in Finn et al. (2017) for Omniglot, with the
# inner step size that won on Omniglot-minimal validation (0.1 beat 0.4), and a 15-minute budget.
_OPTIMIZATION: dict[str, Any] = {
    **_OMNIGLOT,
    "method_options": "inner_steps=1,inner_lr=0.1,test_inner_steps=3",
    "augment": "none",
    "ways": 5,
    "val_ways": 5,
    "meta_batch": 4,
    "time_budget": 900,
}

RECIPES: dict[str, dict[str, Any]] = {
    # Swept on validation: 60-way training, rotations, augmentation, test views (docs/results.md). Mirrored
    # characters as classes too: +0.9 and +1.2 points on Sanskrit and Katakana validation (1 view).
    # A first block of 32 channels instead of 64 halves the cost of a step, so the budget trains twice the
    # episodes: 79.8 against 76.7% on Sanskrit validation (docs/results.md, "Session 11").
    # Widths 48, 96, 96, 96: +0.6 ± 0.6 points over the folds (paired) at 55-61% of the episodes; not adopted
    # (docs/results.md, "Session 28").
    # Balanced refinement since session 30: each step gives every class the same share of the queries' weights (10
    # Sinkhorn iterations), the prior that a task's queries are spread evenly over its classes, as in Lake's runs
    # (one query per class). On the folds' validation alphabets, 20-way 1-shot with one query per class, 92.3%
    # against 88.3% for the unbalanced refinement at 1.5. Temperature 1: the best mean of the balanced figure (which
    # evaluate uses) and the unbalanced one (which predict uses unless told the queries are balanced); 0.5 was 0.5
    # points better balanced and 1.3 worse unbalanced (docs/results.md, "Session 30").
    # Learning rate 2e-3 since session 34: on the four validation alphabets it tied 1e-3 at the full budget (92.4%)
    # and led by 1.3 points at a quarter of the episodes (a slow fp32 CPU's); held-out +0.3 ± 0.5 and +0.2 ± 0.6,
    # within noise. 30 or 40 ways per task won nothing in either regime ("Session 34").
    # No elastic distortion since session 37 (it had won 2.2 points on inductive validation in session 3): with the
    # balanced refinement, affine alone led on the four validation alphabets at the full budget (93.2 against 92.7%,
    # 4 of 4) and at a slow CPU's episode count (91.0 against 90.5%); held-out +0.7 ± 1.5 and +1.0 ± 2.5 (5 of 7
    # ahead each), most of it on Balinese. Half the affine ranges did worse (90.6%), 24x24 images no better (90.5%).
    # A second seed was level (91.0% both at 215 s; 0.4 behind on two folds at 15 minutes): over all fourteen paired
    # validation comparisons +0.25, at about a tenth more episodes; "no worse" rather than a gain ("Session 37").
    "omniglot-protonet": {**_VIEWS, "method": "protonet", "ways": 60, "lr": 2e-3, "flips": True,
                          "backbone_options": "hidden=(32,64,64,64)", **_transductive(1.0, balance=10)},
    # Set from synthetic-glyph runs and one Omniglot leave-alphabets-out run each. Siamese: elastic distortion
    # slowed batch-hard triplet training too much for the budget (validation 78.3% against 85.6%), so not here.
    # 16 test views (affine) helped siamese networks on validation, not relation networks. ProtoNet's mirrored classes
    # and narrower first block gained the siamese recipe 1.9 points on Sanskrit validation but nothing over the
    # alphabet folds (82.6% against 82.4%, paired +0.2 ± 1.5; docs/results.md, "Session 12"); they are here since
    # session 19, at twice the episodes per second, so that the fold runs behind the transductive figures are this
    # recipe's. Its refinement helps 1-shot tasks; on 5-shot ones, even with the temperature divided by the shots,
    # it cost 0.7 and 1.5 points in the bench (docs/results.md, "Session 20"): use --transductive-steps 0 there.
    # Balanced since session 32, at the same temperature: on the four folds' validation alphabets 91.8% against 87.8%
    # unbalanced; balanced 0.03 did 93.0%, but 0.1 has the best mean with the unbalanced figure ("Session 32").
    # The contrastive loss since session 39: batch-hard triplets collapsed the embedding to nearly one point (loss
    # stuck at the margin) for the first 3000 to 5000 episodes. At a slow CPU's 4400 episodes a fold was still
    # collapsed and the folds' validation alphabets scored 76.8% against 90.3% (balanced); at the full budget the
    # triplets had recovered and the two tie there (91.7 against 92.2% balanced, 87.6 against 86.9% unbalanced).
    # Temperature 0.03: the best on validation at both budgets, balanced and unbalanced (docs/results.md,
    # "Session 39").
    "omniglot-siamese": {**_OMNIGLOT, "method": "siamese", "ways": 30, "test_views": 16, "flips": True,
                         "backbone_options": "hidden=(32,64,64,64)", "method_options": "loss=contrastive,margin=0.5",
                         **_transductive(0.03, balance=10)},
    # Mean of the support maps: the recipe trains 1-shot and is also evaluated 5-shot (fewshot bench). Mirrored
    # classes and the first block of 32 channels since session 13: over the alphabet folds 81.7% against 80.5% at
    # 20-way 1-shot, paired +1.2 ± 1.5, ahead on 6 of 7 alphabets. The paper's squared error, not cross-entropy on
    # the logits: cross-entropy led by 4.9 points on a short Sanskrit sweep but not over the folds (-0.2 ± 0.8,
    # docs/results.md, "Session 22"). Two pooled embedding blocks (7x7 maps) as in the paper: a third (3x3 maps)
    # trained twice the episodes but lost 18.4 points on Balinese in fold F1 (docs/results.md, "Session 23").
    # Two training queries per class since session 24, not 5: 2.5 times fewer relation-module pairs per task; on
    # Sanskrit validation 74.4 against 68.9%, over the folds +0.4 ± 1.7 (ahead on 4 of 7; "Session 24").
    # Balanced refinement since session 30 (10 steps, temperature 0.3, 10 Sinkhorn iterations): unbalanced it had
    # gained about a point for 11 times the evaluation time (session 20); balanced, on the folds' validation
    # alphabets (300 tasks each), 91.3 / 86.1 / 92.2% against 87.3 / 76.0 / 81.5% inductive (Early_Aramaic, Sanskrit,
    # Katakana). 0.3 beat 0.1 and 1 there, balanced and by the mean with the unbalanced figure predict uses
    # (docs/results.md, "Session 30").
    "omniglot-relationnet": {**_OMNIGLOT, "method": "relationnet", "ways": 20, "queries": 2, "flips": True,
                             "backbone_options": "hidden=(32,64,64,64)", "method_options": "class_pooling=mean",
                             **_transductive(0.3, balance=10)},
    # Matching networks trained like ProtoNet since session 12 (60-way tasks, mirrored classes, the first block of 32
    # channels): over the alphabet folds 81.0% against 79.7% at 20-way 1-shot, ahead on 5 of 7 alphabets.
    # Cosine attention from scale 30 since session 21: the learned scale hardly moves from where it starts (10 -> 11,
    # 30 -> 30.6 in 10 minutes), and on Sanskrit validation 30 scored 76.2 against 73.3% for 10. The refinement's
    # temperature was scaled with it (1 chosen at scale 11, so 3; docs/results.md, "Session 21"). Balanced at 1 since
    # session 32: on the four folds' validation alphabets 92.7% against 87.3% for the unbalanced 3; balanced 0.3 did
    # 93.6%, but 1 has the best mean with the unbalanced figure that predict uses (ProtoNet's rule; "Session 32").
    "omniglot-matchingnet": {**_ELASTIC, "method": "matchingnet", "ways": 60, "flips": True,
                             "backbone_options": "hidden=(32,64,64,64)", "method_options": "scale=30",
                             **_transductive(1.0, balance=10)},
    # One shared head row (UNICORN-MAML): trained on 5-way tasks, they adapt to 20-way ones like Lake's runs.
    # Tested with the one step they train with: on Early_Aramaic three test steps broke 5-shot tasks (MAML 83.1%
    # against 95.2% with one step) and overshot with Meta-SGD's learned rates (docs/results.md).
    "omniglot-maml": {**_OPTIMIZATION, "method": "maml",
                      "method_options": "inner_steps=1,inner_lr=0.1,test_inner_steps=1,shared_head=True"},
    "omniglot-metasgd": {**_OPTIMIZATION, "method": "metasgd",
                         "method_options": "inner_steps=1,inner_lr=0.1,test_inner_steps=1,shared_head=True"},
    # ANIL with the same shared head row and one test step since session 16: on Sanskrit validation 82.9 against 75.4%
    # at 5-way 1-shot and 91.3 against 65.1% at 5-way 5-shot (three test steps had made 5 shots worse than 1), and it
    # takes 20-way tasks (54.7%); five inner steps did worse (docs/results.md, "Session 16").
    "omniglot-anil": {**_OPTIMIZATION, "method": "anil",
                      "method_options": "inner_steps=1,inner_lr=0.1,test_inner_steps=1,shared_head=True"},
    # Proto-MAML adapts its head only, on features of a backbone that it meta-trains like ProtoNet's: ProtoNet's
    # training (60-way tasks, mirrored classes, elastic distortion) and test views, one task per step. On Sanskrit
    # validation that training scored 71.5% against 63.8% for the 20-way pairs without augmentation this recipe
    # had until session 10, which overfit (94% training accuracy); 16 affine views then took 70.9% to 73.6%.
    # ProtoNet's first block of 32 channels since session 15: 1.9 times the episodes, and over the alphabet folds
    # 82.4% against 82.1% at 20-way 1-shot (views off), paired +0.3 ± 0.3, ahead on 6 of 7 alphabets.
    # Since session 36 its prediction is balanced over the classes (no refinement steps: it has no per-image features
    # to refine), at the temperature 0.5 chosen on the folds' validation alphabets: 92.6% against 84.8% inductive
    # (0.25: 92.6, 1: 92.1); on the held-out ones 90.5% against 84.1%, ahead on 7 of 7 (docs/results.md, "Session 36").
    "omniglot-protomaml": {**_ELASTIC, "method": "protomaml", "ways": 60, "val_ways": 20, "flips": True,
                           "backbone_options": "hidden=(32,64,64,64)", "time_budget": 900,
                           "method_options": _OPTIMIZATION["method_options"],
                           **_transductive(0.5, balance=10, steps=0)},
    # External memory. MemoryNet: a metric method, trained like ProtoNet for 15 minutes; mirrored classes gained
    # 0.9 points on Sanskrit validation. ProtoNet's first block of 32 channels gave 1.2 to 1.9 times the episodes
    # and the same accuracy over the alphabet folds (84.8% both, paired -0.1 ± 0.2); it is here since session 19,
    # so that the fold runs behind the transductive figures are this recipe's.
    "omniglot-memorynet": {**_ELASTIC, "method": "memorynet", "ways": 30, "time_budget": 900, "flips": True,
                           "backbone_options": "hidden=(32,64,64,64)", **_transductive(1.0, balance=10)},
    # MANN: Santoro et al.'s 5-class sequences of 10 instances per class, 16 per batch, 20x20 images as in the
    # paper, 15 minutes. lr 3e-3 left the plateau of guessing sooner than 1e-3 on glyph sequences. A 32-channel
    # encoder: twice the batches of the 64-channel one in the budget, and on Early_Aramaic validation both of its
    # seeds left the plateau (10th instance 64.8 and 87.3%) against one of two with 64 channels (56.4, 25.3);
    # 16 channels never left it (docs/results.md, "MANN"). Reads start with key strength 10, not the class's 20:
    # on Early_Aramaic validation 20 left the plateau within 4 minutes with 2 of 6 seeds, 10 with all 4 seeds on which
    # 20 had stayed there (docs/results.md, "Session 18").
    "omniglot-mann": {**_OMNIGLOT, "method": "mann", "ways": 5, "shots": 9, "queries": 1, "meta_batch": 16,
                      "val_ways": 5, "image_size": 20, "lr": 3e-3, "augment": "none", "time_budget": 900,
                      "backbone_options": "hidden=32", "method_options": "key_strength=10"},
    # The demo's: synthetic glyphs, two minutes.
    "glyphs-protonet": {
        "method": "protonet", "backbone": "conv4", "dataset": "glyphs", "split": "background", "ways": 20,
        "shots": 1, "queries": 5, "lr": 2e-3, "lr_schedule": "cosine", "episodes": 1_000_000, "time_budget": 120,
        "val_every": 200,
    },
}


def get_recipe(name: str) -> dict[str, Any]:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe '{name}'; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name])
