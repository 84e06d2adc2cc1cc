"""How far bf16 autocast moves each method's training gradient: relative error against float64, per method.

For every method (default options, Conv-4, 28x28) and several random initialisations, the training loss of one
Omniglot ``minimal`` task (20-way 1-shot 5-query for metric methods, 5-way for the optimization family and MANN)
is differentiated three times from the same weights: in float64 (the reference), in fp32, and in fp32 under bf16
autocast (what ``--precision bf16`` trains with). It prints ``|g - g64| / |g64|`` over all parameters as one
vector, the median over the initialisations. The optimization family also runs with 5 inner steps, since the error
grows with them. From the repository root::

    python benchmarks/bf16_gradients.py --root ../shared/data/omniglot
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fewshot.data import TaskSampler, build_task
from fewshot.data.omniglot import Omniglot
from fewshot.methods import METHODS
from fewshot.training.checkpoint import ModelSpec

REPO = Path(__file__).resolve().parent.parent
FIVE_WAY = ("maml", "metasgd", "anil", "protomaml", "mann")


def gradient(spec: ModelSpec, task, dtype: torch.dtype, bf16: bool, seed: int) -> torch.Tensor:
    """All parameter gradients of ``spec``'s training loss on ``task`` as one float64 vector."""
    torch.manual_seed(seed)
    model = spec.build().to(dtype).train()
    task = task.to("cpu", dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = model.loss(task)
    parameters = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, parameters, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).double().flatten()
                      for g, p in zip(grads, parameters, strict=True)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "omniglot")
    parser.add_argument("--seeds", type=int, default=3, help="random initialisations (and tasks) per method")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = Omniglot(args.root, "minimal")
    cases = [(name, {}) for name in METHODS]
    cases += [(name, {"inner_steps": 5}) for name in ("maml", "metasgd", "protomaml")]
    print(f"{'method':<24} {'fp32':>9} {'bf16':>9}   (|g - g_fp64| / |g_fp64|, median of {args.seeds} seeds)")
    for name, options in cases:
        ways = 5 if name in FIVE_WAY else 20
        spec = ModelSpec(method=name, backbone="conv4", image_shape=(1, 28, 28),
                         method_options={**options, **({"ways": ways} if name in ("maml", "metasgd") else {})})
        errors: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for seed in range(args.seeds):
            task = build_task(dataset, TaskSampler(dataset, ways, 1, 5, 1, seed=seed).spec(0))
            exact = gradient(spec, task, torch.float64, False, seed)
            for label, bf16 in (("fp32", False), ("bf16", True)):
                approx = gradient(spec, task, torch.float32, bf16, seed)
                errors[label].append(float((approx - exact).norm() / exact.norm()))
        label = name + "".join(f", {k}={v}" for k, v in options.items())
        medians = {k: sorted(v)[len(v) // 2] for k, v in errors.items()}
        print(f"{label:<24} {medians['fp32']:9.1e} {medians['bf16']:9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
