"""Best one-to-one matching sums for a batch of small score matrices.

Only the optimal sum matters to the reward, never the assignment itself, so:
- when every row's best column is a different column, taking each row's maximum is a matching and
  no matching can beat it: the sum of row maxima is the optimum. One vectorised pass settles the
  matrices where this holds (most of them: predictions near distinct references);
- the rest go to the Hungarian algorithm (`scipy.optimize.linear_sum_assignment`), one call each,
  with the chosen cells summed for all of them at once. (Vectorised subset DPs and enumerations of
  the assignments were measured slower than this for the shapes grounding answers have.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

_DENSE_KEYS = 1 << 22  # conflict detection by bincount below this many (matrix, column) keys


def exact_sums(values: np.ndarray, starts: np.ndarray, n_rows: np.ndarray, n_cols: np.ndarray) -> np.ndarray:
    """Optimal sums of the row-major matrices `values[starts[k]:][:n_rows[k] * n_cols[k]]`."""
    rows, cols = [], []
    for start, n, m in zip(starts.tolist(), n_rows.tolist(), n_cols.tolist(), strict=True):
        r, c = linear_sum_assignment(values[start : start + n * m].reshape(n, m), maximize=True)
        rows.append(r)
        cols.append(c)
    matched = np.minimum(n_rows, n_cols)
    owner = np.repeat(np.arange(len(starts)), matched)
    cells = starts[owner] + np.concatenate([*rows, np.zeros(0, np.int64)]) * n_cols[owner]
    cells += np.concatenate([*cols, np.zeros(0, np.int64)])
    return np.bincount(owner, weights=values[cells], minlength=len(starts))


def _conflicts(row_owner: np.ndarray, best_col: np.ndarray, n_matrices: int, width: int) -> np.ndarray:
    """Matrices in which two rows share their best column."""
    keys = row_owner * width + best_col
    if n_matrices * width <= _DENSE_KEYS:
        clashing = np.flatnonzero(np.bincount(keys, minlength=n_matrices * width) > 1)
    else:
        unique, counts = np.unique(keys, return_counts=True)
        clashing = unique[counts > 1]
    return np.unique(clashing // width)


def greedy_sums(values: np.ndarray, n_rows: np.ndarray, n_cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sum of row maxima, matrices where that is not a matching) of back-to-back row-major matrices.

    Where every row's best column differs, the sum of row maxima is the optimum; elsewhere it is
    only an upper bound and the matrix must be solved exactly. Requires 1 <= n_rows <= n_cols.
    """
    size = len(n_rows)
    row_owner = np.repeat(np.arange(size), n_rows)
    row_cols = n_cols[row_owner]
    row_start = np.cumsum(row_cols) - row_cols
    row_max = np.maximum.reduceat(values, row_start)
    pair_row = np.repeat(np.arange(len(row_owner)), row_cols)
    col = np.arange(len(pair_row)) - row_start[pair_row]
    # First column reaching the row maximum (ties may fake a clash: that only costs an exact solve).
    best_col = np.minimum.reduceat(np.where(values == row_max[pair_row], col, len(col)), row_start)
    width = int(n_cols.max())
    best_col = np.minimum(best_col, width - 1)  # only a NaN row could miss its maximum
    return settle(row_owner, row_max, best_col, size, width)


def settle(
    row_owner: np.ndarray, row_max: np.ndarray, best_col: np.ndarray, n_matrices: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """(sum of row maxima, matrices where two rows share their best column) from per-row figures:
    each row's matrix, maximum and best column (< width)."""
    sums = np.bincount(row_owner, weights=row_max, minlength=n_matrices)
    return sums, _conflicts(row_owner, best_col, n_matrices, width)


def best_match_sums(values: np.ndarray, n_rows: np.ndarray, n_cols: np.ndarray) -> np.ndarray:
    """Maximum one-to-one matching sum of each matrix.

    The matrices lie back to back in `values`, each row-major with 1 <= n_rows <= n_cols. Entries
    are scores >= 0, so matching all rows is optimal.
    """
    if len(n_rows) == 0:
        return np.zeros(0)
    sums, clashing = greedy_sums(values, n_rows, n_cols)
    if len(clashing):
        sizes = n_rows * n_cols
        starts = np.cumsum(sizes) - sizes
        sums[clashing] = exact_sums(values, starts[clashing], n_rows[clashing], n_cols[clashing])
    return sums


@dataclass(frozen=True)
class Grid:
    """Score matrices stored anywhere in `values`: cell (row r, column j) at cell[r] + j * stride[r], rows
    numbered globally; with each row's maximum and first best column."""

    values: np.ndarray
    cell: np.ndarray
    stride: np.ndarray
    row_max: np.ndarray
    best: np.ndarray

    def reduced(self, rows: np.ndarray, n_cols: np.ndarray, width: int) -> np.ndarray:
        """(len(rows), width): row maximum minus each cell of the rows (>= 0), inf beyond n_cols."""
        j = np.arange(width)
        at = np.minimum(self.cell[rows][:, None] + j * self.stride[rows][:, None], len(self.values) - 1)
        return np.where(j < n_cols[:, None], self.row_max[rows][:, None] - self.values[at], np.inf)


def one_row_short(grid: Grid, first_row: np.ndarray, n_rows: np.ndarray, n_cols: np.ndarray) -> tuple[np.ndarray, ...]:
    """(which matrices, their optimal sums) among those whose rows' best columns are all distinct but one.

    Such a matrix without that row is solved by the row maxima, an optimal partial matching (with dual
    potentials u = row maximum, v = 0, every reduced cost u - value is >= 0). One shortest augmenting
    path from the left-out row (Dijkstra over reduced costs, as in the Hungarian algorithm) completes
    it optimally: the optimum is the sum of row maxima minus the path's cost. Vectorised over the
    matrices, one column settled per step; most paths end after a step or two.
    """
    owner = np.repeat(np.arange(len(n_rows)), n_rows)
    local = np.arange(len(owner)) - (np.cumsum(n_rows) - n_rows)[owner]
    rows = first_row[owner] + local
    width = int(n_cols.max(initial=1))
    key = owner * width + grid.best[rows]
    order = np.argsort(key, kind="stable")
    spare = np.zeros(len(key), dtype=bool)  # a row whose best column an earlier row has
    spare[order[1:]] = key[order[1:]] == key[order[:-1]]
    single = np.bincount(owner[spare], minlength=len(n_rows)) == 1
    picked = np.flatnonzero(single)
    position = np.cumsum(single) - 1
    mine = single[owner]
    col_owner = np.full((len(picked), width), -1, dtype=np.int64)
    matched = mine & ~spare
    col_owner[position[owner[matched]], grid.best[rows[matched]]] = local[matched]
    start = np.zeros(len(picked), dtype=np.int64)
    start[position[owner[mine & spare]]] = rows[mine & spare]
    totals = np.bincount(position[owner[mine]], weights=grid.row_max[rows[mine]], minlength=len(picked))
    cost = _path_costs(grid, start, first_row[picked], n_cols[picked], col_owner)
    return picked, totals - cost


def _path_costs(
    grid: Grid, start: np.ndarray, first_row: np.ndarray, n_cols: np.ndarray, col_owner: np.ndarray
) -> np.ndarray:
    """Cost of the shortest augmenting path from row `start` of each matrix to a free column."""
    width = col_owner.shape[1]
    cost = np.zeros(len(start))
    index = np.arange(len(start))
    # The first column settled is the start row's best (reduced cost 0), and another row holds it.
    column = grid.best[start]
    visited = np.zeros((len(start), width), dtype=bool)
    visited[index, column] = True
    dist = np.minimum(
        grid.reduced(start, n_cols, width), grid.reduced(first_row + col_owner[index, column], n_cols, width)
    )
    while len(index):
        masked = np.where(visited, np.inf, dist)
        column = masked.argmin(axis=1)
        step = np.arange(len(index))
        reached, row = masked[step, column], col_owner[step, column]
        free = row < 0
        cost[index[free]] = reached[free]
        go = ~free
        index, dist, visited, col_owner = index[go], dist[go], visited[go], col_owner[go]
        n_cols, first_row, column, reached, row = n_cols[go], first_row[go], column[go], reached[go], row[go]
        visited[np.arange(len(index)), column] = True
        dist = np.minimum(dist, reached[:, None] + grid.reduced(first_row + row, n_cols, width))
    return cost
