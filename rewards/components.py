"""The reward components over a whole batch, from parsed arrays (see docs/rewards.md for the contract).

Boxes of all samples live in flat (B, 4) arrays; sample s owns rows `start[s] : start[s] + count[s]`.
Geometry runs once over every (prediction, reference) pair of the batch; only label sets are Python.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rewards.geometry import iou_giou
from rewards.matching import best_match_sums


def pair_index(count_a: np.ndarray, count_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample, i, j) of every cell of each sample's count_a x count_b grid, row-major, batch-flat."""
    sizes = count_a * count_b
    sample = np.repeat(np.arange(len(sizes)), sizes)
    first = np.cumsum(sizes) - sizes
    local = np.arange(len(sample)) - first[sample]
    cols = count_b[sample]
    return sample, local // cols, local % cols


def label_accuracy(labels: Sequence[list[str]], ref_labels: Sequence[frozenset[str]]) -> np.ndarray:
    """Jaccard index of the block-label sets; with no reference blocks, 1 iff no predicted blocks."""
    out = np.empty(len(labels))
    for s, (predicted, reference) in enumerate(zip(labels, ref_labels, strict=True)):
        if not reference:
            out[s] = 0.0 if predicted else 1.0
            continue
        both = len(reference.intersection(predicted))
        out[s] = both / (len(reference) + len(set(predicted)) - both)
    return out


def tag_count(
    n_ref: np.ndarray, n_blocks: np.ndarray, n_open: np.ndarray, n_close: np.ndarray, blocks_ok: np.ndarray
) -> np.ndarray:
    """0.25 per satisfied check against the reference's block count n (all-or-nothing when n = 0)."""
    no_tags = ((n_open == 0) & (n_close == 0)).astype(np.float64)
    # The tags strictly alternate <box></box>... iff every tag belongs to a scanned block: the scan
    # takes the first </box> after each block's <box> and the first <box> after each </box>.
    alternate = (n_blocks >= 1) & (n_blocks == n_open) & (n_blocks == n_close)
    checks = (n_open == n_ref).astype(np.float64) + (n_close == n_ref) + alternate + blocks_ok
    return np.where(n_ref == 0, no_tags, 0.25 * checks)


def giou_reward(
    pred: np.ndarray,
    pred_start: np.ndarray,
    pred_count: np.ndarray,
    ref: np.ndarray,
    ref_start: np.ndarray,
    ref_count: np.ndarray,
    max_boxes: int,
) -> np.ndarray:
    """Optimal one-to-one matching of (GIoU + 1) / 2, summed, over max(|P|, |G|)."""
    out = ((pred_count == 0) & (ref_count == 0)).astype(np.float64)
    active = (pred_count > 0) & (ref_count > 0) & (pred_count <= max_boxes)
    n_pred = np.where(active, pred_count, 0)
    n_ref = np.where(active, ref_count, 0)
    sample, i, j = pair_index(n_pred, n_ref)
    if len(sample) == 0:
        return out
    _, giou = iou_giou(pred[pred_start[sample] + i], ref[ref_start[sample] + j])
    values = (giou + 1.0) * 0.5
    sizes = n_pred * n_ref
    starts = np.cumsum(sizes) - sizes
    idx = np.flatnonzero(active)
    sums = best_match_sums(values, starts[idx], n_pred[idx], n_ref[idx])
    out[idx] = np.clip(sums / np.maximum(n_pred[idx], n_ref[idx]), 0.0, 1.0)
    return out


def overlap_penalty(
    pred: np.ndarray, pred_start: np.ndarray, pred_count: np.ndarray, threshold: float, max_boxes: int
) -> np.ndarray:
    """Minus the mean over predicted pairs of max(0, (IoU - t) / (1 - t)); -1 beyond max_boxes."""
    out = np.where(pred_count > max_boxes, -1.0, 0.0)
    active = (pred_count >= 2) & (pred_count <= max_boxes)
    n = np.where(active, pred_count, 0)
    sample, i, j = pair_index(n, n)
    upper = i < j
    sample, i, j = sample[upper], i[upper], j[upper]
    if len(sample) == 0:
        return out
    iou, _ = iou_giou(pred[pred_start[sample] + i], pred[pred_start[sample] + j])
    excess = np.maximum(0.0, (iou - threshold) / (1.0 - threshold))
    sums = np.bincount(sample, weights=excess, minlength=len(pred_count))
    pairs = n * (n - 1) // 2
    # + 0.0 turns -0.0 into 0.0 for samples without any overlap.
    out[active] = np.clip(-(sums[active] / pairs[active]), -1.0, 0.0) + 0.0
    return out


def overlong_penalty(lengths: np.ndarray | None, max_tokens: int | None, buffer: int | None, size: int) -> np.ndarray:
    """DAPO soft overlong punishment: 0, then linear down to -1 over the last `buffer` tokens, then -1."""
    if lengths is None or max_tokens is None:
        return np.zeros(size)
    buffer = buffer or 0
    soft = max_tokens - buffer
    ramp = (soft - lengths) / buffer if buffer > 0 else np.full(size, -1.0)
    return np.where(lengths <= soft, 0.0, np.where(lengths <= max_tokens, ramp, -1.0))
