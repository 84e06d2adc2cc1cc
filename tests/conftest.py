from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
OMNIGLOT_ROOT = Path(os.environ.get("FEWSHOT_OMNIGLOT_ROOT", REPO.parent / "shared" / "data" / "omniglot"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per test process: the workers already keep every core busy, and two-thread convolutions
    # of these small batches gain less than a second process does. The CLI tests' subprocesses inherit it.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: one worker per core this process may run on, within a cgroup CPU quota if there is one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cores


@pytest.fixture(scope="session")
def omniglot_root() -> Path:
    if not (OMNIGLOT_ROOT / "images_background_small1.zip").exists():
        pytest.skip(f"Omniglot minimal zips not found in {OMNIGLOT_ROOT} (set FEWSHOT_OMNIGLOT_ROOT)")
    return OMNIGLOT_ROOT


@pytest.fixture(scope="session")
def omniglot_minimal(omniglot_root):
    from fewshot.data.omniglot import Omniglot

    return Omniglot(omniglot_root, "minimal")
