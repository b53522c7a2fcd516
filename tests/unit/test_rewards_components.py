"""Each reward component against its definition, the exact matching, and the weighted total."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from rewards import RewardConfig, score, score_batch
from rewards.matching import Grid, best_match_sums, exact_sums, one_row_short

REF2 = "Nodule <box>[10, 20, 30, 40]</box> Mass <box>[[100, 100, 300, 400], [50, 60, 70, 80]]</box>"


def box_text(boxes: list[list[int]], label: str = "A") -> str:
    return f"{label} <box>{boxes}</box>"


# ---- label_accuracy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Nodule <box>[1,2,3,4]</box> Mass <box>[1,2,3,4]</box>", 1.0),
        ("mass: <box>[1,2,3,4]</box>", 0.5),
        ("Mass <box>[1,2,3,4]</box> Cyst <box>[1,2,3,4]</box>", 1 / 3),
        ("Mass <box>[1,2,3,4]</box> mass. <box>[1,2,3,4]</box>", 0.5),  # a set: duplicates count once
        ("Cyst <box>[1,2,3,4]</box>", 0.0),
        ("Mass and Nodule, no boxes", 0.0),
        ("Nodule <box>junk</box> Mass <box>[]</box>", 1.0),  # labels count even without valid boxes
    ],
)
def test_label_accuracy_is_jaccard(completion: str, expected: float) -> None:
    assert score(completion, REF2)["label_accuracy"] == pytest.approx(expected)


def test_label_accuracy_without_reference_blocks() -> None:
    assert score("No findings.", "No findings.")["label_accuracy"] == 1.0
    assert score("Mass <box>[1,2,3,4]</box>", "No findings.")["label_accuracy"] == 0.0
    assert score("Mass <box>junk</box>", "No findings.")["label_accuracy"] == 0.0
    assert score("Mass <box>[1,2,3,4]", "No findings.")["label_accuracy"] == 1.0  # unclosed: no block


# ---- giou ----------------------------------------------------------------------------------------


def test_giou_empty_cases() -> None:
    assert score("none", "No findings.")["giou"] == 1.0
    assert score("A <box>junk</box>", "A <box>junk</box>")["giou"] == 1.0  # P and G both empty
    assert score("A <box>[1,2,3,4]</box>", "No findings.")["giou"] == 0.0
    assert score("none", REF2)["giou"] == 0.0


def test_giou_divides_by_the_larger_set() -> None:
    ref = box_text([[0, 0, 10, 10]])
    assert score(box_text([[0, 0, 10, 10], [50, 50, 60, 60]]), ref)["giou"] == pytest.approx(0.5)
    three = box_text([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]])
    assert score(box_text([[0, 0, 10, 10]]), three)["giou"] == pytest.approx(1 / 3)


def test_giou_ignores_labels_and_blocks() -> None:
    ref = "A <box>[0,0,10,10]</box> B <box>[20,20,30,30]</box>"
    assert score("X <box>[[20,20,30,30],[0,0,10,10]]</box>", ref)["giou"] == 1.0


def test_giou_is_zero_beyond_max_boxes() -> None:
    ref = box_text([[0, 0, 10, 10]])
    many = box_text([[0, 0, 10, 10]] * 4)
    assert score(many, ref, RewardConfig(max_boxes=4))["giou"] == pytest.approx(0.25)
    assert score(many, ref, RewardConfig(max_boxes=3))["giou"] == 0.0


def test_giou_disjoint_boxes_earn_partial_credit() -> None:
    # (GIoU + 1) / 2 with GIoU = -(100 - 50) / 100 for two unit-height boxes 50 apart.
    out = score(box_text([[0, 0, 25, 1]]), box_text([[75, 0, 100, 1]]))
    assert out["giou"] == pytest.approx((1 - 0.5) / 2)


# ---- matching ------------------------------------------------------------------------------------


def scipy_sum(matrix: np.ndarray) -> float:
    rows, cols = linear_sum_assignment(matrix, maximize=True)
    return float(matrix[rows, cols].sum())


@pytest.mark.parametrize("integers", [False, True])  # integer matrices have many ties
def test_best_match_sums_is_optimal(integers: bool) -> None:
    rng = np.random.default_rng(0)
    shapes = [(n, m) for n in range(1, 9) for m in range(n, 12)] * 3
    mats = [rng.integers(0, 3, s).astype(float) if integers else rng.random(s) for s in shapes]
    got = best_match_sums(
        np.concatenate([m.ravel() for m in mats]), np.array([s[0] for s in shapes]), np.array([s[1] for s in shapes])
    )
    np.testing.assert_allclose(got, [scipy_sum(m) for m in mats], atol=1e-12)


def test_exact_sums_handles_both_orientations() -> None:
    rng = np.random.default_rng(1)
    mats = [rng.random((n, m)) for n, m in itertools.product(range(1, 7), repeat=2)]
    sizes = np.array([m.size for m in mats])
    got = exact_sums(
        np.concatenate([m.ravel() for m in mats]),
        np.cumsum(sizes) - sizes,
        np.array([m.shape[0] for m in mats]),
        np.array([m.shape[1] for m in mats]),
    )
    np.testing.assert_allclose(got, [scipy_sum(m) for m in mats], atol=1e-12)


# ---- overlap_penalty -----------------------------------------------------------------------------


def test_overlap_penalty() -> None:
    ref = box_text([[0, 0, 10, 10]])
    assert score(box_text([[0, 0, 10, 10]]), ref)["overlap_penalty"] == 0.0
    assert score(box_text([[0, 0, 10, 10], [20, 20, 30, 30]]), ref)["overlap_penalty"] == 0.0
    # IoU 0.8 -> (0.8 - 0.5) / 0.5 = 0.6; the pair with IoU 0 adds 0: mean over 3 pairs.
    three = box_text([[0, 0, 10, 10], [0, 0, 10, 8], [50, 50, 60, 60]])
    assert score(three, ref)["overlap_penalty"] == pytest.approx(-0.6 / 3)
    # Pairs are counted across blocks and regardless of labels.
    assert score("A <box>[0,0,10,10]</box> B <box>[0,0,10,10]</box>", ref)["overlap_penalty"] == -1.0


def test_overlap_threshold() -> None:
    pair = box_text([[0, 0, 10, 10], [0, 0, 10, 8]])  # IoU 0.8
    ref = box_text([[0, 0, 10, 10]])
    assert score(pair, ref, RewardConfig(overlap_threshold=0.0))["overlap_penalty"] == pytest.approx(-0.8)
    assert score(pair, ref, RewardConfig(overlap_threshold=0.8))["overlap_penalty"] == 0.0
    assert score(pair, ref, RewardConfig(overlap_threshold=0.9))["overlap_penalty"] == 0.0


def test_overlap_beyond_max_boxes() -> None:
    far = box_text([[10 * i, 0, 10 * i + 5, 5] for i in range(5)])
    ref = box_text([[0, 0, 10, 10]])
    assert score(far, ref, RewardConfig(max_boxes=5))["overlap_penalty"] == 0.0
    assert score(far, ref, RewardConfig(max_boxes=4))["overlap_penalty"] == -1.0


# ---- overlong_penalty ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 0.0), (80, 0.0), (81, -1 / 20), (90, -0.5), (100, -1.0), (101, -1.0), (10_000, -1.0)],
)
def test_overlong_penalty(length: int, expected: float) -> None:
    config = RewardConfig(overlong_max_tokens=100, overlong_buffer=20, overlong_penalty=1.0)
    out = score("x", "No findings.", config, length=length)
    assert out["overlong_penalty"] == pytest.approx(expected)
    assert out["total"] == pytest.approx(1.0 + 1.0 + 0.5 + expected)


def test_overlong_penalty_off() -> None:
    assert score("x", "y", RewardConfig(overlong_max_tokens=10), length=None)["overlong_penalty"] == 0.0
    assert score("x", "y", RewardConfig(), length=10**6)["overlong_penalty"] == 0.0
    hard = RewardConfig(overlong_max_tokens=10)  # no buffer: a hard cliff
    assert score("x", "y", hard, length=10)["overlong_penalty"] == 0.0
    assert score("x", "y", hard, length=11)["overlong_penalty"] == -1.0


def test_overlong_lengths_in_batch() -> None:
    config = RewardConfig(overlong_max_tokens=100, overlong_buffer=20)
    out = score_batch(["a", "b", "c"], ["r"] * 3, config, lengths=np.array([10, 90, 200]))
    np.testing.assert_allclose(out["overlong_penalty"], [0.0, -0.5, -1.0])
    with pytest.raises(ValueError, match="lengths"):
        score_batch(["a"], ["r"], config, lengths=[1, 2])
    with pytest.raises(ValueError, match="lengths"):
        score_batch(["a"], ["r"], config, lengths=[float("nan")])


# ---- batch API -----------------------------------------------------------------------------------


def test_score_batch_argument_errors() -> None:
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        score_batch(["a", "b"], ["r"])
    with pytest.raises(TypeError, match=r"completions\[1\]"):
        score_batch(["a", None], ["r", "r"])  # type: ignore[list-item]


def test_extra_reward_by_import_path() -> None:
    config = RewardConfig(extra={"tests.unit.rewards_extra:length_bonus": 0.5})
    out = score_batch(["ab", "abcd"], ["r", "r"], config)
    np.testing.assert_allclose(out["tests.unit.rewards_extra:length_bonus"], [0.2, 0.4])
    base = score_batch(["ab", "abcd"], ["r", "r"])
    np.testing.assert_allclose(out["total"], base["total"] + 0.5 * np.array([0.2, 0.4]))


def test_a_non_finite_extra_reward_is_kept_and_named() -> None:
    config = RewardConfig(extra={"tests.unit.rewards_extra:not_finite": 1.0})
    with pytest.warns(UserWarning, match=r"extra reward 'tests.unit.rewards_extra:not_finite' returned 2 non-finite "
                                         r"values \(first: sample 0\)"):
        out = score_batch(["a", "b"], ["r", "r"], config)
    assert np.isnan(out["total"]).all()  # the trainer skips that update (rl/faults.py)


@pytest.mark.parametrize("kind", ["random", "ties", "near duplicates"])
def test_one_augmenting_path_matches_the_hungarian_algorithm(kind: str) -> None:
    """The fast path for matrices whose rows' best columns clash once equals scipy's optimum;
    matrices with any other clash pattern are left to scipy (not picked)."""
    rng = np.random.default_rng(2)
    shapes = [(n, m) for n in range(1, 10) for m in range(n, 13)] * 20
    mats = []
    for n, m in shapes:
        if kind == "ties":
            mats.append(rng.integers(0, 3, (n, m)).astype(float))
        elif kind == "near duplicates":  # two rows nearly alike: they clash on their best column
            mat = rng.random((n, m))
            mat[-1] = mat[0] + rng.normal(0, 1e-3, m)
            mats.append(mat)
        else:
            mats.append(rng.random((n, m)))
    n_rows, n_cols = np.array(shapes).T
    values = np.concatenate([m.ravel() for m in mats])
    first_row = np.cumsum(n_rows) - n_rows
    cell = np.concatenate(
        [
            start + m * np.arange(n)
            for start, n, m in zip(np.cumsum(n_rows * n_cols) - n_rows * n_cols, n_rows, n_cols, strict=True)
        ]
    )
    grid = Grid(
        values,
        cell,
        np.ones(len(cell), dtype=np.int64),
        np.concatenate([m.max(axis=1) for m in mats]),
        np.concatenate([m.argmax(axis=1) for m in mats]),
    )
    picked, sums = one_row_short(grid, first_row, n_rows, n_cols)
    assert len(picked) > 100
    spare = [len(b) - len(set(b.tolist())) for b in (m.argmax(axis=1) for m in mats)]
    assert picked.tolist() == [k for k, s in enumerate(spare) if s == 1]
    np.testing.assert_allclose(sums, [scipy_sum(mats[k]) for k in picked], atol=1e-12)
