"""Boxes out of many block contents at once.

Canonical contents (`rewards.parse.CANONICAL`: numbers only) have their numbers converted by one
`np.fromstring` call per batch and are validated as arrays; only the others go through `json.loads`
one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat
from operator import is_not

import numpy as np

from rewards.parse import CANONICAL, parse_content

_BLANK = str.maketrans("[],", "   ")  # in a canonical content, numbers are what is left
_INT64_SAFE = 1e18  # int64 parsing saturates beyond 9.2e18: larger magnitudes are read as floats
# Numbers no canonical content can yield, put after every content to tell where each one ends.
_INT_SENTINEL = np.iinfo(np.int64).min  # a content holding it is >= 1e18 and goes the float way
_SENTINEL_TEXT = {True: f" {_INT_SENTINEL} ", False: " nan "}


@dataclass(frozen=True)
class ContentBoxes:
    """Valid boxes of a list of contents, in content order, and which contents are not clean."""

    boxes: np.ndarray  # (B, 4) float64
    content: np.ndarray  # (B,) int64: index of the content each box came from
    bad: np.ndarray  # (C,) bool: the block has no valid box or is flawed


def _mask(values: object, size: int) -> np.ndarray:
    return np.fromiter(values, bool, size)  # type: ignore[call-overload]


def _numbers(contents: list[str], integral: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """(every number, is-sentinel mask); None when the text does not parse as such numbers."""
    text = _SENTINEL_TEXT[integral].join(contents).translate(_BLANK) + _SENTINEL_TEXT[integral]
    try:
        numbers = np.fromstring(text, dtype=np.int64 if integral else np.float64, sep=" ")
    except ValueError:  # newer numpy raises on text it cannot read (older ones stop early)
        return None
    if not integral:
        return numbers, np.isnan(numbers)  # 1e999 -> inf: an invalid box
    sentinel = numbers == _INT_SENTINEL
    values = numbers.astype(np.float64)
    return None if (np.abs(values[~sentinel]) >= _INT64_SAFE).any() else (values, sentinel)


def _convert(contents: list[str], integral: bool) -> tuple[np.ndarray, np.ndarray] | None:
    if not contents:
        return np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    parsed = _numbers(contents, integral)
    if parsed is None:
        return None
    numbers, sentinel = parsed
    ends = np.flatnonzero(sentinel)
    per_content = np.diff(ends, prepend=-1) - 1
    if len(ends) != len(contents) or (per_content % 4).any():
        return None
    return numbers[~sentinel].reshape(-1, 4), per_content // 4


def canonical_numbers(contents: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(boxes (B, 4), boxes per content) of canonical contents, in content order; None if unsure.

    Integers parse as int64 (3x faster than floats), contents with a fraction or an exponent as
    float64, each kind in one call; an integer too large for int64 sends its kind to floats.
    """
    joined = "".join(contents)
    if "." not in joined and "e" not in joined and "E" not in joined:
        return _convert(contents, True) or _convert(contents, False)
    # Contents holding '.', 'e' or 'E', found on the bytes of the joined text (canonical text is ASCII).
    ends = np.cumsum(np.fromiter(map(len, contents), np.int64, len(contents)))
    raw = np.frombuffer(joined.encode("ascii", errors="replace"), dtype=np.uint8)
    marks = np.flatnonzero((raw == ord(".")) | (raw == ord("e")) | (raw == ord("E")))
    decimal = np.zeros(len(contents), dtype=bool)
    decimal[np.searchsorted(ends, marks, side="right")] = True
    kinds = [(np.flatnonzero(~decimal), True), (np.flatnonzero(decimal), False)]
    parts = []
    for index, integral in kinds:
        subset = [contents[k] for k in index.tolist()]
        part = (_convert(subset, True) if integral else None) or _convert(subset, False)
        if part is None:
            return None
        parts.append(part)
    per_content = np.zeros(len(contents), dtype=np.int64)
    per_content[kinds[0][0]], per_content[kinds[1][0]] = parts[0][1], parts[1][1]
    owner = np.concatenate([np.repeat(index, part[1]) for (index, _), part in zip(kinds, parts, strict=True)])
    boxes = np.concatenate([parts[0][0], parts[1][0]])[np.argsort(owner, kind="stable")]
    return boxes, per_content


class _Collector:
    """Boxes found so far, in parts (one per conversion), with the content each box came from."""

    def __init__(self, contents: list[str]) -> None:
        self.contents = contents
        self.parts: list[np.ndarray] = []
        self.owners: list[np.ndarray] = []
        self.bad = np.zeros(len(contents), dtype=bool)  # set for slow-path contents found unclean

    def canonical(self, index: np.ndarray) -> None:
        """Contents known to be canonical, converted together."""
        everything = len(index) == len(self.contents)  # index is then arange: no copy needed
        parsed = canonical_numbers(self.contents if everything else [self.contents[k] for k in index.tolist()])
        if parsed is None:
            for k in index.tolist():
                self.slow(k)
            return
        boxes, per_content = parsed
        self.parts.append(boxes)
        self.owners.append(np.repeat(index, per_content))

    def slow(self, k: int) -> None:
        boxes, flawed = parse_content(self.contents[k])
        self.bad[k] = flawed or not len(boxes)
        if len(boxes):
            self.parts.append(boxes)
            self.owners.append(np.full(len(boxes), k, dtype=np.int64))

    def result(self) -> ContentBoxes:
        boxes = np.concatenate([*self.parts, np.zeros((0, 4))])
        owner = np.concatenate([*self.owners, np.zeros(0, dtype=np.int64)])
        valid = np.isfinite(boxes).all(axis=1) & (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
        self.bad[owner[~valid]] = True  # a block with an invalid box is flawed
        boxes, owner = boxes[valid], owner[valid]
        if len(self.parts) > 1:  # parts were grouped by kind: restore content order
            order = np.argsort(owner, kind="stable")
            boxes, owner = boxes[order], owner[order]
        return ContentBoxes(boxes, owner, self.bad)


def content_boxes(contents: list[str], all_canonical: bool = False) -> ContentBoxes:
    """Valid boxes of every content, and its flag. `all_canonical`: the caller matched them all."""
    collect = _Collector(contents)
    if all_canonical:
        collect.canonical(np.arange(len(contents)))
        return collect.result()
    canonical = _mask(map(is_not, map(CANONICAL.fullmatch, contents), repeat(None)), len(contents))
    collect.canonical(np.flatnonzero(canonical))
    # What does not start like a JSON list has no box and is flawed; only the rest needs json.loads.
    stripped = map(str.lstrip, contents, repeat(" \t\n\r"))
    listy = _mask(map(str.startswith, stripped, repeat("[")), len(contents))
    collect.bad[~canonical & ~listy] = True
    for k in np.flatnonzero(~canonical & listy).tolist():
        collect.slow(k)
    return collect.result()
