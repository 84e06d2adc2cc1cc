"""Recipes: named sets of the settings chosen on validation; command-line flags override them."""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    # Chosen on leave-alphabets-out validation within `minimal` (docs/results.md lists the runs behind each).
    "omniglot-protonet": {
        "method": "protonet",
        "backbone": "conv4",
        "dataset": "omniglot",
        "split": "minimal",
        "rotations": True,
        "ways": 60,
        "shots": 1,
        "queries": 5,
        "lr": 1e-3,
        "lr_schedule": "cosine",
        "augment": "rotation=10,shear=5,scale=0.9:1.1,shift=0.08",
        "episodes": 1_000_000,
        "time_budget": 600,
        "val_every": 250,
    },
    # The three recipes below were set from short synthetic-glyph runs and one Omniglot leave-alphabets-out
    # run each (docs/results.md); they have not been swept on Omniglot validation like omniglot-protonet.
    "omniglot-siamese": {
        "method": "siamese",
        "method_options": "loss=triplet,margin=0.5,mining=batch_hard",
        "backbone": "conv4",
        "dataset": "omniglot",
        "split": "minimal",
        "rotations": True,
        "ways": 30,
        "shots": 1,
        "queries": 5,
        "lr": 1e-3,
        "lr_schedule": "cosine",
        "augment": "rotation=10,shear=5,scale=0.9:1.1,shift=0.08",
        "episodes": 1_000_000,
        "time_budget": 600,
        "val_every": 250,
    },
    "omniglot-relationnet": {
        "method": "relationnet",
        "backbone": "conv4",
        "dataset": "omniglot",
        "split": "minimal",
        "rotations": True,
        "ways": 20,
        "shots": 1,
        "queries": 5,
        "lr": 1e-3,
        "lr_schedule": "cosine",
        "augment": "rotation=10,shear=5,scale=0.9:1.1,shift=0.08",
        "episodes": 1_000_000,
        "time_budget": 600,
        "val_every": 250,
    },
    "omniglot-matchingnet": {
        "method": "matchingnet",
        "backbone": "conv4",
        "dataset": "omniglot",
        "split": "minimal",
        "rotations": True,
        "ways": 30,
        "shots": 1,
        "queries": 5,
        "lr": 1e-3,
        "lr_schedule": "cosine",
        "augment": "rotation=10,shear=5,scale=0.9:1.1,shift=0.08",
        "episodes": 1_000_000,
        "time_budget": 600,
        "val_every": 250,
    },
    "glyphs-protonet": {
        "method": "protonet",
        "backbone": "conv4",
        "dataset": "glyphs",
        "split": "background",
        "ways": 20,
        "shots": 1,
        "queries": 5,
        "lr": 2e-3,
        "lr_schedule": "cosine",
        "episodes": 1_000_000,
        "time_budget": 120,
        "val_every": 200,
    },
}


def get_recipe(name: str) -> dict[str, Any]:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe '{name}'; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name])
