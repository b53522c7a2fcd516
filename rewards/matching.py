"""Best one-to-one matching sums for a batch of small score matrices.

Only the optimal sum matters to the reward, never the assignment itself, so:
- a 1 x m or n x 1 matrix needs just its maximum (one `np.maximum.reduceat` for the whole batch);
- small shapes (up to 720 injective assignments, e.g. 4 x 4 = 24 or 6 x 6 = 720) are solved for all
  samples of that shape at once by enumerating the assignments;
- anything larger goes to the Hungarian algorithm (`scipy.optimize.linear_sum_assignment`).
All three give the exact optimum (up to float rounding).
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
from scipy.optimize import linear_sum_assignment

MAX_ENUMERATED = 720  # injective assignments per matrix beyond which Hungarian is cheaper
_CHUNK_ELEMENTS = 1 << 21  # bounds the (samples, assignments, n) temporary of one enumeration


@functools.lru_cache(maxsize=64)
def _assignments(n: int, m: int) -> np.ndarray:
    """(Q, n) column of each row, for every injective map of n rows into m >= n columns."""
    return np.asarray(list(itertools.permutations(range(m), n)), dtype=np.int64).reshape(-1, n)


def _gather(values: np.ndarray, starts: np.ndarray, n: int, m: int) -> np.ndarray:
    """(S, rows, cols) matrices with rows <= cols (transposed where needed)."""
    mats = values[starts[:, None] + np.arange(n * m)].reshape(-1, n, m)
    return mats if n <= m else mats.transpose(0, 2, 1)


def _enumerate(mats: np.ndarray) -> np.ndarray:
    count, n, m = mats.shape
    cols = _assignments(n, m)
    rows = np.arange(n)
    step = max(1, _CHUNK_ELEMENTS // (len(cols) * n))
    out = np.empty(count)
    for lo in range(0, count, step):
        picked = mats[lo : lo + step][:, rows, cols]  # (chunk, Q, n)
        out[lo : lo + step] = picked.sum(axis=2).max(axis=1)
    return out


def _hungarian(mats: np.ndarray) -> np.ndarray:
    out = np.empty(len(mats))
    for k, mat in enumerate(mats):
        rows, cols = linear_sum_assignment(mat, maximize=True)
        out[k] = mat[rows, cols].sum()
    return out


def best_match_sums(values: np.ndarray, starts: np.ndarray, n_rows: np.ndarray, n_cols: np.ndarray) -> np.ndarray:
    """Maximum one-to-one matching sum of each matrix.

    Matrix k is `values[starts[k] : starts[k] + n_rows[k] * n_cols[k]]`, row-major, with
    n_rows, n_cols >= 1. Entries are scores >= 0, so matching min(n, m) pairs is optimal.
    """
    out = np.zeros(len(starts))
    if len(starts) == 0:
        return out
    vector = np.minimum(n_rows, n_cols) == 1
    if vector.any():
        # Segments of the flat array are contiguous and non-empty: reduceat over their starts.
        seg_starts = starts[vector]
        bounds = np.empty(2 * len(seg_starts), dtype=np.int64)
        bounds[0::2] = seg_starts
        bounds[1::2] = seg_starts + n_rows[vector] * n_cols[vector]
        padded = np.append(values, 0.0)  # a segment may end at len(values)
        out[vector] = np.maximum.reduceat(padded, bounds)[0::2]
    matrices = np.flatnonzero(~vector)
    if len(matrices) == 0:
        return out
    shapes, group_of = np.unique(
        np.stack([n_rows[matrices], n_cols[matrices]], axis=1), axis=0, return_inverse=True
    )
    for g, (n, m) in enumerate(shapes.tolist()):  # samples of equal shape are solved together
        group = matrices[group_of.reshape(-1) == g]
        mats = _gather(values, starts[group], n, m)
        enumerable = math.perm(max(n, m), min(n, m)) <= MAX_ENUMERATED
        out[group] = _enumerate(mats) if enumerable else _hungarian(mats)
    return out
