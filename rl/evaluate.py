"""Held-out grounding metrics: greedy answers from the rollout engines, scored against the references.

`grounding_metrics` is what SFT and the trainer print before and after training and what
`python -m rl.evaluate` writes: every reward component's mean, format validity (all four tag checks pass),
label accuracy, the mean IoU of matched boxes (one-to-one matching that maximises IoU, as the GIoU reward
matches boxes), the share of predicted boxes that repeat an earlier box of their label, and COCO-style
AP@0.5 and AP@[.5:.95] per class and their mean (`rl/ap.py`, box rank = confidence).

    python -m rl.evaluate model.path=checkpoints/run/step-000020/model model.tiny=null data.split=test

answers `data.split` greedily through `RolloutWorker`s on Ray (the cluster of RAY_ADDRESS, else a local
one on loopback) and writes `metrics.json`, `metrics.md`, `predictions.jsonl` and `gallery.png` (references
green, predictions red) to `evaluation.output_dir`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from rewards import RewardConfig, iou_matrix, parse_answer, score_batch
from rl.ap import answers_ap
from rl.core.config import Config, ConfigError
from rl.core.progress import Progress
from rl.report import fmt, markdown_table

# The metrics a reader looks at first, in report order.
HEADLINE = ("ap50", "ap", "mean_iou_matched", "box_ratio", "label_accuracy", "format_valid", "duplicate_rate",
            "total_reward")
DUPLICATE_IOU = 0.5  # a predicted box this close to an earlier one of the same label names the same object twice
# Rows per engine in one call when progress is shown: vLLM's largest default max_num_seqs (1024 on big GPUs,
# 256 per CPU engine), so a chunk keeps every engine's batch full and costs a wait for the slowest engine.
CHUNK_ROWS = 1024


def matched_ious(completion: str, reference: str) -> list[float]:
    """IoU of each matched (prediction, reference) box pair; unmatched boxes contribute nothing."""
    pred = [b for _, boxes in parse_answer(completion) for b in boxes]
    ref = [b for _, boxes in parse_answer(reference) for b in boxes]
    if not pred or not ref:
        return []
    ious = iou_matrix(np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64))
    rows, cols = linear_sum_assignment(ious, maximize=True)
    return [float(ious[r, c]) for r, c in zip(rows, cols, strict=True)]


def box_count(text: str) -> int:
    """Boxes an answer (or a reference) names, over all its labels."""
    return sum(len(boxes) for _, boxes in parse_answer(text))


def duplicate_boxes(completion: str) -> tuple[int, int]:
    """(boxes that overlap an earlier box of the same label with IoU > DUPLICATE_IOU, all boxes) of one answer."""
    duplicates = total = 0
    for _, boxes in parse_answer(completion):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        ious = iou_matrix(boxes, boxes)
        duplicates += int(sum((ious[i, :i] > DUPLICATE_IOU).any() for i in range(1, len(boxes))))
        total += len(boxes)
    return duplicates, total


def grounding_metrics(completions: Sequence[str], references: Sequence[str], rewards: RewardConfig | None = None,
                      lengths: Sequence[int] | None = None, extents: Sequence[tuple[float, float]] | None = None,
                      ) -> dict[str, float]:
    """Flat metrics dict; `lengths` (response tokens) feed the overlong penalty, `extents` (each answer's image
    in the coordinate frame, `GroundingRow.extent`) clip predicted boxes for AP. Rewards and IoUs need no
    frame: they compare boxes of one frame, and IoU / GIoU do not change when a frame scales an axis."""
    scores = score_batch(list(completions), list(references), rewards, lengths)
    ious = [iou for c, r in zip(completions, references, strict=True) for iou in matched_ious(c, r)]
    ap = answers_ap(completions, references, extents)
    duplicates, boxes = np.sum([duplicate_boxes(c) for c in completions], axis=0) if completions else (0, 0)
    out = {f"reward/{k}": float(np.mean(v)) for k, v in scores.items()}
    out |= {"format_valid": float(np.mean(scores["tag_count"] == 1.0)),
            "label_accuracy": float(np.mean(scores["label_accuracy"])),
            "mean_iou_matched": float(np.mean(ious)) if ious else 0.0,
            "total_reward": float(np.mean(scores["total"])),
            "duplicate_rate": float(duplicates / boxes) if boxes else 0.0,
            # Boxes answered per reference box: below 1, objects are left out (recall, hence AP, falls even
            # when each box answered is placed better); above 1, extra boxes.
            "box_ratio": boxes / max(sum(box_count(r) for r in references), 1),
            "ap": ap.ap, "ap50": ap.ap50}
    for label, values in ap.per_class.items():
        out |= {f"ap/{label}": values["ap"], f"ap50/{label}": values["ap50"]}
    return out


def answer_rows(pool: Any, rows: Sequence[Any], progress: str | None = None) -> tuple[list[str], list[int]]:
    """Greedy answer text and its length in tokens for every row (empty for a row that failed). `progress`:
    show progress under that name (`rl.core.progress`), answering `CHUNK_ROWS` rows per engine at a time."""
    size = CHUNK_ROWS * len(pool.workers) if progress else max(len(rows), 1)
    samples = []
    with Progress(len(rows), progress) if progress else nullcontext() as bar:
        for start in range(0, len(rows), size):
            chunk = rows[start: start + size]
            results = pool.generate(chunk, n=1, greedy=True)
            samples += [r.samples[0] if r.samples else None for r in results]
            if bar is not None:
                bar.update(len(chunk))
    return [s.text if s else "" for s in samples], [len(s.response_ids) if s else 0 for s in samples]


def evaluate_rows(pool: Any, rows: Sequence[Any], rewards: RewardConfig | None = None) -> dict[str, float]:
    """Greedy answers for `rows` through a `RolloutPool`, then `grounding_metrics`."""
    texts, lengths = answer_rows(pool, rows)
    return grounding_metrics(texts, [row.answer for row in rows], rewards, lengths, [row.extent for row in rows])


def evaluate_sampled(pool: Any, rows: Sequence[Any], n: int, seed: int, rewards: RewardConfig | None = None,
                     ) -> dict[str, float]:
    """`n` seeded samples per row at the rollout temperature, scored together: the expected reward of the
    sampling policy, which is what GRPO maximises (greedy answers can move the other way, see
    docs/learning.md)."""
    results = pool.generate(rows, n=n, seed=seed)
    texts = [s.text for r in results for s in r.samples]
    lengths = [len(s.response_ids) for r in results for s in r.samples]
    references = [rows[r.index].answer for r in results for _ in r.samples]
    extents = [rows[r.index].extent for r in results for _ in r.samples]
    return grounding_metrics(texts, references, rewards, lengths, extents)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    rows: list[Any]  # rl.core.data.GroundingRow
    completions: list[str]


def evaluate_split(cfg: Config, pool: Any) -> Evaluation:
    """`cfg.data.split` (its first `evaluation.max_rows` rows) answered by `pool` and scored; with
    `evaluation.samples`, also that many sampled answers per row, as `sampled/<metric>`."""
    from rl.core.data import load_configured_split

    rows = load_configured_split(cfg, Path(cfg.data.path) / f"{cfg.data.split}.jsonl").rows
    rows = rows[: cfg.evaluation.max_rows or None]
    texts, lengths = answer_rows(pool, rows, progress=f"eval {cfg.data.split}")
    metrics = grounding_metrics(texts, [r.answer for r in rows], cfg.rewards, lengths, [r.extent for r in rows])
    if cfg.evaluation.samples:
        sampled = evaluate_sampled(pool, rows, cfg.evaluation.samples, cfg.evaluation.sample_seed, cfg.rewards)
        metrics |= {f"sampled/{k}": v for k, v in sampled.items()}
    return Evaluation(metrics | {"rows": float(len(rows))}, rows, texts)


def metrics_markdown(metrics: dict[str, float], title: str) -> str:
    """Headline metrics, AP per class and every reward component, as markdown tables."""
    classes = sorted(k.removeprefix("ap/") for k in metrics if k.startswith("ap/"))
    rewards = sorted(k for k in metrics if k.startswith("reward/"))
    sampled = "sampled/ap50" in metrics  # evaluation.samples > 0: a column beside the greedy one
    columns, prefixes = (["greedy", "sampled"], ["", "sampled/"]) if sampled else (["value"], [""])
    return "\n\n".join([
        f"# {title}",
        markdown_table(["metric", *columns], [[k, *(fmt(metrics[p + k]) for p in prefixes)] for k in HEADLINE]),
        "## AP per class (box rank in the answer = confidence)",
        markdown_table(["class", "AP@0.5", "AP@[.5:.95]"],
                       [[c, fmt(metrics[f"ap50/{c}"]), fmt(metrics[f"ap/{c}"])] for c in classes]),
        "## Reward components (mean over rows)",
        markdown_table(["component", "mean"], [[k.removeprefix("reward/"), fmt(metrics[k])] for k in rewards]),
    ]) + "\n"


def write_evaluation(ev: Evaluation, cfg: Config, out_dir: str | Path, title: str = "Evaluation") -> Path:
    """metrics.json, metrics.md, predictions.jsonl and gallery.png under `out_dir`."""
    from rl.visualize import prediction_grid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(ev.metrics, indent=1, sort_keys=True))
    (out / "metrics.md").write_text(metrics_markdown(ev.metrics, f"{title}: {cfg.model.path} on {cfg.data.split}"))
    with (out / "predictions.jsonl").open("w") as f:
        for row, text in zip(ev.rows, ev.completions, strict=True):
            f.write(json.dumps({"image": str(row.image), "reference": row.answer, "prediction": text}) + "\n")
    shown = ev.rows[: cfg.evaluation.gallery_rows]
    if shown:
        grid = prediction_grid([r.image for r in shown], ev.completions[: len(shown)], [r.answer for r in shown],
                               [r.extent for r in shown])
        grid.save(out / "gallery.png", optimize=True)
    return out


def run_evaluation(cfg: Config, out_dir: str | Path | None = None) -> dict[str, float]:
    """Start a rollout pool on `cfg.model`, evaluate `cfg.data.split`, write the outputs; returns the metrics."""
    import ray

    from actors.checkpoint_files import CorruptCheckpointError
    from rl import checkpoint

    try:  # a run checkpoint's weights match its manifest before an engine serves them
        checkpoint.check_model(Path(cfg.model.path))
    except CorruptCheckpointError as exc:
        raise ConfigError(f"model.path={cfg.model.path}: {exc}") from exc

    from actors.rollout import RolloutPool
    from rl.cluster import connect
    from rl.core.platform import get_platform

    platform = get_platform(cfg.cluster.platform)
    started = connect(cfg, platform)
    try:
        pool = RolloutPool(cfg, name_prefix="eval-rollout")
        try:
            ev = evaluate_split(cfg, pool)
        finally:
            pool.shutdown()
    finally:
        if started:
            ray.shutdown()
    out = write_evaluation(ev, cfg, out_dir or cfg.evaluation.output_dir)
    print((out / "metrics.md").read_text())
    return ev.metrics


def main(argv: list[str] | None = None) -> int:
    from rl.core.data import DatasetError
    from rl.launch import parse_config, prepare

    _, cfg = parse_config(argv, "python -m rl.evaluate", __doc__.splitlines()[0])
    if cfg is None:
        return 2
    try:
        prepare(cfg)
        run_evaluation(cfg)
    except ConfigError as exc:  # e.g. model.path is no usable checkpoint (rl.core.model_path)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
