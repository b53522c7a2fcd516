"""Vectorised IoU / GIoU of xyxy boxes, finite for any finite input.

The textbook form (areas, then inter / union) overflows to inf - inf = NaN for huge coordinates and
divides 0 by 0 for tiny ones. Here every area is taken relative to the pair's enclosing box, so all
intermediates are ratios in [0, 1]:

    rx = w / ew per axis,  r = rx * ry,  u = r_a + r_b - r_ab = union / enclosing area
    IoU = r_ab / u,  GIoU = IoU - (1 - u)

which is algebraically the textbook IoU and GIoU. Coordinates are halved first (exact for normal
floats) so that differences of finite float64 values cannot overflow.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def as_boxes(boxes: ArrayLike) -> np.ndarray:
    """An (N, 4) float64 array; an empty input gives (0, 4)."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    return arr


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # den == 0 only for degenerate (zero-width) pairs: they share no area.
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _axis(a1: np.ndarray, a2: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per axis: (width a / enclosing, width b / enclosing, intersection / enclosing)."""
    wa = np.maximum(a2 - a1, 0.0)
    wb = np.maximum(b2 - b1, 0.0)
    inter = np.maximum(np.minimum(a2, b2) - np.maximum(a1, b1), 0.0)
    enclosing = np.maximum(a2, b2) - np.minimum(a1, b1)
    return _ratio(wa, enclosing), _ratio(wb, enclosing), _ratio(inter, enclosing)


def iou_giou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Element-wise (IoU, GIoU) of broadcastable (..., 4) box arrays."""
    a = np.asarray(a, dtype=np.float64) * 0.5
    b = np.asarray(b, dtype=np.float64) * 0.5
    with np.errstate(all="ignore"):
        ax, bx, ix = _axis(a[..., 0], a[..., 2], b[..., 0], b[..., 2])
        ay, by, iy = _axis(a[..., 1], a[..., 3], b[..., 1], b[..., 3])
        r_a, r_b, r_i = ax * ay, bx * by, ix * iy
        union = r_a + r_b - r_i
        iou = np.clip(_ratio(r_i, union), 0.0, 1.0)
        giou = np.clip(iou + union - 1.0, -1.0, 1.0)
    return iou, giou


def iou_matrix(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """(N, M) IoU of a (N, 4) against b (M, 4), xyxy."""
    a, b = as_boxes(a), as_boxes(b)
    return iou_giou(a[:, None, :], b[None, :, :])[0]


def giou_matrix(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """(N, M) generalised IoU of a (N, 4) against b (M, 4), xyxy; values in [-1, 1]."""
    a, b = as_boxes(a), as_boxes(b)
    return iou_giou(a[:, None, :], b[None, :, :])[1]
