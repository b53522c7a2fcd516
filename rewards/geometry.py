"""Vectorised IoU / GIoU of xyxy boxes, finite for any finite input.

The textbook form (areas, then inter / union) overflows to inf - inf = NaN for huge coordinates and
divides 0 by 0 for tiny ones. The robust form takes every area relative to the pair's enclosing box,
so all intermediates are ratios in [0, 1]:

    rx = w / ew per axis,  r = rx * ry,  u = r_a + r_b - r_ab = union / enclosing area
    IoU = r_ab / u,  GIoU = IoU - (1 - u)

which is algebraically the textbook IoU and GIoU. Coordinates are halved first (exact for normal
floats) so that differences of finite float64 values cannot overflow. Batches whose boxes are all of
sane magnitude (checked once, `is_tame`) take the cheaper textbook form.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

_TAME = 1e100  # |coordinate| <= 1e100 and sides >= 1e-100: areas stay within float64, unions > 0


def as_boxes(boxes: ArrayLike) -> np.ndarray:
    """An (N, 4) float64 array; an empty input gives (0, 4)."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    return arr


def is_tame(boxes: np.ndarray) -> bool:
    """True when the textbook formulas cannot overflow or divide by zero on these boxes."""
    if boxes.size == 0:
        return True
    with np.errstate(all="ignore"):
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        return bool(np.abs(boxes).max() <= _TAME and sides.min() >= 1.0 / _TAME)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # den == 0 only for degenerate (zero-width) pairs: they share no area.
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den > 0)
    return out


Coords = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # (x1, y1, x2, y2), broadcastable


def columns(boxes: np.ndarray) -> Coords:
    """(x1, y1, x2, y2) of a (..., 4) array."""
    return boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]


def _axis(a1: np.ndarray, a2: np.ndarray, b1: np.ndarray, b2: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per axis: (width a / enclosing, width b / enclosing, intersection / enclosing)."""
    wa = np.maximum(a2 - a1, 0.0)
    wb = np.maximum(b2 - b1, 0.0)
    inter = np.maximum(np.minimum(a2, b2) - np.maximum(a1, b1), 0.0)
    enclosing = np.maximum(a2, b2) - np.minimum(a1, b1)
    return _ratio(wa, enclosing), _ratio(wb, enclosing), _ratio(inter, enclosing)


def robust(a: Coords, b: Coords) -> tuple[np.ndarray, np.ndarray]:
    """(IoU, GIoU) for any finite boxes, degenerate ones included (IoU 0 when no area)."""
    ax1, ay1, ax2, ay2 = (np.asarray(v, dtype=np.float64) * 0.5 for v in a)
    bx1, by1, bx2, by2 = (np.asarray(v, dtype=np.float64) * 0.5 for v in b)
    with np.errstate(all="ignore"):
        rax, rbx, rix = _axis(ax1, ax2, bx1, bx2)
        ray, rby, riy = _axis(ay1, ay2, by1, by2)
        r_a, r_b, r_i = rax * ray, rbx * rby, rix * riy
        union = r_a + r_b - r_i
        iou = np.clip(_ratio(r_i, union), 0.0, 1.0)
        giou = np.clip(iou + union - 1.0, -1.0, 1.0)
    return iou, giou


def textbook(a: Coords, b: Coords, giou: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """(IoU, GIoU or None) from areas; only for boxes that pass `is_tame`."""
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    inter = np.maximum(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0.0)
    inter *= np.maximum(np.minimum(ay2, by2) - np.maximum(ay1, by1), 0.0)
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    iou = np.clip(inter / union, 0.0, 1.0)
    if not giou:
        return iou, None
    enclosing = (np.maximum(ax2, bx2) - np.minimum(ax1, bx1)) * (np.maximum(ay2, by2) - np.minimum(ay1, by1))
    return iou, np.clip(iou - (enclosing - union) / enclosing, -1.0, 1.0)


def match_scores(a: Coords, b: Coords, tame: bool, out: np.ndarray) -> None:
    """(GIoU + 1) / 2 of each pair into `out` (the broadcast shape of a and b).

    For tame boxes, the operations of `textbook` in the same order (so the same values), written into
    four scratch arrays and `out` rather than two dozen fresh temporaries."""
    if not tame:
        np.multiply(robust(a, b)[1] + 1.0, 0.5, out=out)
        return
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    inter, union, iou, scratch = (np.empty(out.shape) for _ in range(4))
    np.subtract(np.minimum(ax2, bx2, out=inter), np.maximum(ax1, bx1, out=scratch), out=inter)
    np.maximum(inter, 0.0, out=inter)
    np.subtract(np.minimum(ay2, by2, out=union), np.maximum(ay1, by1, out=scratch), out=union)
    inter *= np.maximum(union, 0.0, out=union)
    np.multiply(np.subtract(bx2, bx1, out=union), np.subtract(by2, by1, out=scratch), out=union)
    union += (ax2 - ax1) * (ay2 - ay1)
    union -= inter
    np.clip(np.divide(inter, union, out=iou), 0.0, 1.0, out=iou)
    enclosing = np.subtract(np.maximum(ax2, bx2, out=inter), np.minimum(ax1, bx1, out=scratch), out=inter)
    enclosing *= np.subtract(np.maximum(ay2, by2, out=scratch), np.minimum(ay1, by1, out=out), out=scratch)
    giou = np.subtract(iou, np.divide(np.subtract(enclosing, union, out=union), enclosing, out=union), out=union)
    np.clip(giou, -1.0, 1.0, out=giou)
    np.multiply(np.add(giou, 1.0, out=giou), 0.5, out=out)


def pair_scores(a: Coords, b: Coords, tame: bool, giou: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Element-wise (IoU, GIoU or None); `tame` = both sides passed `is_tame` (checked per batch)."""
    if tame:
        return textbook(a, b, giou)
    iou, g = robust(a, b)
    return iou, (g if giou else None)


def iou_matrix(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """(N, M) IoU of a (N, 4) against b (M, 4), xyxy."""
    a, b = as_boxes(a), as_boxes(b)
    return robust(columns(a[:, None, :]), columns(b[None, :, :]))[0]


def giou_matrix(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """(N, M) generalised IoU of a (N, 4) against b (M, 4), xyxy; values in [-1, 1]."""
    a, b = as_boxes(a), as_boxes(b)
    return robust(columns(a[:, None, :]), columns(b[None, :, :]))[1]
