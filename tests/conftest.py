from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT_ROOT = Path(os.environ.get("FEWSHOT_OMNIGLOT_ROOT", REPO.parent / "shared" / "data" / "omniglot"))

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    if not (OMNIGLOT_ROOT / "images_background_small1.zip").exists():
        pytest.skip(f"Omniglot minimal zips not found in {OMNIGLOT_ROOT} (set FEWSHOT_OMNIGLOT_ROOT)")
    return OMNIGLOT_ROOT


@pytest.fixture(scope="session")
def omniglot_minimal(omniglot_root):
    from fewshot.data.omniglot import Omniglot

    return Omniglot(omniglot_root, "minimal")
