"""rewards.lexer: the numpy fast path for box contents accepts exactly the fast form and reads every
number as json.loads does; rewards.batch: the batched numpy scan parses every answer (answer regions,
stray and unbalanced tags, broken contents, non-ASCII) as the per-text general path does."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards import parse_answer
from rewards.batch import ParsedBatch, _insert_rows, _parse_general, parse_batch
from rewards.lexer import lex_boxes
from rewards.parse import FAST_SOURCE, answer_region

FAST = re.compile(FAST_SOURCE)


def lex(contents: list[str]):  # noqa: ANN201
    """The lexer on the contents laid out as blocks: `x <box>content</box>` for each."""
    pieces = [c.encode("utf-8", "surrogatepass") for c in contents]
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    starts = np.cumsum(lengths + 13) - lengths - 6  # 13 bytes of `x <box>` and `</box>` around each
    data = b"".join(b"x <box>" + p + b"</box>" for p in pieces)
    return lex_boxes(np.frombuffer(data, dtype=np.uint8), starts, starts + lengths)


def expected_boxes(content: str) -> list[list[float]]:
    value = json.loads(content)
    boxes = value if value and all(isinstance(v, list) for v in value) else [value]
    return [[float(v) for v in box] for box in boxes]


def check(contents: list[str]) -> None:
    got = lex(contents)
    rows = np.split(got.values, np.cumsum(got.per_content)[:-1]) if len(contents) else []
    for k, content in enumerate(contents):
        digits_ok = all(len(n.replace("-", "").replace(".", "")) <= 15 for n in re.findall(r"[-.0-9]+", content))
        assert bool(got.fast[k]) == (content == "" or (FAST.fullmatch(content) is not None and digits_ok)), content
        if got.fast[k] and content:
            want = expected_boxes(content)
            assert rows[k].tolist() == want, content
            assert np.signbit(rows[k]).tolist() == np.signbit(np.array(want)).tolist(), content  # -0.0 vs 0


@pytest.mark.parametrize(
    "content",
    [
        "[1, 2, 3, 4]",
        "[1,2,3,4]",
        "[[1, 2, 3, 4]]",
        "[[1, 2, 3, 4], [5, 6, 7, 8]]",
        "[[1,2,3,4],[5,6,7,8],[9,10,11,12]]",
        "[-1, -0, -0.0, 0.5]",
        "[0.25, 10.125, 999999999999999, 123456789.012345]",
        "[1234567890123456, 1, 2, 3]",  # 16 digits: left to json
        "[-999999999999999, -9.99999999999999, -99999999999999.9, -0.00000000000001]",  # 15 digits, 16-17 bytes
        "[-1234567890123456, 1, 2, 3]",
        "[-123456789012345.6, 1, 2, 3]",
        "[12345678.9, -12345678.9, 123456789, -1234567.8]",  # 9-10 bytes: two 8-byte reads
        "[01, 2, 3, 4]",
        "[1., 2, 3, 4]",
        "[.5, 2, 3, 4]",
        "[1.2.3, 2, 3, 4]",
        "[1-2, 2, 3, 4]",
        "[--1, 2, 3, 4]",
        "[-, 2, 3, 4]",
        "[1e5, 2, 3, 4]",
        "[1,  2, 3, 4]",
        "[1 ,2, 3, 4]",
        " [1, 2, 3, 4]",
        "[1, 2, 3, 4] ",
        "[1, 2, 3]",
        "[1, 2, 3, 4, 5]",
        "[[1, 2, 3, 4]",
        "[[1, 2, 3, 4]], [5, 6, 7, 8]",
        "[[1, 2, 3, 4] [5, 6, 7, 8]]",
        "[[1, 2, 3, 4],[5, 6, 7]]",
        "[[1, 2], [3, 4, 5, 6], [7, 8]]",
        "[[1, 2, 3, 4, 5, 6, 7, 8]]",
        "[[1, 2, 3], [4, 5, 6, 7, 8]]",
        "[1, 2, 3, 4], [5, 6, 7, 8]",
        "[[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]",
        "[[1, 2, 3, 4],[5, 6, 7, 8] ,[9, 10, 11, 12]]",
        "[[[1, 2, 3, 4]]]",
        "[]",
        "[[]]",
        "",
        "oops",
        "[1, 2, 3, 4]x",
        "[1, 2, 3, 4\u00e9]",
    ],
)
def test_lexer_accepts_exactly_the_fast_form(content: str) -> None:
    check([content])
    check(["[9, 8, 7, 6]", content, "[[1, 2, 3, 4]]"])  # neighbours are unaffected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet="0123456789-., []", max_size=40), max_size=6))
def test_lexer_on_random_contents(contents: list[str]) -> None:
    check(contents)


number = st.integers(-(10**6), 10**6).map(str) | st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: str(round(v, 3)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.lists(number, min_size=4, max_size=4), min_size=1, max_size=4), max_size=5))
def test_lexer_on_well_formed_contents(boxes: list) -> None:
    check([json.dumps(b, separators=(",", ":") if len(b) % 2 else None) for b in boxes])


def test_lexer_in_chunks_matches_one_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    contents = [json.dumps([[k, k + 1, k + 2.5, k + 3]] * (k % 3 + 1)) for k in range(3000)] + ["bad", ""]
    whole = lex(contents)
    monkeypatch.setattr("rewards.lexer._CHUNK_BYTES", 1 << 10)
    chunked = lex(contents)
    np.testing.assert_array_equal(whole.values, chunked.values)
    np.testing.assert_array_equal(whole.per_content, chunked.per_content)
    np.testing.assert_array_equal(whole.fast, chunked.fast)


def per_sample(parsed: ParsedBatch, vocab: dict[str, int]) -> list[tuple]:
    """Each sample's parse, independent of how the batch orders its blocks."""
    names = list(vocab)
    out = []
    for k in range(len(parsed.n_blocks)):
        mine = np.flatnonzero(parsed.block_sample == k)
        box = slice(parsed.box_start[k], parsed.box_start[k] + parsed.box_count[k])
        rank = np.searchsorted(mine, parsed.box_block[box])
        counts = [int(parsed.n_blocks[k]), int(parsed.n_open[k]), int(parsed.n_close[k]), bool(parsed.blocks_ok[k])]
        out.append((counts, [names[b] for b in parsed.block_label[mine]], parsed.boxes[box].tolist(), rank.tolist()))
    return out


def assert_same_parse(texts: list[str]) -> None:
    fast_vocab: dict[str, int] = {}
    fast = parse_batch(texts, fast_vocab)
    slow_vocab: dict[str, int] = {}
    slow = _parse_general([answer_region(t) for t in texts], slow_vocab)
    assert per_sample(fast, fast_vocab) == per_sample(slow, slow_vocab)


@pytest.mark.parametrize(
    "texts",
    [
        ["Nodule <box>[1, 2, 3, 4]</box>", "no findings", "Mass. <box>[[5,6,7,8],[1,1,0,2]]</box> x"],
        [
            "A <box></box>",
            "</box> A <box>[1,2,3,4]</box>",
            "A <box>[1,2,3,4]</box> <b",
            "Σ  lesion: <box>[1,2,3,4]</box>",
        ],
        ["a\x00b <box>[1,2,3,4]</box>", "/box> label <box>[1,2,3,4]</box>", "<box>[1,2,3,4]</box><box>[0,0,1,1]</box>"],
        ["\ud800 <box>[1,2,3,4]</box>", "F <box>[1,2,3,4]</box> tail"],
        [
            "a <box><box>[1,2,3,4]</box> b <box>[0,0,1,1]</box></box> c <box>[2,2,3,3]",
            "x </box></box> y <box>[1e2, 2, 300, 4]</box> z <box>[[1,2,3,4],[true,1,2,3]]</box>",
            "<think>t <box>[9,9,10,10]</box></think><answer>F <box>[1,2,3,4]</box></answer> <answer>G",
            "<answer>a</answer><answer><answer>B <box>[ 1,2,3,4 ]</box></answer></answer>",
            "<answer>unclosed <box>[1,2,3,4]</box>",
            "</answer><answer></answer>x<box>[1,2,3,4]</box>",
            "Σ <box>[1,2,3,4]</box> Δ <box>[5, 6, 7.5, 8]</box> É <box>[1, 2, \u00e9]</box>",
        ],
        ["", "<", "<box", "</box", "<box>", "</box>", "<answer>", "</answer", "\x00", "<box>\x00</box>"],
    ],
)
def test_batched_scan_agrees_with_the_general_path(texts: list[str]) -> None:
    assert_same_parse(texts)


_SOUP = st.sampled_from(
    ["<box>", "</box>", "<answer>", "</answer>", "<think>", "<", ">", "/", "box", "answer", " ", "\n", "A", "Σ",
     "[1, 2, 3, 4]", "[[0,0,5,5],[1,1,2,2]]", "[", "]", ",", "1", "-0.5", "1e3", "null", ".", ":", "\x00"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_SOUP, max_size=14).map("".join), min_size=1, max_size=6))
def test_batched_scan_agrees_with_the_general_path_on_token_soup(texts: list[str]) -> None:
    assert_same_parse(texts)


def test_parse_answer_on_the_fast_path() -> None:
    parsed = parse_answer("  NODULE: <box>[[1, 2, 3, 4], [5, 5, 1, 9]]</box>; mass <box>[-0.5, 0, 2.25, 3]</box>")
    assert [label for label, _ in parsed] == ["nodule", "mass"]
    assert parsed[0][1].tolist() == [[1, 2, 3, 4]] and parsed[1][1].tolist() == [[-0.5, 0, 2.25, 3]]


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 20), st.lists(st.integers(0, 20), max_size=10))
def test_insert_rows_is_np_insert(n: int, at: list[int]) -> None:
    boxes = np.arange(4 * n, dtype=np.float64).reshape(n, 4)
    where = np.sort(np.minimum(np.array(at, dtype=np.int64), n))
    new = -1.0 - np.arange(4 * len(at), dtype=np.float64).reshape(-1, 4)
    np.testing.assert_array_equal(_insert_rows(boxes, where, new), np.insert(boxes, where, new, axis=0))
