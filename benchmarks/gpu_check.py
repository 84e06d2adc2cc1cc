"""Device check: every method trains, evaluates and predicts on CUDA like on the CPU, and how fast.

For a machine with a GPU (not part of the test suite). With Omniglot in ``--root`` it checks, per method:
the same weights give the same query logits on CPU and GPU (fp32), a short training run on the GPU lowers the
loss, and it prints training episodes/s (fp32 and bf16) and the time of 10,000 evaluation episodes.

    PYTHONPATH=. python3 benchmarks/gpu_check.py --root ../shared/data/omniglot --methods protonet
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from fewshot.data import TaskSampler, build_task, load_dataset, split_by_groups
from fewshot.evaluation.evaluate import evaluate
from fewshot.methods import METHODS
from fewshot.training import ModelSpec, TrainConfig, Trainer

TEST_ALPHABETS = ["Korean", "Balinese"]


def check_method(name: str, train, test, episodes: int, out: Path) -> dict:
    ways = 5 if name in ("maml", "metasgd", "anil", "protomaml") else 20
    spec = ModelSpec(name, "conv4", {}, {}, (1, 28, 28), invert=True)
    result: dict = {"method": name}
    task = build_task(test, TaskSampler(test, 5, 1, 5, 1, seed=0).spec(0))
    torch.manual_seed(0)
    cpu_model = spec.build().train()
    gpu_model = spec.build().train()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model = gpu_model.cuda()
    cpu_logits = cpu_model(task.support_images, task.support_labels, task.query_images).detach()
    gpu_task = task.to("cuda")
    gpu_logits = gpu_model(gpu_task.support_images, gpu_task.support_labels, gpu_task.query_images).detach().cpu()
    scale = cpu_logits.abs().max().clamp_min(1e-6)
    result["cpu_gpu_max_rel_diff"] = float((cpu_logits - gpu_logits).abs().max() / scale)
    result["cpu_gpu_argmax_agree"] = float((cpu_logits.argmax(1) == gpu_logits.argmax(1)).float().mean())
    for precision in ("fp32", "bf16"):
        config = TrainConfig(model=spec, ways=ways, shots=1, queries=5, episodes=episodes,
                             val_every=max(1, episodes // 4),
                             device="cuda", precision=precision, channels_last=True, lr=1e-3)
        trainer = Trainer(config, train, None, out / f"{name}-{precision}")
        for i in range(3):
            trainer.step(i, 1e-3)
        torch.cuda.synchronize()
        started = time.perf_counter()
        fit = trainer.fit(show_progress=False)
        torch.cuda.synchronize()
        result[f"train_{precision}_episodes_per_s"] = round(fit.episodes / (time.perf_counter() - started), 1)
        rows = fit.rows
        losses = [round(rows[0]["train_loss"], 3), round(rows[-1]["train_loss"], 3)]
        result[f"train_{precision}_loss_first_last"] = losses
        model = trainer.model.eval()
    torch.cuda.synchronize()
    started = time.perf_counter()
    count = 10_000 if ways == 20 else 300
    ev = evaluate(model, test, 5, 1, queries=5, episodes=count, device="cuda")
    torch.cuda.synchronize()
    result["eval_episodes"] = count
    result["eval_seconds"] = round(time.perf_counter() - started, 2)
    result["eval_5way1shot_accuracy"] = round(ev.accuracy, 4)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", default="../shared/data/omniglot")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--out", default="/tmp/gpu-check")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    data = load_dataset("omniglot", args.root, "minimal")
    train, test = split_by_groups(data, TEST_ALPHABETS)
    failed = False
    for name in args.methods.split(","):
        try:
            result = check_method(name, train, test, args.episodes, Path(args.out))
        except Exception as err:  # report every method, even when one breaks
            result = {"method": name, "error": f"{type(err).__name__}: {err}"}
            failed = True
        print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
