"""Small shared helpers: atomic file writes, seeding, device choice, work on replicas over threads."""

from __future__ import annotations

import copy
import ctypes
import functools
import itertools
import os
import random
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch


def _file_mode() -> int:
    """The permissions ``open`` would give a new file under the process's umask (``mkstemp`` gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()


def _atomic_replace(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)``, flush it to disk, then rename it onto ``path``: readers never see a half-written
    file, and after a crash or power loss ``path`` holds the old or the new content, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _FILE_MODE)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:  # not every platform opens directories
        return
    try:
        os.fsync(directory)
    except OSError:
        pass
    finally:
        os.close(directory)


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_replace(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_replace(path, lambda tmp: torch.save(obj, tmp))


@contextmanager
def eval_mode(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` in eval mode within the block; its previous mode is restored after, also on an error."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Mixed-precision context: ``bf16`` runs convolutions and matrix products in bfloat16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32 if it is in a 16-bit float type (as under autocast), else unchanged (fp64 stays fp64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX), where bf16 pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_precision(device: torch.device) -> str:
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


def _glibc(name: str) -> Callable[..., int] | None:
    """glibc's function ``name``, or ``None`` where the C library has none (macOS, musl, Windows)."""
    try:
        return getattr(ctypes.CDLL(None), name, None)
    except (OSError, TypeError):  # no C library to open by name None (Windows)
        return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    return _glibc("malloc_trim")


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h


def keep_freed_memory(trim_threshold_mb: int = 1024) -> bool:
    """Serve every allocation of this process from glibc's heap, and keep up to ``trim_threshold_mb`` of freed
    memory there for the next allocations; whether this platform could (glibc only).

    Why: glibc gives every block above its mmap threshold (at most 32 MiB) fresh pages from the kernel and hands
    them back when it is freed, so a training loop that frees and reallocates the same activations every step
    pays a page fault and a zeroing for every page of them, every step. The first Conv-4 block of a 60-way
    ProtoNet step holds 36 MB tensors in fp32: there, the faults cost more than the convolution itself, and
    keeping the pages made the whole step 1.25 times as fast in fp32 and 1.10 times in bf16
    (``benchmarks/training_step_speed.py``). Memory that piles up instead is released by :class:`HeapTrimmer` and
    :func:`release_free_memory`.
    """
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold_mb * 2**20))


def release_free_memory() -> bool:
    """Return the C heap's free pages to the operating system; whether this platform could (glibc only)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def resident_memory_mb() -> float | None:
    """This process's resident memory in MiB (Linux), else ``None``."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class HeapTrimmer:
    """Releases the C heap's free pages whenever resident memory has grown by ``slack_mb`` since the last release.

    Why: tensors of a few to a few tens of MB allocated and freed task after task (a relation network's pair maps,
    about 25 MB per 20-way task) come from glibc's heap once its adaptive mmap threshold has risen, and small
    tensors that outlive a task can keep the freed space from going back. On some runs, 300 validation tasks of a
    relation network then took the resident memory from 0.9 to 3 to 4.3 GB. Releasing after every tenth task cost 15 to
    32% of the evaluation time (the pages are faulted in again); releasing on growth costs nothing where the heap
    does not grow, and bounds it where it does.

    Args:
        slack_mb: growth that triggers a release.
        resident: the resident-memory reading (for tests); release: what releases (for tests).
    """

    def __init__(
        self, slack_mb: float = 256.0, resident: Callable[[], float | None] = resident_memory_mb,
        release: Callable[[], bool] = release_free_memory,
    ) -> None:
        self.slack_mb, self.resident, self.release = slack_mb, resident, release
        self.baseline = resident()
        self.releases = 0  # how many releases succeeded

    def step(self) -> None:
        """Read the resident memory; release the free pages if it has grown by more than the slack."""
        now = self.resident()
        if now is None:
            return
        if self.baseline is None or now < self.baseline:
            self.baseline = now
        elif now - self.baseline > self.slack_mb:
            self.releases += self.release()
            after = self.resident()
            self.baseline = now if after is None else after  # what a release leaves is in use


# -- work split over threads -------------------------------------------------------------------------
T = TypeVar("T")
R = TypeVar("R")
_POOLS: dict[int, ThreadPoolExecutor] = {}
os.register_at_fork(after_in_child=_POOLS.clear)  # a forked child has none of the parent's threads


def replica(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module``'s tree of modules that shares its parameters and buffers.

    ``functional_call`` swaps a module's attributes while it runs, so two threads cannot run through one module at
    once; each uses its own replica, and gradients still reach the one set of parameters.
    """
    memo = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, memo)


def map_on_replicas(
    fn: Callable[[torch.nn.Module, Sequence[T]], R], module: torch.nn.Module, items: Sequence[T], workers: int,
    device_type: str = "cpu",
) -> list[R]:
    """``[fn(replica_i, items[i::workers]) for i < workers]``, each call on its own thread and replica of ``module``.

    The threads take the caller's grad mode and autocast on ``device_type`` (both are per thread) and an equal share
    of its intra-op threads: on a CPU, whole tasks on each core keep both busy where the small batches of one task
    do not.
    """
    grad = torch.is_grad_enabled()
    mixed = torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    threads = max(1, torch.get_num_threads() // workers)

    def call(copy_: torch.nn.Module, part: Sequence[T]) -> R:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        with torch.set_grad_enabled(grad), torch.autocast(device_type, dtype=mixed[1], enabled=mixed[0]):
            return fn(copy_, part)

    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="fewshot-tasks")
    return list(_POOLS[workers].map(call, [replica(module) for _ in range(workers)],
                                    [items[i::workers] for i in range(workers)]))


def cpu_workers(device: torch.device, tasks: int) -> int:
    """Threads to split ``tasks`` independent tasks over: on a CPU one per intra-op thread (at most one per task),
    elsewhere one."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), tasks))
