"""Parsing grounding answers: `Label <box>[[x1, y1, x2, y2], ...]</box> ...`.

Model output is hostile, so every step is linear in the input and nothing raises:
- the answer region and the blocks come from `str.find` scans (the contract's lazy regex
  `<box>(.*?)</box>` rescans to the end for every unclosed `<box>`; the scan stops at the first one);
- block contents go through a possessive (backtracking-free) regex for the canonical shape, and only
  the rest through `json.loads`, whose failures are caught.

`parse_batch` is the hot path: a Python loop that only slices strings, then one vectorised pass that
converts and validates the numbers of all canonical blocks of the batch at once.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

BOX_OPEN, BOX_CLOSE = "<box>", "</box>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

# JSON whitespace and numbers exactly as json.loads accepts them (ASCII digits only), with possessive
# quantifiers (Python >= 3.11) so a failed match never backtracks: matching stays linear.
_WS = r"[ \t\n\r]*+"
_NUM = r"-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+"
_BOX = rf"\[{_WS}{_NUM}{_WS},{_WS}{_NUM}{_WS},{_WS}{_NUM}{_WS},{_WS}{_NUM}{_WS}\]"
# One box or a non-empty list of boxes, numbers only: what well-behaved models write.
_CANONICAL = re.compile(rf"{_WS}(?:{_BOX}|\[{_WS}{_BOX}(?:{_WS},{_WS}{_BOX})*+{_WS}\]){_WS}")
# After a canonical match the numbers are the only tokens left once brackets and commas are blanked.
_BLANK = str.maketrans("[],", "   ")

Box = tuple[float, float, float, float]


def answer_region(text: str) -> str:
    """Content of the last complete `<answer>...</answer>` block, else the whole text."""
    if ANSWER_OPEN not in text:
        return text
    start = end = -1
    pos = 0
    while True:
        i = text.find(ANSWER_OPEN, pos)
        if i < 0:
            break
        j = text.find(ANSWER_CLOSE, i + len(ANSWER_OPEN))
        if j < 0:
            break  # no close after i means none after any later open either
        start, end, pos = i + len(ANSWER_OPEN), j, j + len(ANSWER_CLOSE)
    return text if start < 0 else text[start:end]


def scan_blocks(region: str) -> tuple[list[str], list[str]]:
    """Raw (label, content) of each `<box>...</box>` block, left to right, like the lazy regex."""
    labels: list[str] = []
    contents: list[str] = []
    find = region.find
    pos = 0
    while True:
        i = find(BOX_OPEN, pos)
        if i < 0:
            break
        j = find(BOX_CLOSE, i + 5)
        if j < 0:
            break  # an unclosed <box> ends the scan: no later <box> can find a </box> either
        labels.append(region[pos:i])
        contents.append(region[i + 5 : j])
        pos = j + 6
    return labels, contents


def normalize_label(raw: str) -> str:
    """Lower-case, collapse whitespace runs to one space, strip spaces and `.,;:` from both ends."""
    # split()/join also drops whitespace at the ends, which the strip below would remove anyway.
    return " ".join(raw.lower().split()).strip(" .,;:")


def is_canonical(content: str) -> bool:
    return _CANONICAL.fullmatch(content) is not None


def _number(value: object) -> float | None:
    # type() rather than isinstance(): json gives exact int/float, and bool (an int subclass) is out.
    if type(value) is float:
        return value if math.isfinite(value) else None
    if type(value) is int:
        try:
            as_float = float(value)
        except OverflowError:  # beyond float64: not a usable coordinate
            return None
        return as_float if math.isfinite(as_float) else None
    return None


def valid_box(candidate: object) -> Box | None:
    """The box as 4 floats when it is 4 finite numbers with x1 < x2 and y1 < y2, else None."""
    if type(candidate) is not list or len(candidate) != 4:
        return None
    x1, y1, x2, y2 = (_number(v) for v in candidate)
    if x1 is None or y1 is None or x2 is None or y2 is None:
        return None
    return (x1, y1, x2, y2) if x1 < x2 and y1 < y2 else None


def parse_content(content: str) -> tuple[list[Box], bool]:
    """Valid boxes of one block's content and whether the block is flawed. Never raises.

    The content must be JSON: one box (a list that is not a list of lists) or a non-empty list of
    lists, each a box candidate. Invalid candidates are dropped and flag the block.
    """
    if not content.lstrip(" \t\n\r").startswith("["):
        return [], True  # not a JSON list; skip json.loads and its costly exception
    try:
        value = json.loads(content)
    except Exception:  # JSONDecodeError, RecursionError on deep nesting, int digit limits: all flawed
        return [], True
    if type(value) is not list:
        return [], True
    candidates = value if value and all(type(v) is list for v in value) else [value]
    boxes = [box for box in map(valid_box, candidates) if box is not None]
    return boxes, len(boxes) < len(candidates)


@dataclass(frozen=True)
class ParsedBatch:
    """Parse of S texts. Boxes of all samples are concatenated, in sample then block order."""

    labels: list[list[str]]  # normalised label of every block, per sample
    n_blocks: np.ndarray  # (S,) int64
    n_open: np.ndarray  # (S,) int64, `<box>` count in the region
    n_close: np.ndarray  # (S,) int64, `</box>` count in the region
    blocks_ok: np.ndarray  # (S,) bool: >= 1 block, every block has a valid box and is not flawed
    boxes: np.ndarray  # (B, 4) float64, valid boxes only
    box_block: np.ndarray  # (B,) int64, global block index of every box
    box_count: np.ndarray  # (S,) int64, valid boxes per sample

    @property
    def box_start(self) -> np.ndarray:
        """(S,) offset of each sample's first box in `boxes`."""
        return np.concatenate(([0], np.cumsum(self.box_count)[:-1])).astype(np.int64)


class _Collector:
    """Per-block results of the Python scan, before the vectorised pass."""

    def __init__(self) -> None:
        self.canonical: list[str] = []  # contents matching _CANONICAL
        self.canonical_block: list[int] = []
        self.other_boxes: list[Box] = []  # valid boxes of non-canonical contents
        self.other_box_block: list[int] = []
        self.bad_blocks: list[int] = []  # non-canonical blocks without a valid box, or flawed

    def add(self, block: int, content: str) -> None:
        if _CANONICAL.fullmatch(content) is not None:
            self.canonical.append(content)
            self.canonical_block.append(block)
            return
        boxes, flawed = parse_content(content)
        if flawed or not boxes:
            self.bad_blocks.append(block)
        self.other_boxes.extend(boxes)
        self.other_box_block.extend([block] * len(boxes))


def parse_batch(texts: list[str]) -> ParsedBatch:
    """Parse every text (answer region, blocks, labels, boxes, tag counts) in one pass."""
    n = len(texts)
    labels: list[list[str]] = []
    n_blocks = np.zeros(n, dtype=np.int64)
    n_open = np.zeros(n, dtype=np.int64)
    n_close = np.zeros(n, dtype=np.int64)
    collect = _Collector()
    block = 0
    for s, text in enumerate(texts):
        region = answer_region(text) if ANSWER_OPEN in text else text
        raw_labels, contents = scan_blocks(region)
        labels.append([normalize_label(raw) for raw in raw_labels])
        for content in contents:
            collect.add(block, content)
            block += 1
        n_blocks[s] = len(contents)
        n_open[s] = region.count(BOX_OPEN)
        n_close[s] = region.count(BOX_CLOSE)
    return _assemble(labels, n_blocks, n_open, n_close, collect, block)


def _canonical_numbers(contents: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (B, 4), boxes per content) of canonical contents, converted in one numpy call."""
    if not contents:
        return np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    tokens = " ".join(contents).translate(_BLANK).split()
    with np.errstate(over="ignore"):
        numbers = np.array(tokens, dtype=np.float64)  # JSON overflow (1e999) becomes inf: invalid below
    # A canonical content with b boxes has 4b numbers and 4b - 1 commas.
    per_content = (np.fromiter(map(_count_commas, contents), np.int64, len(contents)) + 1) // 4
    return numbers.reshape(-1, 4), per_content


def _count_commas(content: str) -> int:
    return content.count(",")


def _assemble(
    labels: list[list[str]],
    n_blocks: np.ndarray,
    n_open: np.ndarray,
    n_close: np.ndarray,
    collect: _Collector,
    total_blocks: int,
) -> ParsedBatch:
    boxes, per_content = _canonical_numbers(collect.canonical)
    box_block = np.repeat(np.asarray(collect.canonical_block, dtype=np.int64), per_content)
    finite = np.isfinite(boxes).all(axis=1)
    valid = finite & (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
    block_bad = np.zeros(total_blocks, dtype=bool)
    block_bad[box_block[~valid]] = True  # a canonical block with an invalid box is flawed
    block_bad[np.asarray(collect.bad_blocks, dtype=np.int64)] = True
    boxes, box_block = boxes[valid], box_block[valid]
    if collect.other_boxes:
        boxes = np.concatenate([boxes, np.asarray(collect.other_boxes, dtype=np.float64)])
        box_block = np.concatenate([box_block, np.asarray(collect.other_box_block, dtype=np.int64)])
        order = np.argsort(box_block, kind="stable")  # back to block order
        boxes, box_block = boxes[order], box_block[order]
    block_sample = np.repeat(np.arange(len(labels), dtype=np.int64), n_blocks)
    bad_per_sample = np.bincount(block_sample[block_bad], minlength=len(labels))
    box_count = np.bincount(block_sample[box_block], minlength=len(labels)).astype(np.int64)
    return ParsedBatch(
        labels=labels,
        n_blocks=n_blocks,
        n_open=n_open,
        n_close=n_close,
        blocks_ok=(n_blocks > 0) & (bad_per_sample == 0),
        boxes=boxes.reshape(-1, 4),
        box_block=box_block,
        box_count=box_count,
    )


def parse_answer(text: str) -> list[tuple[str, np.ndarray]]:
    """(normalised label, valid boxes (K, 4) float64) per block of the answer region; never raises.

    Blocks whose content holds no valid box are kept with K = 0: their label still counts.
    """
    if not isinstance(text, str):
        return []
    parsed = parse_batch([text])
    bounds = np.searchsorted(parsed.box_block, np.arange(int(parsed.n_blocks[0]) + 1))
    return [
        (label, parsed.boxes[bounds[b] : bounds[b + 1]].copy()) for b, label in enumerate(parsed.labels[0])
    ]
