"""Figures: training curves and one evaluation episode (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from fewshot.data.task import Task

_DPI = 120
_RIGHT, _WRONG = "#1a9641", "#d7191c"  # green, red frames


def _pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported lazily: matplotlib is slow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _number(value: object) -> float | None:
    """``value`` as a finite float, or None for missing values (None, ``""``, NaN, unparsable text)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """The episodes and values of the rows that have both an ``episode`` and a value for ``key``."""
    xs, ys = [], []
    for row in rows:
        x, y = _number(row.get("episode")), _number(row.get(key))
        if x is not None and y is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def plot_curves(rows: list[dict], path: str | Path) -> None:
    """Save training curves as a PNG: loss (left) and accuracy (right) against the episode.

    Args:
        rows: metric records with keys ``episode``, ``train_loss``, ``train_accuracy``, ``val_accuracy``,
            ``val_ci95`` and ``lr`` (values may be numbers or CSV strings; missing validation values may be
            None, ``""`` or NaN). Accuracies are fractions in ``[0, 1]`` (or percentages: the axis follows).
            The learning rate is drawn on a second axis of the loss panel when it changes.
        path: PNG file to write.
    """
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    try:
        ep_loss, loss = _series(rows, "train_loss")
        ep_train, train_acc = _series(rows, "train_accuracy")
        ep_val, val_acc = _series(rows, "val_accuracy")
        ci = [_number(row.get("val_ci95")) or 0.0 for row in rows  # aligned with ep_val (no CI: 0)
              if _number(row.get("episode")) is not None and _number(row.get("val_accuracy")) is not None]
        ep_lr, lr = _series(rows, "lr")

        if loss:
            marker = "o" if len(ep_loss) < 30 else None
            ax_loss.plot(ep_loss, loss, color="tab:blue", marker=marker, ms=3, lw=1.5, label="train loss")
        ax_loss.set(title="Training loss", xlabel="episode", ylabel="loss")
        if loss and min(loss) > 0 and max(loss) / min(loss) > 30:
            ax_loss.set_yscale("log")
        handles = ax_loss.get_legend_handles_labels()
        if lr and max(lr) > min(lr):
            ax_lr = ax_loss.twinx()
            ax_lr.plot(ep_lr, lr, color="0.55", ls="--", lw=1, label="learning rate")
            ax_lr.set_ylabel("learning rate", color="0.4")
            ax_lr.tick_params(axis="y", colors="0.4", labelsize=8)
            ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
            ax_lr.set_ylim(bottom=0)
            lr_handles = ax_lr.get_legend_handles_labels()
            handles = (handles[0] + lr_handles[0], handles[1] + lr_handles[1])
        if handles[0]:
            ax_loss.legend(*handles, loc="upper right", fontsize=9, framealpha=0.85)

        percent = max(train_acc + val_acc, default=0.0) > 1.0
        if train_acc:
            ax_acc.plot(ep_train, train_acc, color="tab:blue", marker="o" if len(ep_train) < 30 else None, ms=3,
                        lw=1.5, label="train (running)")
        if ep_val:
            low = [a - c for a, c in zip(val_acc, ci, strict=True)]
            high = [a + c for a, c in zip(val_acc, ci, strict=True)]
            if len(ep_val) > 1:
                ax_acc.fill_between(ep_val, low, high, color="tab:orange", alpha=0.2, lw=0)
            ax_acc.errorbar(ep_val, val_acc, yerr=ci, color="tab:orange", marker="o", ms=4, lw=1.5, capsize=3,
                            label="validation (95% CI)")
            best = max(range(len(val_acc)), key=val_acc.__getitem__)
            fmt = "{:.1f}" if percent else "{:.3f}"
            episodes = ep_train + ep_val
            where = (ep_val[best] - min(episodes)) / max(max(episodes) - min(episodes), 1e-9)
            low_point = val_acc[best] < (35.0 if percent else 0.35)  # label above the point, not off the axis
            ax_acc.annotate(
                f"best {fmt.format(val_acc[best])} ± {fmt.format(ci[best])}\nat episode {ep_val[best]:g}",
                (ep_val[best], val_acc[best]), xytext=(0, 30 if low_point else -30), textcoords="offset points",
                ha="right" if where > 0.85 else "left" if where < 0.15 else "center",
                va="bottom" if low_point else "top", fontsize=8, color="tab:orange",
                arrowprops={"arrowstyle": "-", "color": "tab:orange", "lw": 0.8},
            )
        ax_acc.set(title="Accuracy", xlabel="episode", ylabel="accuracy (%)" if percent else "accuracy")
        ax_acc.set_ylim(0, 101 if percent else 1.01)
        if train_acc or val_acc:
            ax_acc.legend(loc="lower right", fontsize=9, framealpha=0.85)
        for ax, empty in ((ax_loss, not loss), (ax_acc, not (train_acc or val_acc))):
            ax.grid(alpha=0.3)
            if empty:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
        fig.savefig(path, dpi=_DPI)
    finally:
        plt.close(fig)


def _image(image: torch.Tensor) -> tuple[object, str | None]:
    """An image ``[C, H, W]`` in ``[0, 1]`` as an array for ``imshow`` and its colormap (ink dark)."""
    image = image.detach().float().cpu().clamp(0.0, 1.0)
    if image.shape[0] == 3:
        return image.permute(1, 2, 0).numpy(), None
    return image.mean(0).numpy(), "gray_r"  # C=1 (or any other C: the channel mean), ink 1 shown dark


def _short(name: str, limit: int = 16) -> str:
    """``name`` cut to ``limit`` characters, keeping its end (Omniglot: ``"…/character07"``)."""
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def _query_order(labels: torch.Tensor | None, count: int, limit: int) -> list[int]:
    """Up to ``limit`` query indices, taking the classes in turn (queries of sampled tasks are grouped by
    class, so the first ``limit`` would show few classes); without labels, the first ``limit``."""
    if labels is None:
        return list(range(min(count, limit)))
    per_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels.tolist()):
        per_class.setdefault(int(label), []).append(i)
    queues = [per_class[c] for c in sorted(per_class)]
    order: list[int] = []
    depth = 0
    while len(order) < min(count, limit):
        order.extend(q[depth] for q in queues if depth < len(q))
        depth += 1
    return order[:limit]


def plot_episode(
    task: Task,
    predictions: torch.Tensor,
    path: str | Path,
    max_queries: int = 25,
    probabilities: torch.Tensor | None = None,
    title: str | None = None,
) -> None:
    """Save a figure of one episode as a PNG: the support set and the classified queries.

    The top row shows the first support image of each class, titled with its class name. Below, up to
    ``max_queries`` queries (taking the classes in turn, so with N columns each column mostly holds one
    class), each titled with its predicted class (and probability); a green frame marks a right prediction,
    a red frame a wrong one, with the true class underneath. Unlabelled queries get a grey frame.

    Args:
        task: the episode; images ``[*, C, H, W]`` in ``[0, 1]`` (C=1: ink 1 drawn dark; C=3: RGB).
        predictions: ``[M]`` predicted episode labels of the queries.
        path: PNG file to write.
        max_queries: most queries shown.
        probabilities: ``[M]`` probability of each predicted label, or None.
        title: figure title; by default the episode's shape and accuracy.
    """
    predictions = predictions.detach().cpu().reshape(-1).long()
    queries = task.query_images.shape[0]
    if predictions.numel() != queries:
        raise ValueError(f"plot_episode: {predictions.numel()} predictions for {queries} queries")
    if probabilities is not None:
        probabilities = probabilities.detach().float().cpu().reshape(-1)
        if probabilities.numel() != queries:
            raise ValueError(f"plot_episode: {probabilities.numel()} probabilities for {queries} queries")
    labels = None if task.query_labels is None else task.query_labels.detach().cpu().reshape(-1).long()
    support_labels = task.support_labels.detach().cpu()
    ways = max(task.ways, int(predictions.max()) + 1 if queries else 0)

    def name(label: int) -> str:
        return _short(task.class_names[label]) if label < len(task.class_names) else f"class {label}"

    shown = _query_order(labels, queries, max(0, max_queries))
    cols = max(1, min(max(ways, math.ceil(math.sqrt(len(shown)))), 10))
    support_rows = math.ceil(task.ways / cols) if task.ways else 0
    query_rows = math.ceil(len(shown) / cols)
    cell_w, support_h, query_h, header = 1.25, 1.3, 1.6, 0.45  # inches; queries leave room for "true: …"
    ratios = [max(support_rows, 1) * support_h + header, max(query_rows, 1) * query_h + header]
    plt = _pyplot()
    fig = plt.figure(figsize=(cols * cell_w + 0.3, sum(ratios) + 0.45), layout="constrained")
    try:
        if title is None:
            title = f"{task.ways}-way {task.shots}-shot episode, {queries} queries"
            if labels is not None and queries:
                correct = int((predictions == labels).sum())
                title += f": {correct}/{queries} correct ({100.0 * correct / queries:.1f}%)"
        fig.suptitle(title, fontsize=12, fontweight="bold")
        top, bottom = fig.subfigures(2, 1, height_ratios=ratios, hspace=0.02)

        top.suptitle("Support set (first shot of each class)", fontsize=10)
        for label in range(task.ways):
            ax = top.add_subplot(max(support_rows, 1), cols, label + 1)
            first = torch.nonzero(support_labels == label).flatten()
            if first.numel():
                array, cmap = _image(task.support_images[int(first[0])])
                ax.imshow(array, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(name(label), fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color("0.6")

        caption = "Queries" if len(shown) == queries else f"Queries ({len(shown)} of {queries})"
        caption += ": predicted class"
        if labels is not None:
            caption += " (green frame: right; red: wrong, true class below)"
        bottom.suptitle(caption, fontsize=10)
        for slot, q in enumerate(shown):
            ax = bottom.add_subplot(max(query_rows, 1), cols, slot + 1)
            array, cmap = _image(task.query_images[q])
            ax.imshow(array, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            pred = int(predictions[q])
            text = name(pred) if probabilities is None else f"{name(pred)} {float(probabilities[q]):.2f}"
            ax.set_title(text, fontsize=7.5)
            color, width = "0.6", 1.0
            if labels is not None:
                right = pred == int(labels[q])
                color, width = (_RIGHT, 3.0) if right else (_WRONG, 3.0)
                if not right:
                    ax.set_xlabel(f"true: {name(int(labels[q]))}", fontsize=7.5, color=_WRONG, labelpad=2)
                    ax.title.set_color(_WRONG)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color(color)
                spine.set_linewidth(width)
        if not shown:
            bottom.text(0.5, 0.4, "no queries", ha="center", va="center", color="0.5")
        fig.savefig(path, dpi=_DPI)
    finally:
        plt.close(fig)


def plot_accuracy_vs_time(
    runs: Sequence[dict],
    path: str | Path,
    val_label: str = "validation accuracy during training",
    test_label: str = "held-out test accuracy",
) -> None:
    """Save one line per run, validation accuracy against training time, with its held-out test point (PNG).

    The line and the point measure different things and are drawn differently: the line is the validation
    accuracy logged during training (model selection), the star at the end of the line is the test accuracy of
    the checkpoint finally selected, on held-out classes.

    Args:
        runs: one dict per run with ``name``, ``rows`` (metric records with ``elapsed_s`` in seconds and
            ``val_accuracy``, as in ``metrics.csv``; missing values allowed) and optionally ``val_label`` (the
            validation task, e.g. ``"20-way 1-shot"``), ``test_accuracy`` (None: no point) and ``test_minutes``
            (where to put the point; default: the end of the line). Accuracies are fractions in ``[0, 1]``.
        path: PNG file to write.
        val_label / test_label: legend text of the line style and of the point style.
    """
    from matplotlib.lines import Line2D

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5.5), layout="constrained")
    try:
        colors = plt.get_cmap("tab10").colors
        for i, run in enumerate(runs):
            color = colors[i % len(colors)]
            minutes, accuracy = [], []
            for row in run.get("rows", []):
                x, y = _number(row.get("elapsed_s")), _number(row.get("val_accuracy"))
                if x is not None and y is not None:
                    minutes.append(x / 60)
                    accuracy.append(100 * y)
            label = run["name"] + (f" (validation: {run['val_label']})" if run.get("val_label") else "")
            ax.plot(minutes, accuracy, color=color, marker="o", ms=3, lw=1.5, label=label)
            test = _number(run.get("test_accuracy"))
            if test is not None:
                x = _number(run.get("test_minutes"))
                x = x if x is not None else (minutes[-1] if minutes else 0.0)
                ax.plot([x], [100 * test], color=color, marker="*", ms=14, mec="black", mew=0.8, ls="none")
                ax.annotate(f"{100 * test:.1f}", (x, 100 * test), xytext=(6, 0), textcoords="offset points",
                            va="center", fontsize=8, color=color)
        style = [Line2D([], [], color="0.3", marker="o", ms=3, lw=1.5, label=val_label),
                 Line2D([], [], color="0.3", marker="*", ms=12, mec="black", ls="none", label=test_label)]
        # Legends outside the axes, so that they never hide a curve.
        fig.legend(handles=style, loc="outside lower center", fontsize=8, ncols=1, frameon=False)
        if runs:
            fig.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=8, title="method",
                       title_fontsize=8, frameon=False)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.set(title="Validation accuracy during training (lines) and held-out test accuracy (stars)",
               xlabel="training time (min, validation included)", ylabel="accuracy (%)")
        ax.set_ylim(0, 101)
        right = max([x for line in ax.get_lines() for x in line.get_xdata()], default=0.0)
        ax.set_xlim(0, 1.1 * right if right > 0 else 1.0)  # room for the labels of the stars
        ax.grid(alpha=0.3)
        fig.savefig(path, dpi=_DPI)
    finally:
        plt.close(fig)
