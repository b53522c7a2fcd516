"""The reward components over a whole batch, from parsed arrays (the contract is docs/rewards.md).

Boxes of all samples live in flat arrays; sample s owns `count[s]` boxes from `start[s]`; label sets are
compared as integer keys. The box geometry (GIoU matching, overlap) is in `rewards.grids`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rewards.geometry import is_tame


def offsets(counts: np.ndarray) -> np.ndarray:
    """Start of each segment of a flat array, given the segment lengths."""
    return np.cumsum(counts) - counts


def distinct(values: np.ndarray) -> np.ndarray:
    """np.unique(values) for an int array, by a stable sort: many times faster on nearly sorted keys."""
    ordered = np.sort(values, kind="stable")
    keep = np.ones(len(ordered), dtype=bool)
    keep[1:] = ordered[1:] != ordered[:-1]
    return ordered[keep]


def segments(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owner, position within its segment) of every element of a flat segmented array."""
    owner = np.repeat(np.arange(len(counts)), counts)
    return owner, np.arange(len(owner)) - offsets(counts)[owner]


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
    pred_keys = distinct(block_sample * width + block_label)  # distinct (sample, label)
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


def overlong_penalty(lengths: np.ndarray | None, max_tokens: int | None, buffer: int | None, size: int) -> np.ndarray:
    """DAPO soft overlong punishment: 0, then linear down to -1 over the last `buffer` tokens, then -1."""
    if lengths is None or max_tokens is None:
        return np.zeros(size)
    buffer = buffer or 0
    soft = max_tokens - buffer
    ramp = (soft - lengths) / buffer if buffer > 0 else np.full(size, -1.0)
    return np.where(lengths <= soft, 0.0, np.where(lengths <= max_tokens, ramp, -1.0))
