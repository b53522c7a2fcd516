"""GIoU matching and overlap penalty of a whole batch, on grids grouped by width.

Each sample's GIoU matrix has its smaller box set as rows. The rows of all samples whose matrices
have the same width m are stacked into one (R, m) grid (a sample's rows stay together): the row box
broadcasts along the grid, only the column boxes are gathered per cell, and each row's maximum and
first best column are reductions along the grid's axis 1. The overlap penalty stacks the samples with
the same number k of predicted boxes into one (K, k (k - 1) / 2) grid of their pairs i < j. A batch
has a few distinct widths, so a few dozen numpy calls cover it; large grids go in cache-sized pieces.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np

from rewards.components import FlatBoxes, offsets, segments
from rewards.geometry import match_scores, pair_scores
from rewards.matching import Grid, exact_sums, one_row_short, settle

_CELLS_PER_PIECE = 1 << 15  # cells of a grid computed at once: its temporaries stay in cache
_LOOP_ROWS = 64  # grids up to this wide find first maxima by a loop over their rows


def _groups(keys: np.ndarray, weights: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(key, the indices with that key, increasing) for every key > 0, in pieces of about
    _CELLS_PER_PIECE cells, an index holding key x weight cells (weight 1 if not given)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    bounds = (np.flatnonzero(np.diff(sorted_keys)) + 1).tolist()
    for lo, hi in zip([0, *bounds], [*bounds, len(keys)], strict=True):
        key = int(sorted_keys[lo]) if hi > lo else 0
        if key <= 0:
            continue
        cells = np.cumsum(key * (weights[order[lo:hi]] if weights is not None else np.ones(hi - lo, np.int64)))
        cuts = np.searchsorted(cells, np.arange(_CELLS_PER_PIECE, int(cells[-1]), _CELLS_PER_PIECE)).tolist()
        for start, end in zip([lo, *(lo + c for c in cuts)], [*(lo + c for c in cuts), hi], strict=True):
            if end > start:
                yield key, order[start:end]


@functools.lru_cache(maxsize=128)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) of the pairs i < j of n boxes, row-major."""
    return np.triu_indices(n, 1)


def _both(pred: FlatBoxes, ref: FlatBoxes) -> tuple[np.ndarray, ...]:
    """The coordinates of the predicted boxes followed by the reference boxes (offset len(pred))."""
    return tuple(np.concatenate([p, r]) for p, r in zip(pred.coords, ref.coords, strict=True))


def _first_best(grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(maximum, first row reaching it) of each column of a (w, R) grid."""
    best_value = np.maximum.reduce(grid, axis=0)
    if len(grid) > _LOOP_ROWS:
        return best_value, grid.argmax(axis=0)
    first = np.zeros(grid.shape[1], dtype=np.int64)
    for k in range(len(grid) - 1, -1, -1):  # w passes over R: faster than argmax(axis=0)
        np.copyto(first, k, where=grid[k] == best_value)
    return best_value, first


def giou_reward(pred: FlatBoxes, ref: FlatBoxes, max_boxes: int) -> np.ndarray:
    """Optimal one-to-one matching of (GIoU + 1) / 2, summed, over max(|P|, |G|)."""
    out = ((pred.count == 0) & (ref.count == 0)).astype(np.float64)
    active = (pred.count > 0) & (ref.count > 0) & (pred.count <= max_boxes)
    pred_rows = pred.count <= ref.count
    n_rows = np.where(active, np.minimum(pred.count, ref.count), 0)
    n_cols = np.where(active, np.maximum(pred.count, ref.count), 0)
    ref_start = ref.start + len(pred.coords[0])
    row_start = np.where(pred_rows, pred.start, ref_start)
    col_start = np.where(pred_rows, ref_start, pred.start)
    coords = _both(pred, ref)
    row_sample, local = segments(n_rows)
    row_box = row_start[row_sample] + local
    row_max, best = np.zeros(len(row_sample)), np.zeros(len(row_sample), dtype=np.int64)
    values = np.empty(int(n_rows @ n_cols))  # the grids, one after the other
    cell = np.zeros(len(row_sample), dtype=np.int64)  # where each row's first column lies in `values`
    stride = np.ones(len(row_sample), dtype=np.int64)  # and how far apart its columns are
    filled = 0
    for width, samples in _groups(n_cols, n_rows):
        owner, row = segments(n_rows[samples])
        rows = offsets(n_rows)[samples][owner] + row  # the samples' rows, consecutive
        # The grid is transposed, (width, rows): numpy then runs every operation along the long axis.
        col_box = col_start[samples][owner] + np.arange(width)[:, None]
        grid = values[filled : filled + col_box.size].reshape(col_box.shape)
        a = tuple(c[row_box[rows]] for c in coords)
        match_scores(a, tuple(c[col_box] for c in coords), pred.tame and ref.tame, grid)
        row_max[rows], best[rows] = _first_best(grid)
        cell[rows], stride[rows] = filled + np.arange(len(rows)), len(rows)
        filled += grid.size
    sums, clashing = settle(row_sample, row_max, best, len(out), int(n_cols.max(initial=1)))
    if len(clashing):
        sums[clashing] = _exact(
            Grid(values, cell, stride, row_max, best), offsets(n_rows)[clashing], n_rows[clashing], n_cols[clashing]
        )
    out[active] = np.clip(sums[active] / n_cols[active], 0.0, 1.0)
    return out


def _exact(grid: Grid, first_row: np.ndarray, n_rows: np.ndarray, n_cols: np.ndarray) -> np.ndarray:
    """Optimal sums of the matrices whose rows start at `first_row`: one augmenting path where a
    single row is short of a column, the Hungarian algorithm (scipy) for the rest."""
    sums = np.zeros(len(first_row))
    picked, sums_picked = one_row_short(grid, first_row, n_rows, n_cols)
    sums[picked] = sums_picked
    rest = np.ones(len(first_row), dtype=bool)
    rest[picked] = False
    rest = np.flatnonzero(rest)
    # Their matrices, gathered row-major (a sample's rows are consecutive in its grid).
    owner, i, j = _cells(n_rows[rest], n_cols[rest])
    rows = first_row[rest][owner] + i
    matrices = grid.values[grid.cell[rows] + j * grid.stride[rows]]
    sums[rest] = exact_sums(matrices, offsets(n_rows[rest] * n_cols[rest]), n_rows[rest], n_cols[rest])
    return sums


def _cells(n_rows: np.ndarray, n_cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(matrix, i, j) of every cell of n_rows x n_cols matrices, row-major, one after the other."""
    owner, local = segments(n_rows * n_cols)
    i, j = np.divmod(local, n_cols[owner])
    return owner, i, j


def overlap_penalty(pred: FlatBoxes, threshold: float, max_boxes: int) -> np.ndarray:
    """Minus the mean over predicted pairs of max(0, (IoU - t) / (1 - t)); -1 beyond max_boxes."""
    out = np.where(pred.count > max_boxes, -1.0, 0.0)
    active = (pred.count >= 2) & (pred.count <= max_boxes)
    n = np.where(active, pred.count, 0)
    for n_pairs, samples in _groups(n * (n - 1) // 2):
        k = int(n[samples[0]])
        first, second = _pairs(k)
        # The samples' boxes as (k, samples) grids, gathered once; the pairs' rows are then plain copies.
        boxes = tuple(c[pred.start[samples] + np.arange(k)[:, None]] for c in pred.coords)
        iou, _ = pair_scores(tuple(g[first] for g in boxes), tuple(g[second] for g in boxes), pred.tame, giou=False)
        excess = np.maximum(0.0, (iou - threshold) / (1.0 - threshold))
        # + 0.0 turns -0.0 into 0.0 for samples without any overlap.
        out[samples] = np.clip(-np.add.reduce(excess, axis=0) / n_pairs, -1.0, 0.0) + 0.0
    return out
