"""Held-out grounding metrics: greedy answers from the rollout engines, scored against the references.

`grounding_metrics` is what the trainer prints before and after GRPO: every reward component's mean,
format validity (all four tag checks pass), label accuracy and the mean IoU of matched boxes
(one-to-one matching that maximises IoU, as the GIoU reward matches boxes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from rewards import RewardConfig, iou_matrix, parse_answer, score_batch


def matched_ious(completion: str, reference: str) -> list[float]:
    """IoU of each matched (prediction, reference) box pair; unmatched boxes contribute nothing."""
    pred = [b for _, boxes in parse_answer(completion) for b in boxes]
    ref = [b for _, boxes in parse_answer(reference) for b in boxes]
    if not pred or not ref:
        return []
    ious = iou_matrix(np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64))
    rows, cols = linear_sum_assignment(ious, maximize=True)
    return [float(ious[r, c]) for r, c in zip(rows, cols, strict=True)]


def grounding_metrics(completions: Sequence[str], references: Sequence[str],
                      rewards: RewardConfig | None = None) -> dict[str, float]:
    scores = score_batch(list(completions), list(references), rewards)
    ious = [iou for c, r in zip(completions, references, strict=True) for iou in matched_ious(c, r)]
    out = {f"reward/{k}": float(np.mean(v)) for k, v in scores.items()}
    out |= {"format_valid": float(np.mean(scores["tag_count"] == 1.0)),
            "label_accuracy": float(np.mean(scores["label_accuracy"])),
            "mean_iou_matched": float(np.mean(ious)) if ious else 0.0,
            "total_reward": float(np.mean(scores["total"]))}
    return out


def evaluate_rows(pool: Any, rows: Sequence[Any], rewards: RewardConfig | None = None) -> dict[str, float]:
    """Greedy answers for `rows` through a `RolloutPool`, then `grounding_metrics`."""
    results, _ = pool.generate(rows, n=1, greedy=True)
    completions = [r.samples[0].text if r.samples else "" for r in results]
    return grounding_metrics(completions, [row.answer for row in rows], rewards)
