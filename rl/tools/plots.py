"""Sweep figures (matplotlib, Agg: no display needed): reward curves per variant from the TensorBoard event
files the trainer writes under `logging.dir`, and a bar chart of final metrics per variant."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# The per-step training rewards the trainer logs (rl/trainer.py `_metrics`), as curves.
CURVE_TAGS = ("reward/total/mean", "reward/label_accuracy/mean", "reward/giou/mean", "reward/tag_count/mean",
              "reward/overlap_penalty/mean")
Scalars = dict[str, dict[int, float]]  # tag -> step -> value


def read_scalars(log_dir: str | Path) -> Scalars:
    """Every scalar of every event file in `log_dir` (not below it). A resumed run appends a new file and
    logs its steps again: files are read oldest first, so the newest value of a step wins."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: Scalars = {}
    for file in sorted(Path(log_dir).glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(file), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update((e.step, e.value) for e in acc.Scalars(tag))
    return out


def _pyplot():  # noqa: ANN202 - the matplotlib.pyplot module
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on clusters and CI
    import matplotlib.pyplot as plt

    return plt


def _seed_band(runs: Sequence[Scalars], tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(steps, mean, min, max) over the runs, on the steps every run logged."""
    series = [run[tag] for run in runs if run.get(tag)]
    if not series:
        return None
    steps = np.array(sorted(set.intersection(*(set(s) for s in series))))
    if steps.size == 0:
        return None
    values = np.array([[s[int(k)] for k in steps] for s in series])
    return steps, values.mean(0), values.min(0), values.max(0)


def plot_reward_curves(runs: Sequence[Scalars], path: str | Path, title: str,
                       tags: Sequence[str] = CURVE_TAGS) -> Path:
    """One line per reward tag: the mean over seeds, shaded from the lowest to the highest seed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=80)
    for tag in tags:
        band = _seed_band(runs, tag)
        if band is None:
            continue
        steps, mean, low, high = band
        label = tag.removeprefix("reward/").removesuffix("/mean")
        (line,) = ax.plot(steps, mean, marker=".", label=label)
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set(title=title, xlabel="GRPO step", ylabel="training reward (batch mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def plot_final_metrics(summary: Mapping[str, Mapping[str, tuple[float, float]]], metrics: Sequence[str],
                       path: str | Path, title: str) -> Path:
    """Grouped bars: metric groups on x, one bar per variant, error bars = spread over seeds."""
    plt = _pyplot()
    variants = list(summary)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(metrics) + 0.25 * len(variants)), 3.8), dpi=80)
    width = 0.8 / max(len(variants), 1)
    x = np.arange(len(metrics))
    for i, variant in enumerate(variants):
        means = [np.nan_to_num(summary[variant][m][0]) for m in metrics]
        spreads = [np.nan_to_num(summary[variant][m][1]) for m in metrics]
        ax.bar(x + (i - (len(variants) - 1) / 2) * width, means, width, yerr=spreads, capsize=2, label=variant)
    ax.set_xticks(x, list(metrics), fontsize=8, rotation=20, ha="right")
    ax.set(title=title, ylabel="value on the evaluation split")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=6, ncol=2, loc="best")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:  # noqa: ANN001 - a matplotlib Figure
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
