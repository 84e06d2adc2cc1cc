"""Second-order MAML training speed and memory: ours against the ``higher`` library (0.2.1), same configuration.

Both sides meta-train the same Conv-4 (our module, identical initial weights) plus a linear head on the same
meta-batches of 8 Omniglot ``minimal`` tasks (28x28, 5-way 1-shot 5-query, drawn once by our ``TaskSampler``), with
5 inner SGD steps of size 0.1 on the support set, the second-order meta-gradient, and Adam (lr 1e-3) outside:

* higher: its canonical MAML pattern, per task ``with higher.innerloop_ctx(model, inner_opt,
  copy_initial_weights=False) as (fmodel, diffopt)``, ``diffopt.step(support_loss)`` per inner step, then
  ``(query_loss / 8).backward()``; one Adam step per meta-batch. Its BatchNorm layers run in training mode, so
  the support and the query batches are each normalised with their own statistics.
* ours: ``MAML.batch_loss`` (functional inner loop, ``torch.autograd.grad``), with ``query_statistics="query"``
  so that it computes exactly what the higher side computes; then backward and the Adam step. Four of our paths are
  timed: the Python loop over the tasks (each task's meta-gradient taken right after its loss, as higher does), the
  same loop split over one thread per intra-op thread (``workers``, the default on a CPU), ``torch.func.vmap`` over
  the meta-batch, and the loop with gradient checkpointing across the inner steps.

The sides run in one process, timed in interleaved blocks (the order rotated every round) so that machine noise
hits all of them alike, and the script prints tasks/s of each. Peak memory is measured for each side in a fresh
subprocess, as the rise of the resident set during one meta-batch after a warm-up one (the kernel's high-water mark,
``VmHWM``, reset through ``/proc/self/clear_refs``; ``torch.cuda.max_memory_allocated`` on a GPU): tracemalloc
does not see tensor memory, and separate processes keep one side's freed-but-cached memory from hiding the other's.
Then ``ratio: X`` (ours, default path, / higher). A numerical check computes the meta-gradient of one meta-batch on
every side from the same weights, in fp32 and in fp64, and prints the largest difference to higher's relative to
the largest entry of each gradient; exit status 1 above 1e-9 in fp64. The fp32 figure is printed only: five
second-order steps from a random initialisation amplify rounding, so the same arithmetic in another order (``vmap``'s
grouped convolutions and composite batch norm) already differs by about 1e-3 there.

With ``--compiled`` two more sides are timed: ``ours (compiled)``, the per-task meta-gradient written as one pure
function of the weights (``torch.func.grad`` of the query loss, whose inner loop takes ``torch.func.grad`` steps),
traced to aten operations by ``make_fx`` and compiled by Inductor (about two minutes, printed, untimed; its peak
memory is not measured), and ``ours (compiled, threads)``, the same generated with one-thread kernels and the
meta-batch split over one thread per intra-op thread. The bf16 side's meta-gradient is also compared with the
float64 one.

higher is pure Python and imports beside torch 2.13: ``pip install --no-deps higher==0.2.1``. From the repository
root::

    python benchmarks/bench_maml_vs_higher.py   # --root, --batches, --block, --warmup, --threads, --device, --compiled

On an idle machine: the script prints the load average and warns when other processes shared the CPUs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.backbones import Conv4
from fewshot.data import Task, TaskSampler, build_task
from fewshot.data.omniglot import Omniglot
from fewshot.methods.inner_loop import configure_batch_norm
from fewshot.methods.maml import MAML, vectorize_by_default, workers_by_default

REPO = Path(__file__).resolve().parent.parent
WAYS, SHOTS, QUERIES, META_BATCH, INNER_STEPS, INNER_LR, OUTER_LR, SEED = 5, 1, 5, 8, 5, 0.1, 1e-3, 0
SIDES = ("higher", "ours (loop)", "ours (threads)", "ours (vmap)", "ours (ckpt)", "ours (bf16)")
MAX_GRAD_DIFF = 1e-9  # in float64


def meta_batches(root: Path, count: int, device: torch.device) -> list[list[Task]]:
    """``count`` meta-batches of ``META_BATCH`` tasks from Omniglot ``minimal``, on ``device``."""
    dataset = Omniglot(root, "minimal")
    sampler = TaskSampler(dataset, WAYS, SHOTS, QUERIES, count * META_BATCH, seed=SEED)
    tasks = [build_task(dataset, sampler.spec(i)).to(device) for i in range(count * META_BATCH)]
    return [tasks[i : i + META_BATCH] for i in range(0, len(tasks), META_BATCH)]


def initial_models(device: torch.device) -> tuple[MAML, nn.Sequential]:
    """Our MAML and higher's ``Sequential(Conv4, Linear)`` with identical initial weights."""
    torch.manual_seed(SEED)
    reference = nn.Sequential(Conv4(), nn.Linear(64, WAYS))
    ours = MAML(copy.deepcopy(reference[0]), inner_steps=INNER_STEPS, inner_lr=INNER_LR, ways=WAYS,
                query_statistics="query")
    ours.head.load_state_dict(reference[1].state_dict())
    return ours.to(device), reference.to(device)


def higher_side(model: nn.Sequential) -> Callable[[list[Task]], None]:
    import higher

    outer = torch.optim.Adam(model.parameters(), lr=OUTER_LR)
    inner = torch.optim.SGD(model.parameters(), lr=INNER_LR)

    def step(tasks: list[Task]) -> None:
        model.train()
        outer.zero_grad()
        for task in tasks:
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(INNER_STEPS):
                    diffopt.step(F.cross_entropy(fmodel(task.support_images), task.support_labels))
                loss = F.cross_entropy(fmodel(task.query_images), task.query_labels)
                (loss / len(tasks)).backward()
        outer.step()

    return step


def our_side(model: MAML, vectorize: bool, workers: int | None, checkpoint: bool = False, bf16: bool = False
             ) -> Callable[[list[Task]], None]:
    """One meta-training step of ours; ``bf16``: the trainer's speed options on a CPU with native bfloat16
    (bf16 autocast, channels-last memory), with the default path otherwise."""
    model.vectorize, model.workers, model.checkpoint_steps = vectorize, workers, checkpoint
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    outer = torch.optim.Adam(model.parameters(), lr=OUTER_LR)
    device_type = next(model.parameters()).device.type

    def step(tasks: list[Task]) -> None:
        model.train()
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model.batch_loss(tasks)
        outer.zero_grad()
        loss.backward()
        outer.step()

    return step


class _TaskLoss(nn.Module):
    """One task's query loss after the inner loop, as a module, so that ``functional_call`` can swap its weights."""

    def __init__(self, model: MAML) -> None:
        super().__init__()
        self.model = model

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                query_labels: torch.Tensor) -> torch.Tensor:
        with configure_batch_norm(self.model.backbone, composite=True):
            logits = self.model.adapt(support, support_labels, query, WAYS, training=True, functional=True)
        return F.cross_entropy(logits, query_labels)


def compiled_side(model: MAML, workers: int = 1) -> Callable[[list[Task]], None]:
    """Our inner loop as one pure function of the weights (``torch.func.grad`` inside and out), traced to aten ops
    with ``make_fx`` and compiled by Inductor once: every task's meta-gradient is then one call of generated code.
    ``workers > 1``: the code is generated with one-thread kernels and the meta-batch split over that many threads of
    one intra-op thread each, as the eager ``workers`` path does (Inductor's kernels otherwise bring their own)."""
    from concurrent.futures import ThreadPoolExecutor

    import torch._inductor.config as inductor_config
    from torch.fx.experimental.proxy_tensor import make_fx

    task_loss = _TaskLoss(model)
    outer = torch.optim.Adam(model.parameters(), lr=OUTER_LR)
    meta_gradient = torch.func.grad(lambda weights, *task: torch.func.functional_call(task_loss, weights, task))
    compiled: list[Callable] = []
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    label = "ours (compiled)" if workers == 1 else "ours (compiled, threads)"

    def inputs(task: Task) -> tuple[torch.Tensor, ...]:
        return task.support_images, task.support_labels, task.query_images, task.query_labels

    def compile_once(weights: dict[str, torch.Tensor], task: Task) -> None:
        started = time.perf_counter()
        with inductor_config.patch({"cpp.threads": 1 if workers > 1 else -1}):
            compiled.append(torch.compile(make_fx(meta_gradient)(weights, *inputs(task)), fullgraph=True))
            fast = compiled[0](weights, *inputs(task))
        seconds = time.perf_counter() - started
        error = relative_error(list(fast.values()), list(meta_gradient(weights, *inputs(task)).values()))
        print(f"  {label}: traced and compiled in {seconds:.0f} s; its meta-gradient differs from "
              f"the uncompiled one by {error:.1e} (norm of the difference / norm)")

    def summed(weights: dict[str, torch.Tensor], tasks: list[Task], count: int) -> dict[str, torch.Tensor]:
        if pool is not None and torch.get_num_threads() != 1:
            torch.set_num_threads(1)
        total = dict.fromkeys(weights, 0.0)
        for task in tasks:
            grads = compiled[0](weights, *inputs(task))
            total = {name: total[name] + grads[name] / count for name in total}
        return total

    def step(tasks: list[Task]) -> None:
        weights = {name: p.detach() for name, p in task_loss.named_parameters()}
        if not compiled:
            compile_once(weights, tasks[0])
        if pool is None:
            total = summed(weights, tasks, len(tasks))
        else:
            parts = list(pool.map(summed, [weights] * workers, [tasks[i::workers] for i in range(workers)],
                                  [len(tasks)] * workers))
            total = {name: sum(part[name] for part in parts) for name in weights}
        for name, p in task_loss.named_parameters():
            p.grad = total[name]
        outer.step()

    return step


def build_side(name: str, device: torch.device) -> Callable[[list[Task]], None]:
    ours, reference = initial_models(device)
    if name == "higher":
        return higher_side(reference)
    if name.startswith("ours (compiled"):
        return compiled_side(ours, workers=workers_by_default(device, META_BATCH) if "threads" in name else 1)
    vectorize = name == "ours (vmap)" or (name == "ours (bf16)" and vectorize_by_default(device))
    workers = None if name in ("ours (threads)", "ours (bf16)") else 1
    return our_side(ours, vectorize=vectorize, workers=workers, checkpoint=name == "ours (ckpt)",
                    bf16=name == "ours (bf16)")


def meta_gradients(device: torch.device, tasks: list[Task], dtype: torch.dtype) -> dict[str, list[torch.Tensor]]:
    """Each side's meta-gradient of the mean query loss of ``tasks``, from the same initial weights, in ``dtype``;
    backbone then head parameters."""
    import higher

    ours, reference = initial_models(device)
    ours, reference = ours.to(dtype), reference.to(dtype)
    tasks = [task.to(device, dtype) for task in tasks]
    result = {}
    reference.train()
    inner = torch.optim.SGD(reference.parameters(), lr=INNER_LR)
    for task in tasks:
        with higher.innerloop_ctx(reference, inner, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(INNER_STEPS):
                diffopt.step(F.cross_entropy(fmodel(task.support_images), task.support_labels))
            (F.cross_entropy(fmodel(task.query_images), task.query_labels) / len(tasks)).backward()
    result["higher"] = [p.grad.clone() for p in reference.parameters()]
    parameters = [*ours.backbone.parameters(), *ours.head.parameters()]
    for name, vectorize, workers in (("ours (loop)", False, 1), ("ours (threads)", False, None),
                                     ("ours (vmap)", True, None)):
        ours.vectorize, ours.workers = vectorize, workers
        loss, _ = ours.batch_loss(tasks)
        result[name] = list(torch.autograd.grad(loss, parameters))
    if dtype == torch.float32:
        ours.vectorize, ours.workers = False, None
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = ours.batch_loss(tasks)
        result["ours (bf16)"] = list(torch.autograd.grad(loss, parameters))
    return result


def relative_error(grads: list[torch.Tensor], exact: list[torch.Tensor]) -> float:
    """``|g - exact| / |exact|`` over all the tensors, as one vector (float64)."""
    flat, reference = (torch.cat([t.detach().double().flatten().cpu() for t in ts]) for ts in (grads, exact))
    return float((flat - reference).norm() / reference.norm())


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure_memory(name: str, root: Path, device: torch.device) -> dict[str, float | str]:
    """Peak memory (MiB) one meta-batch of side ``name`` adds, after a warm-up meta-batch; run in a fresh process."""
    batches = meta_batches(root, 2, device)
    step = build_side(name, device)
    step(batches[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(batches[1])
        torch.cuda.synchronize()
        return {"peak_mib": (torch.cuda.max_memory_allocated() - before) / 2**20, "method": "cuda allocator peak"}
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the resident-set high-water mark to the current RSS
        before = _status_kb("VmRSS")
        step(batches[1])
        return {"peak_mib": (_status_kb("VmHWM") - before) / 1024, "method": "VmHWM - VmRSS (reset high-water mark)"}
    except OSError:  # no /proc: ru_maxrss, which cannot be reset, so a lower bound
        import resource

        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step(batches[1])
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_mib": (after - before) / 1024, "method": "ru_maxrss rise (a lower bound)"}


def default_path(device: torch.device) -> str:
    """The path ``MAML`` takes by default on ``device`` (with this process's intra-op threads)."""
    if vectorize_by_default(device):
        return "ours (vmap)"
    return "ours (threads)" if workers_by_default(device, META_BATCH) > 1 else "ours (loop)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "omniglot")
    parser.add_argument("--batches", type=int, default=6, help="timed meta-batches per side")
    parser.add_argument("--block", type=int, default=2, help="meta-batches per interleaved timing block")
    parser.add_argument("--warmup", type=int, default=1, help="untimed meta-batches per side first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compiled", action="store_true",
                        help="also time 'ours (compiled)' and 'ours (compiled, threads)', the meta-gradient compiled "
                             "by torch.compile (minutes)")
    parser.add_argument("--memory-side", help=argparse.SUPPRESS)  # internal: measure one side in this process
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.memory_side:
        print(json.dumps(measure_memory(args.memory_side, args.root, device)))
        return 0

    from importlib.metadata import PackageNotFoundError, version

    try:
        higher_version = version("higher")
    except PackageNotFoundError:  # importable without its metadata (copied onto the path)
        higher_version = "(version unknown)"
    print(f"torch {torch.__version__}, higher {higher_version}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {args.threads} threads"))
    print(f"config: Conv-4 + linear head, Omniglot minimal 28x28, {WAYS}-way {SHOTS}-shot {QUERIES}-query, "
          f"meta-batch {META_BATCH}, {INNER_STEPS} inner SGD steps of {INNER_LR}, second order, fp32, "
          f"Adam lr {OUTER_LR}")
    batches = meta_batches(args.root, args.warmup + args.batches + 1, device)
    names = (*SIDES, "ours (compiled)", "ours (compiled, threads)") if args.compiled else SIDES
    sides = {name: build_side(name, device) for name in names}
    ours, reference = initial_models(device)
    same = all(torch.equal(a, b) for a, b in zip([*ours.backbone.parameters(), *ours.head.parameters()],
                                                 reference.parameters(), strict=True))
    print(f"identical initial weights on both sides: {same}")

    def run(name: str, start: int, count: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for i in range(start, start + count):
            sides[name](batches[i])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started

    for name in names:
        run(name, 0, args.warmup)
    seconds, done = dict.fromkeys(names, 0.0), 0
    round_ratios = []
    load_before = os.getloadavg()[0]
    for rnd in range((args.batches + args.block - 1) // args.block):
        n = min(args.block, args.batches - done)
        order = names[rnd % len(names):] + names[: rnd % len(names)]
        took = {name: run(name, args.warmup + done, n) for name in order}
        for name in names:
            seconds[name] += took[name]
        round_ratios.append(took["higher"] / took[default_path(device)])
        done += n
    load_after = os.getloadavg()[0]
    rates = {name: args.batches * META_BATCH / seconds[name] for name in names}

    memory = {}
    # Blocks of 64 KiB and more are mmapped and so unmapped when freed: the resident set follows the live tensors.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    for name in SIDES:
        command = [sys.executable, __file__, "--memory-side", name, "--root", str(args.root), "--device", args.device,
                   "--threads", str(args.threads)]
        memory[name] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout)

    print(f"\nspeed and peak memory ({args.batches} meta-batches of {META_BATCH} tasks per side; load average "
          f"{load_before:.1f} before, {load_after:.1f} after, on {os.cpu_count()} CPUs):")
    if device.type == "cpu" and load_after > args.threads + 0.75:
        print("  WARNING: other processes competed for the CPUs; the numbers are noisy, rerun on a quiet machine")
    for name in names:
        peak = f"{memory[name]['peak_mib']:8.1f} MiB" if name in memory else "(not measured)"
        print(f"  {name:<24} {rates[name]:7.2f} tasks/s   peak memory {peak}")
    print(f"  memory: {memory['higher']['method']}, one meta-batch after a warm-up, each side in its own process")
    print(f"  vmap / loop: {rates['ours (vmap)'] / rates['ours (loop)']:.2f}x; "
          f"threads / loop: {rates['ours (threads)'] / rates['ours (loop)']:.2f}x")
    ours_default = default_path(device)
    ratios = sorted(round_ratios)
    print(f"  per-round ratios {ours_default} / higher: {' '.join(f'{r:.2f}' for r in ratios)} "
          f"(median {ratios[len(ratios) // 2]:.2f})")
    ratio = rates[ours_default] / rates["higher"]
    print(f"ours = {ours_default}, the default path on {device.type}")
    print(f"ratio: {ratio:.2f}")
    lower = memory[ours_default]["peak_mib"] < memory["higher"]["peak_mib"]
    print(f"target ours >= 2x higher tasks/s: {'met' if ratio >= 2 else 'NOT met'}; "
          f"lower peak memory: {'yes' if lower else 'NO'}")

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # true fp32 for the check
    ok = True
    grads = {dtype: meta_gradients(device, batches[-1], dtype) for dtype in (torch.float32, torch.float64)}
    for dtype in (torch.float32, torch.float64):
        for name in ("ours (loop)", "ours (threads)", "ours (vmap)"):
            diff = max(float((a - b).abs().max() / b.abs().max())
                       for a, b in zip(grads[dtype][name], grads[dtype]["higher"], strict=True))
            gated = dtype == torch.float64
            ok &= not gated or diff <= MAX_GRAD_DIFF
            print(f"meta-gradient check, {name} vs higher ({str(dtype)[6:]}, same weights, one meta-batch): "
                  f"largest difference {diff:.2e} of the largest entry, per tensor"
                  + (f" (limit {MAX_GRAD_DIFF:.0e})" if gated else " (rounding only: not checked)"))
    exact = grads[torch.float64]["higher"]
    for name in ("higher", "ours (loop)", "ours (bf16)"):
        label = name if name == "ours (bf16)" else f"{name}, fp32"
        print(f"meta-gradient error against fp64, {label}: {relative_error(grads[torch.float32][name], exact):.1e} "
              "(norm of the difference / norm of the fp64 gradient)")
    if not ok:
        print("FAIL: the meta-gradients differ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
