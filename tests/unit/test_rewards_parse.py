"""rewards parsing: answer region, blocks, labels, box validity, flawed blocks, tag counts."""

from __future__ import annotations

import numpy as np
import pytest

from rewards import parse_answer, score
from rewards.parse import answer_region, normalize_label, parse_content, scan_blocks
from rl.tools.bench_reference import parse_boxes


def labels(text: str) -> list[str]:
    return [label for label, _ in parse_answer(text)]


def boxes(text: str) -> list[list[list[float]]]:
    return [b.tolist() for _, b in parse_answer(text)]


@pytest.mark.parametrize(
    ("text", "region"),
    [
        ("no answer tags", "no answer tags"),
        ("<think>x</think><answer>A</answer>", "A"),
        ("<answer>A</answer> mid <answer>B</answer> tail", "B"),
        ("<answer>A</answer><answer>unclosed", "A"),
        ("<answer>unclosed", "<answer>unclosed"),
        ("<answer><answer>A</answer></answer>", "<answer>A"),  # lazy: the first open pairs with the first close
        ("</answer><answer>A</answer>", "A"),
        ("<answer></answer>", ""),
    ],
)
def test_answer_region(text: str, region: str) -> None:
    assert answer_region(text) == region


def test_scan_blocks_is_the_lazy_regex() -> None:
    assert scan_blocks("a <box>1</box> b <box>2</box> c") == (["a ", " b "], ["1", "2"])
    assert scan_blocks("<box><box>x</box>") == ([""], ["<box>x"])
    assert scan_blocks("a </box> b <box>x</box>") == (["a </box> b "], ["x"])
    assert scan_blocks("a <box>x") == ([], [])
    assert scan_blocks("a <box>x</box> b <box>y") == (["a "], ["x"])
    assert scan_blocks("<box>\nmulti\nline\n</box>") == ([""], ["\nmulti\nline\n"])


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        ("Fractures ", "fractures"),
        ("  Pleural \n\t EFFUSION:  ", "pleural effusion"),
        ("fractures.", "fractures"),
        ("., ;:Mass;,. ", "mass"),
        ("a . b", "a . b"),
        ("", ""),
        (" .,;: ", ""),
        ("Left\u00a0lung", "left lung"),  # unicode whitespace collapses too
    ],
)
def test_normalize_label(raw: str, label: str) -> None:
    assert normalize_label(raw) == label


def test_single_box_and_list_forms() -> None:
    assert boxes("A <box>[1, 2, 3, 4]</box>") == [[[1, 2, 3, 4]]]
    assert boxes("A <box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>") == [[[1, 2, 3, 4], [5, 6, 7, 8]]]
    assert boxes("A <box> [ [1,2,3,4] ] \n</box>") == [[[1, 2, 3, 4]]]
    assert boxes("A <box>[1.5, 2e0, 3E+1, 4.25e+1]</box>") == [[[1.5, 2, 30, 42.5]]]
    assert boxes("A <box>[-4, -3, -2, -1]</box>") == [[[-4, -3, -2, -1]]]


@pytest.mark.parametrize(
    "content",
    [
        "[NaN, 2, 3, 4]",
        "[1, 2, Infinity, 4]",
        "[-Infinity, 2, 3, 4]",
        "[true, 2, 3, 4]",
        "[1, 2, 3, false]",
        "[null, 2, 3, 4]",
        '["1", 2, 3, 4]',
        "[3, 2, 1, 4]",  # x1 > x2
        "[1, 4, 3, 4]",  # y1 == y2
        "[1, 2, 3]",
        "[1, 2, 3, 4, 5]",
        "[]",
        "[[]]",
        "[[[1, 2, 3, 4]]]",
        "[[1, 2, 3, 4], 5]",
        "[1e999, 2, 2e999, 4]",
        "[1" + "0" * 400 + ", 2, 3" + "0" * 400 + ", 4]",
        "[01, 2, 3, 4]",
        "[+1, 2, 3, 4]",
        "[1., 2, 3, 4]",
        "[.5, 2, 3, 4]",
        "[1_0, 2, 30, 4]",
        "[0x1, 2, 3, 4]",
        "[1,\u00a02, 3, 4]",
        "[1,\x0c2, 3, 4]",
        "[1, 2, 3, 4],",
        "{}",
        "1",
        '"[1, 2, 3, 4]"',
        "",
        "   ",
        "[" * 3000,
        "[" * 3000 + "]" * 3000,
    ],
)
def test_invalid_content_has_no_valid_box_and_is_flawed(content: str) -> None:
    valid, flawed = parse_content(content)
    assert valid.shape == (0, 4) and flawed
    assert boxes(f"A <box>{content}</box>") == [[]]
    # The block still counts (its label) but fails the "every block is clean" check of tag_count.
    out = score(f"A <box>{content}</box>", "A <box>[0, 0, 10, 10]</box>")
    assert out["label_accuracy"] == 1.0 and out["tag_count"] == 0.75 and out["giou"] == 0.0


def test_invalid_box_among_valid_ones_is_dropped_and_flags_the_block() -> None:
    for content, expected in (
        ("[[1, 2, 3, 4], [5, 5, 4, 4], [1, 1, 2, 2]]", [[1, 2, 3, 4], [1, 1, 2, 2]]),
        ("[[1, 2, 3, 4], [1, 2, true, 4]]", [[1, 2, 3, 4]]),
        ("[[1, 2, 3, 4], [NaN, 2, 3, 4]]", [[1, 2, 3, 4]]),
        ("[[1, 2, 3, 4], [1, 2, 3e999, 4]]", [[1, 2, 3, 4]]),
        ("[[1, 2, 3, 4], [1, 2, 3" + "0" * 400 + ", 4]]", [[1, 2, 3, 4]]),
    ):
        boxes_found, flawed = parse_content(content)
        assert boxes_found.tolist() == expected and flawed
    out = score("A <box>[[0, 0, 10, 10], [5, 5, 4, 4]]</box>", "A <box>[0, 0, 10, 10]</box>")
    assert out["giou"] == 1.0 and out["tag_count"] == 0.75


def test_coordinates_are_float64() -> None:
    ((_, got),) = parse_answer("A <box>[1, 2, 99999999999999999999, 4]</box>")
    assert got.dtype == np.float64 and got[0, 2] == 1e20
    ((_, got),) = parse_answer("A <box>[0.1, 0.2, 0.7, 1.1]</box>")
    assert got.tolist() == [[0.1, 0.2, 0.7, 1.1]]


def test_blocks_without_boxes_keep_their_labels() -> None:
    assert labels("A <box>junk</box> B <box>[1, 2, 3, 4]</box> <box>[]</box>") == ["a", "b", ""]
    assert boxes("A <box>junk</box> B <box>[1, 2, 3, 4]</box>") == [[], [[1, 2, 3, 4]]]


def test_labels_are_text_since_previous_block() -> None:
    assert labels("The image shows Fractures <box>[1,2,3,4]</box> and a Nodule <box>[1,2,3,4]</box>.") == [
        "the image shows fractures",
        "and a nodule",
    ]
    assert labels("x </box> Nodule <box>[1,2,3,4]</box>") == ["x </box> nodule"]


def test_parse_answer_uses_the_answer_region() -> None:
    text = "<think>Nodule <box>[1,2,3,4]</box>?</think><answer>Mass <box>[5,6,7,8]</box></answer>"
    assert labels(text) == ["mass"]


@pytest.mark.parametrize("text", ["", "no boxes", "<box>", "</box>", "<box><box>", "a <box>[1,2,3,4]"])
def test_no_blocks(text: str) -> None:
    assert parse_answer(text) == []


def test_parse_answer_never_raises_on_non_text() -> None:
    assert parse_answer(None) == []  # type: ignore[arg-type]
    assert parse_answer(b"<box>[1,2,3,4]</box>") == []  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("A <box>[0,0,10,10]</box> B <box>[0,0,5,5]</box>", 1.0),
        ("A <box>[0,0,10,10]</box> B <box>[0,0,5,5]", 0.25 * 1 + 0.25 * 0 + 0 + 0.25),  # unclosed 2nd
        ("A <box>[0,0,10,10]</box> B <box>[0,0,5,5]</box></box>", 0.25 + 0 + 0 + 0.25),  # stray close
        ("</box>A <box>[0,0,10,10]</box> B <box>[0,0,5,5]", 0.25 + 0.25 + 0 + 0.25),  # counts ok, order not
        ("A <box><box>[0,0,10,10]</box> B </box>", 0.25 + 0.25 + 0 + 0),  # counts ok, nested open
        ("A <box>[0,0,10,10]</box>", 0 + 0 + 0.25 + 0.25),
        ("A <box>[0,0,10,10]</box> B <box>oops</box>", 0.25 + 0.25 + 0.25 + 0),
        ("nothing", 0.0),
    ],
)
def test_tag_count(completion: str, expected: float) -> None:
    reference = "A <box>[0,0,10,10]</box> B <box>[0,0,5,5]</box>"
    assert score(completion, reference)["tag_count"] == pytest.approx(expected)


def test_tag_count_without_reference_blocks() -> None:
    assert score("no findings", "No findings.")["tag_count"] == 1.0
    assert score("stray </box>", "No findings.")["tag_count"] == 0.0
    assert score("stray <box>", "No findings.")["tag_count"] == 0.0
    # Tags outside the answer region do not count.
    assert score("<think><box></think><answer>none</answer>", "No findings.")["tag_count"] == 1.0


@pytest.mark.parametrize(
    ("contents", "boxes", "per_content"),
    [
        ([], [], []),
        (["[1, 2, 3, 4]", "[[5,6,7,8],[9,10,11,12]]"], [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], [1, 2]),
        (["[1.5, 2, 3, 4]", "[[1e1, 2, 30, 4]]"], [[1.5, 2, 3, 4], [10, 2, 30, 4]], [1, 1]),  # all decimal
        (["[0,0,1,1]", "[[-0.5, 2, 3, 4]]", "[-0,1,2,3]"], [[0, 0, 1, 1], [-0.5, 2, 3, 4], [0, 1, 2, 3]], [1, 1, 1]),
        (["[-9223372036854775808, 0, 1, 1]", "[1, 2, 3, 4]"], [[-9223372036854775808, 0, 1, 1], [1, 2, 3, 4]], [1, 1]),
        (["[1, 2, 99999999999999999999, 4]"], [[1, 2, 1e20, 4]], [1]),
        (["[1, 2, 1e999, 4]"], [[1, 2, float("inf"), 4]], [1]),
    ],
)
def test_canonical_numbers_in_one_conversion(contents: list[str], boxes: list, per_content: list) -> None:
    from rewards.contents import canonical_numbers

    parsed = canonical_numbers(contents)
    assert parsed is not None  # canonical text never needs the slow path
    assert parsed[0].tolist() == [[float(v) for v in b] for b in boxes] and parsed[1].tolist() == per_content


@pytest.mark.parametrize(
    "content",
    [
        "[[1, 2, 3, 4]] Mass <box>[[5, 6, 7, 8]]",  # an unclosed block swallowed the next one
        "[[1, 2, 3, 4], [5, 6, 7, 8]",
        "[[1, 2, 3, 4]]]",
        '[[1, 2, 3, 4], ["<"]]',  # '<' and brackets inside a string: JSON after all
        '[[1, 2, 3, 4], ["]"]]',
        '[[1, 2, 3, 4], "[[["]',
        "[[1, 2, 3, 4], [1, 2, 3, 4]]",
    ],
)
def test_contents_judged_broken_without_json_agree_with_json(content: str) -> None:
    """Text without a string that holds `<` or unbalanced brackets is not JSON: no json.loads needed."""
    found, flawed = parse_content(content)
    want, want_flawed = parse_boxes(content)
    assert found.tolist() == [list(box) for box in want] and flawed == want_flawed
