"""The reward components over a whole batch, from parsed arrays (the contract is docs/rewards.md).

Boxes of all samples live in flat arrays; sample s owns `count[s]` boxes from `start[s]`. Geometry runs
once over every (prediction, reference) pair of the batch, label sets are compared as integer keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from rewards.geometry import Coords, is_tame, pair_scores
from rewards.matching import exact_sums, greedy_sums

_CELLS_PER_CHUNK = 1 << 15


def offsets(counts: np.ndarray) -> np.ndarray:
    """Start of each segment of a flat array, given the segment lengths."""
    return np.cumsum(counts) - counts


def segments(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, position within its segment) of every element of a flat segmented array."""
    owner = np.repeat(np.arange(len(counts)), counts)
    return owner, np.arange(len(owner)) - offsets(counts)[owner]


def pair_index(count_a: np.ndarray, count_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample, i, j) of every cell of each sample's count_a x count_b grid, row-major, batch-flat."""
    sample, local = segments(count_a * count_b)
    i, j = np.divmod(local, count_b[sample])
    return sample, i, j


@dataclass(frozen=True)
class FlatBoxes:
    """Valid boxes of a batch, one contiguous array per coordinate; sample s owns count[s] from start[s]."""

    coords: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x1, y1, x2, y2, each (B,)
    start: np.ndarray  # (S,) int64
    count: np.ndarray  # (S,) int64
    tame: bool  # every box passes geometry.is_tame: the cheap textbook formulas apply

    @classmethod
    def build(cls, boxes: np.ndarray, start: np.ndarray, count: np.ndarray) -> FlatBoxes:
        x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, k]) for k in range(4))
        return cls((x1, y1, x2, y2), start, count, is_tame(boxes))

    def gather(self, sample: np.ndarray, local: np.ndarray) -> Coords:
        at = self.start[sample] + local
        x1, y1, x2, y2 = self.coords
        return x1[at], y1[at], x2[at], y2[at]


def label_accuracy(
    block_sample: np.ndarray,
    block_label: np.ndarray,
    ref_labels: np.ndarray,
    ref_label_count: np.ndarray,
    n_labels: int,
) -> np.ndarray:
    """Jaccard index of the block-label sets; with no reference blocks, 1 iff no predicted blocks.

    Labels are ids < n_labels; `ref_labels` holds each sample's distinct reference ids, flat.
    """
    size = len(ref_label_count)
    width = max(n_labels, 1)
    pred_keys = np.unique(block_sample * width + block_label)  # distinct (sample, label)
    pred_count = np.bincount(pred_keys // width, minlength=size)
    ref_keys = segments(ref_label_count)[0] * width + ref_labels
    both = np.bincount(np.intersect1d(pred_keys, ref_keys, assume_unique=True) // width, minlength=size)
    jaccard = both / np.maximum(pred_count + ref_label_count - both, 1)
    return np.where(ref_label_count == 0, (pred_count == 0).astype(np.float64), jaccard)


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


def sample_chunks(cells: np.ndarray) -> Iterator[np.ndarray]:
    """Consecutive runs of sample indices holding about _CELLS_PER_CHUNK pair cells each.

    Working chunk by chunk keeps every temporary in cache: on one big array numpy spends most of
    its time on memory traffic and page faults.
    """
    ends = np.cumsum(cells)
    lo = 0
    while lo < len(cells):
        before = ends[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(ends, before + _CELLS_PER_CHUNK, side="right")), lo + 1)
        yield np.arange(lo, hi)
        lo = hi


def giou_reward(pred: FlatBoxes, ref: FlatBoxes, max_boxes: int) -> np.ndarray:
    """Optimal one-to-one matching of (GIoU + 1) / 2, summed, over max(|P|, |G|)."""
    out = ((pred.count == 0) & (ref.count == 0)).astype(np.float64)
    active = (pred.count > 0) & (ref.count > 0) & (pred.count <= max_boxes)
    # Matrices have the smaller side as rows (what the matching expects).
    pred_rows = pred.count <= ref.count
    rows = np.where(active, np.minimum(pred.count, ref.count), 0)
    cols = np.where(active, np.maximum(pred.count, ref.count), 0)
    tame = pred.tame and ref.tame
    unsettled: list[tuple[np.ndarray, np.ndarray]] = []  # (samples, their matrices) for exact solving
    for chunk in sample_chunks(rows * cols):
        idx = chunk[active[chunk]]
        if len(idx) == 0:
            continue
        local, i, j = pair_index(rows[idx], cols[idx])
        sample = idx[local]
        flip = pred_rows[sample]
        _, giou = pair_scores(pred.gather(sample, np.where(flip, i, j)), ref.gather(sample, np.where(flip, j, i)), tame)
        assert giou is not None
        values = (giou + 1.0) * 0.5
        sums, clashing = greedy_sums(values, rows[idx], cols[idx])
        out[idx] = sums
        if len(clashing):
            owner, cell = segments(rows[idx][clashing] * cols[idx][clashing])
            unsettled.append((idx[clashing], values[offsets(rows[idx] * cols[idx])[clashing][owner] + cell]))
    if unsettled:
        # Solved once for the whole batch: equal shapes from every chunk share one solve.
        idx = np.concatenate([u[0] for u in unsettled])
        values = np.concatenate([u[1] for u in unsettled])
        out[idx] = exact_sums(values, offsets(rows[idx] * cols[idx]), rows[idx], cols[idx])
    out[active] = np.clip(out[active] / cols[active], 0.0, 1.0)
    return out


def overlap_penalty(pred: FlatBoxes, threshold: float, max_boxes: int) -> np.ndarray:
    """Minus the mean over predicted pairs of max(0, (IoU - t) / (1 - t)); -1 beyond max_boxes."""
    out = np.where(pred.count > max_boxes, -1.0, 0.0)
    active = (pred.count >= 2) & (pred.count <= max_boxes)
    n = np.where(active, pred.count, 0)
    for chunk in sample_chunks(n * n):
        idx = chunk[active[chunk]]
        if len(idx) == 0:
            continue
        local, i, j = pair_index(n[idx], n[idx])
        upper = i < j
        local, i, j = local[upper], i[upper], j[upper]
        sample = idx[local]
        iou, _ = pair_scores(pred.gather(sample, i), pred.gather(sample, j), pred.tame, giou=False)
        excess = np.maximum(0.0, (iou - threshold) / (1.0 - threshold))
        mean = np.bincount(local, weights=excess, minlength=len(idx)) / (n[idx] * (n[idx] - 1) // 2)
        # + 0.0 turns -0.0 into 0.0 for samples without any overlap.
        out[idx] = np.clip(-mean, -1.0, 0.0) + 0.0
    return out


def overlong_penalty(lengths: np.ndarray | None, max_tokens: int | None, buffer: int | None, size: int) -> np.ndarray:
    """DAPO soft overlong punishment: 0, then linear down to -1 over the last `buffer` tokens, then -1."""
    if lengths is None or max_tokens is None:
        return np.zeros(size)
    buffer = buffer or 0
    soft = max_tokens - buffer
    ramp = (soft - lengths) / buffer if buffer > 0 else np.full(size, -1.0)
    return np.where(lengths <= soft, 0.0, np.where(lengths <= max_tokens, ramp, -1.0))
