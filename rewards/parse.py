"""Parsing one grounding answer: `Label <box>[[x1, y1, x2, y2], ...]</box> ...`.

Model output is hostile, so every step is linear in the input and nothing raises:
- the answer region comes from a `str.find` scan, the blocks from a possessive regex that reads each
  character once (the contract's lazy regex `<box>(.*?)</box>` would rescan to the end for every
  unclosed `<box>`);
- block contents of the canonical shape are recognised by a possessive (backtracking-free) regex, and
  only the rest goes through `json.loads`, whose failures are caught.
The batched hot path built on these pieces is `rewards.batch.parse_batch`.
"""

from __future__ import annotations

import json
import math
import re
from itertools import chain, repeat
from operator import is_not

import numpy as np

BOX_OPEN, BOX_CLOSE = "<box>", "</box>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

# JSON whitespace and numbers exactly as json.loads accepts them (ASCII digits only), with possessive
# quantifiers (Python >= 3.11) so that a failed match never backtracks: matching stays linear.
_WS = r"[ \t\n\r]*+"
_NUMBER = r"-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+"


def canonical_source(number: str) -> str:
    """Regex of one box or a non-empty list of boxes, `number` only: what well-behaved models write."""
    box = rf"\[{_WS}{number}{_WS},{_WS}{number}{_WS},{_WS}{number}{_WS},{_WS}{number}{_WS}\]"
    return rf"{_WS}(?:{box}|\[{_WS}{box}(?:{_WS},{_WS}{box})*+{_WS}\]){_WS}"


CANONICAL = re.compile(canonical_source(_NUMBER))
# The subset models write (a single optional space after commas, no exponents): the form the numpy lexer
# of the hot path (`rewards.lexer`) accepts, written as a regex to specify it (the tests check the lexer
# against it); everything else canonical is still recognised, by CANONICAL, on the general path.
_FAST_NUMBER = r"-?+(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+"
_FAST_BOX = rf"\[{_FAST_NUMBER}, ?+{_FAST_NUMBER}, ?+{_FAST_NUMBER}, ?+{_FAST_NUMBER}\]"
FAST_SOURCE = rf"(?:{_FAST_BOX}|\[{_FAST_BOX}(?:, ?+{_FAST_BOX})*+\])"

Box = tuple[float, float, float, float]
_NO_BOXES = np.zeros((0, 4))
_NO_BOXES.flags.writeable = False


def answer_region(text: str) -> str:
    """Content of the last complete `<answer>...</answer>` block, else the whole text."""
    if ANSWER_OPEN not in text:
        return text
    start = end = -1
    pos = 0
    while (i := text.find(ANSWER_OPEN, pos)) >= 0:
        j = text.find(ANSWER_CLOSE, i + len(ANSWER_OPEN))
        if j < 0:
            break  # no close after i means none after any later open either
        start, end, pos = i + len(ANSWER_OPEN), j, j + len(ANSWER_CLOSE)
    return text if start < 0 else text[start:end]


# One block (label, "<box>", content) or the tail of the text (label, "", ""). Possessive, and applied only
# up to the last </box>, so every attempt succeeds: each character is read once.
_BLOCK_OR_TAIL = re.compile(r"((?:[^<]++|<(?!box>))*+)(?:(<box>)([^<]*+(?:<(?!/box>)[^<]*+)*+)</box>|\Z)")


def scan_blocks(region: str) -> tuple[list[str], list[str]]:
    """Raw (label, content) of each `<box>...</box>` block, left to right, like the lazy regex.

    A label is the text since the previous block, so it never holds `<box>`; a content is the text up
    to the first `</box>`. No block can end after the last `</box>`, so the scan stops there.
    """
    end = region.rfind(BOX_CLOSE)
    if end < 0:
        return [], []
    found = _BLOCK_OR_TAIL.findall(region, 0, end + len(BOX_CLOSE))
    while found and not found[-1][1]:
        found.pop()  # the tail (and findall's empty match at the very end)
    if not found:
        return [], []
    labels, _, contents = zip(*found, strict=True)
    return list(labels), list(contents)


def normalize_label(raw: str) -> str:
    """Lower-case, collapse whitespace runs to one space, strip spaces and `.,;:` from both ends."""
    # split()/join also drops whitespace at the ends, which the strip would remove anyway.
    return " ".join(raw.lower().split()).strip(" .,;:")


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


def _as_array(candidates: list) -> np.ndarray | None:
    """(N, 4) float64 of the candidates when all are 4 ints/floats (no bool); None otherwise."""
    if any(map(is_not, map(type, candidates), repeat(list))) or set(map(len, candidates)) != {4}:
        return None
    flat = list(chain.from_iterable(candidates))
    if not set(map(type, flat)) <= {int, float}:
        return None
    try:
        return np.array(flat, dtype=np.float64).reshape(-1, 4)
    except OverflowError:  # an int beyond float64
        return None


def _surely_broken(content: str) -> bool:
    """True for some text that cannot be JSON: without a string (no `"`), a `<` or unbalanced brackets."""
    return '"' not in content and ("<" in content or content.count("[") != content.count("]"))


def parse_content(content: str) -> tuple[np.ndarray, bool]:
    """Valid boxes (K, 4) of one block's content and whether the block is flawed. Never raises.

    The content must be JSON: a non-empty list of lists (each a box candidate) or else one box
    candidate (a list). Invalid candidates are dropped and flag the block.
    """
    if not content.lstrip(" \t\n\r").startswith("[") or _surely_broken(content):
        return _NO_BOXES, True  # not a JSON list: skip json.loads and its costly exception
    try:
        value = json.loads(content)
    except Exception:  # JSONDecodeError, RecursionError on deep nesting, int digit limits: all flawed
        return _NO_BOXES, True
    if type(value) is not list:
        return _NO_BOXES, True
    candidates = value if value and all(type(v) is list for v in value) else [value]
    arr = _as_array(candidates)  # the common case, validated as an array (NaN and inf included)
    if arr is None:
        boxes = [box for box in map(valid_box, candidates) if box is not None]
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), len(boxes) < len(candidates)
    valid = np.isfinite(arr).all(axis=1) & (arr[:, 0] < arr[:, 2]) & (arr[:, 1] < arr[:, 3])
    return arr[valid], not valid.all()
