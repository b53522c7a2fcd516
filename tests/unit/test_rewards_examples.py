"""The worked examples of the reward contract (issue 4), as exact numbers, and the public API shape."""

from __future__ import annotations

import numpy as np
import pytest

import rewards
from rewards import KEYS, RewardConfig, giou_matrix, iou_matrix, parse_answer, score, score_batch

R = "Fractures <box>[[156, 516, 231, 607], [240, 529, 296, 581]]</box>"


def approx(value: float) -> object:
    return pytest.approx(value, abs=1e-12)


def test_public_api() -> None:
    for name in ("RewardConfig", "parse_answer", "iou_matrix", "giou_matrix", "score", "score_batch"):
        assert name in rewards.__all__
    assert KEYS == ("label_accuracy", "giou", "tag_count", "overlap_penalty", "overlong_penalty", "total")


def test_iou_giou_example() -> None:
    a, b = [[0, 0, 10, 10]], [[5, 5, 15, 15]]
    assert iou_matrix(a, b)[0, 0] == approx(25 / 175)
    assert giou_matrix(a, b)[0, 0] == approx(25 / 175 - 50 / 225)
    assert giou_matrix(a, b)[0, 0] == pytest.approx(-0.0793651, abs=1e-7)


def test_reference_against_itself() -> None:
    assert score(R, R) == {
        "label_accuracy": 1.0,
        "giou": 1.0,
        "tag_count": 1.0,
        "overlap_penalty": 0.0,
        "overlong_penalty": 0.0,
        "total": 2.5,
    }


def test_one_of_two_boxes_with_normalised_label() -> None:
    out = score("fractures. <box>[[156, 516, 231, 607]]</box>", R)
    assert out["label_accuracy"] == 1.0
    assert out["giou"] == approx(0.5)
    assert out["tag_count"] == 1.0
    assert out["overlap_penalty"] == 0.0
    assert out["total"] == approx(2.0)


def test_unclosed_box() -> None:
    out = score("Fractures <box>[[156,516,231,607]]", R)
    assert out["label_accuracy"] == 0.0
    assert out["giou"] == 0.0
    assert out["tag_count"] == 0.25


def test_overlapping_extra_box() -> None:
    out = score("Fractures <box>[[0,0,10,10],[0,0,10,8]]</box>", "Fractures <box>[[0,0,10,10]]</box>")
    assert out["giou"] == approx(0.5)
    assert out["overlap_penalty"] == approx(-0.6)
    assert out["total"] == approx(1.4)


def test_hungarian_example() -> None:
    out = score("F <box>[[20,20,30,30],[0,0,10,10]]</box>", "F <box>[[21,21,30,30],[0,0,10,10]]</box>")
    assert out["giou"] == approx(0.9525)


def test_identical_predicted_boxes() -> None:
    out = score("F <box>[[0,0,10,10],[0,0,10,10]]</box>", "F <box>[[0,0,10,10]]</box>")
    assert out["overlap_penalty"] == -1.0


def test_score_batch_matches_score() -> None:
    completions = ["fractures. <box>[[156, 516, 231, 607]]</box>", R, "nothing", "Fractures <box>[[156,516,231,607]]"]
    batch = score_batch(completions, [R] * len(completions))
    assert list(batch) == list(KEYS)
    for k, completion in enumerate(completions):
        single = score(completion, R)
        for key in KEYS:
            assert isinstance(batch[key], np.ndarray) and batch[key].dtype == np.float64
            assert batch[key][k] == approx(single[key])


def test_parse_answer_groups() -> None:
    groups = parse_answer(R)
    assert [label for label, _ in groups] == ["fractures"]
    boxes = groups[0][1]
    assert boxes.dtype == np.float64 and boxes.shape == (2, 4)
    np.testing.assert_array_equal(boxes, [[156, 516, 231, 607], [240, 529, 296, 581]])


def test_total_is_weighted_sum() -> None:
    config = RewardConfig(label_accuracy=2.0, giou=0.5, tag_count=0.0, overlap_penalty=3.0)
    out = score("Fractures <box>[[0,0,10,10],[0,0,10,8]]</box>", "Fractures <box>[[0,0,10,10]]</box>", config)
    assert out["total"] == approx(2.0 * 1.0 + 0.5 * 0.5 + 0.0 * 1.0 + 3.0 * -0.6)


def test_batches_without_a_single_tag() -> None:
    # The batched scanner finds no tag anywhere (a regression: an empty tag list once raised IndexError).
    out = score_batch(["No findings.", "", "nothing here"], ["No findings.", "", "Nodule <box>[[1, 2, 3, 4]]</box>"])
    assert out["total"].tolist() == [2.5, 2.5, 0.0]
    assert out["tag_count"].tolist() == [1.0, 1.0, 0.0]
