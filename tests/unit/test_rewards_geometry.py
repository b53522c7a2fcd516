"""rewards.geometry: shapes, values, ranges, and finiteness on extreme coordinates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import giou_matrix, iou_matrix
from rewards.geometry import columns, is_tame, match_scores, pair_scores, robust, textbook


def random_boxes(rng: np.random.Generator, n: int, scale: float = 1000.0) -> np.ndarray:
    xy = rng.uniform(0, scale, (n, 2))
    wh = rng.uniform(scale / 1000, scale / 4, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def test_shapes_and_dtype() -> None:
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 3), random_boxes(rng, 5)
    for fn in (iou_matrix, giou_matrix):
        out = fn(a, b)
        assert out.shape == (3, 5) and out.dtype == np.float64
        assert fn(a, np.zeros((0, 4))).shape == (3, 0)
        assert fn([], b).shape == (0, 5)
        assert fn(a.astype(np.int32), b).dtype == np.float64


def test_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        iou_matrix(np.zeros((2, 3)), np.zeros((1, 4)))


def test_known_values() -> None:
    a = np.array([[0, 0, 10, 10]])
    np.testing.assert_allclose(iou_matrix(a, a), [[1.0]])
    np.testing.assert_allclose(giou_matrix(a, a), [[1.0]])
    # Disjoint: IoU 0, GIoU = -(enclosing - union) / enclosing.
    b = np.array([[20, 0, 30, 10]])
    assert iou_matrix(a, b)[0, 0] == 0.0
    assert giou_matrix(a, b)[0, 0] == pytest.approx(-(300 - 200) / 300)
    # Contained: IoU = area ratio, GIoU = IoU (the enclosing box is the union).
    c = np.array([[0, 0, 5, 5]])
    assert iou_matrix(a, c)[0, 0] == pytest.approx(0.25)
    assert giou_matrix(a, c)[0, 0] == pytest.approx(0.25)
    # Far apart: GIoU tends to -1.
    d = np.array([[1e6, 1e6, 1e6 + 1, 1e6 + 1]])
    assert giou_matrix(a, d)[0, 0] == pytest.approx(-1.0, abs=1e-6)


def test_symmetry_and_ranges() -> None:
    rng = np.random.default_rng(1)
    a, b = random_boxes(rng, 40), random_boxes(rng, 30)
    iou, giou = iou_matrix(a, b), giou_matrix(a, b)
    np.testing.assert_allclose(iou, iou_matrix(b, a).T)
    np.testing.assert_allclose(giou, giou_matrix(b, a).T)
    assert ((iou >= 0) & (iou <= 1)).all()
    assert ((giou >= -1) & (giou <= 1)).all()
    assert (giou <= iou + 1e-12).all()


def test_robust_equals_textbook_on_tame_boxes() -> None:
    rng = np.random.default_rng(2)
    a, b = random_boxes(rng, 500), random_boxes(rng, 500)
    assert is_tame(a) and is_tame(b)
    iou_r, giou_r = robust(columns(a), columns(b))
    iou_t, giou_t = textbook(columns(a), columns(b))
    np.testing.assert_allclose(iou_r, iou_t, rtol=0, atol=1e-12)
    np.testing.assert_allclose(giou_r, giou_t, rtol=0, atol=1e-12)


def test_scale_and_translation_invariance() -> None:
    rng = np.random.default_rng(3)
    a, b = random_boxes(rng, 20), random_boxes(rng, 20)
    for scale, shift in ((1e-200, 0.0), (1e200, 0.0), (1.0, 1e12)):
        np.testing.assert_allclose(iou_matrix(a * scale + shift, b * scale + shift), iou_matrix(a, b), atol=1e-3)
        np.testing.assert_allclose(giou_matrix(a * scale, b * scale), giou_matrix(a, b), atol=1e-9)


def test_extreme_and_degenerate_boxes_stay_finite() -> None:
    big = np.finfo(np.float64).max
    boxes = np.array(
        [
            [-big, -big, big, big],
            [0, 0, 5e-324, 5e-324],
            [0, 0, 1, 1],
            [3, 3, 3, 3],  # degenerate: no area
            [-1e308, 0, 1e308, 1],
        ]
    )
    assert not is_tame(boxes)
    for fn, low in ((iou_matrix, 0.0), (giou_matrix, -1.0)):
        out = fn(boxes, boxes)
        assert np.isfinite(out).all()
        assert ((out >= low) & (out <= 1.0)).all()
    assert iou_matrix(boxes[:1], boxes[:1])[0, 0] == 1.0
    assert iou_matrix(boxes[3:4], boxes[3:4])[0, 0] == 0.0


finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(finite, finite, finite, finite), min_size=1, max_size=6),
    st.lists(st.tuples(finite, finite, finite, finite), min_size=1, max_size=6),
)
def test_any_finite_boxes_give_finite_values_in_range(a: list, b: list) -> None:
    iou, giou = iou_matrix(a, b), giou_matrix(a, b)
    assert np.isfinite(iou).all() and np.isfinite(giou).all()
    assert ((iou >= 0) & (iou <= 1)).all()
    assert ((giou >= -1) & (giou <= 1)).all()


@pytest.mark.parametrize("scale", [1.0, 1e120])
def test_match_scores_are_the_textbook_giou_in_place(scale: float) -> None:
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 900, (2, 3, 50, 2)) * scale
    boxes = np.concatenate([lo, lo + rng.uniform(1, 300, lo.shape) * scale], axis=-1)  # (2, 3, 50, 4)
    a, b = columns(boxes[0, :1]), columns(boxes[1])  # a row of boxes against a (3, 50) grid
    tame = scale == 1.0
    out = np.empty((3, 50))
    match_scores(a, b, tame, out)
    giou = pair_scores(a, b, tame)[1]
    assert giou is not None
    np.testing.assert_array_equal(out, (giou + 1.0) * 0.5)
