"""Box contents of a whole batch lexed and converted by numpy on their UTF-8 bytes, no regex.

The hot path of `rewards.batch`: a content in the form models write (`rewards.parse.FAST_SOURCE`:
`[x1, y1, x2, y2]` or `[[...], [...]]`, numbers `-?(0|[1-9][0-9]*)(\\.[0-9]+)?`, one optional space
after a comma) is recognised from the runs of number bytes (`0-9 - .`) of all contents at once, where
a regex costs ~7 ns per character. Every byte of a content is in a run or in a gap before, between
or after runs, so checking both covers the whole content:
- gaps: after the prefix `[` (one box) or `[[` (a list), between runs `,` or `, `, with `],[` or
  `], [` after every fourth run, and `]` or `]]` at the end; a single box has exactly 4 runs;
- runs: a `-` only first and before a digit, at most one `.`, between digits, no leading zero;
- numbers are converted from their digits: mantissa M (all digits) and k fraction digits give
  M / 10**k, which is the correctly rounded value (what json.loads gives) whenever M < 2**53 and
  10**k is exact, i.e. up to 15 digits. Longer numbers send their content to the general path.
Only a few passes touch every byte; the rest works on arrays of runs. Contents that fail a check are
reported, not parsed: their answers take the general path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PREFIX = b"box>"  # what precedes each content in the lexed bytes: the tail of its <box> tag
_MAX_DIGITS = 15  # mantissas < 10**15 < 2**53 and powers of ten <= 1e15 are exact in float64
_POW10 = 10 ** np.arange(_MAX_DIGITS + 2, dtype=np.int64)
_PAD = 16  # bytes of padding before and after the text: every 8-byte read stays in bounds
_DIGIT0, _MINUS, _DOT = b"0-."
_CHUNK_BYTES = 1 << 17


def _key(text: bytes) -> int:
    """A gap as an integer: its length, then up to 4 bytes little-endian (see `_gap_keys`)."""
    return (len(text) << 32) | int.from_bytes(text, "little")


# Allowed gaps after a run, by case: inside a box, between boxes, end of one box, end of a list.
_INSIDE, _BETWEEN, _END_BOX, _END_LIST = 0, 1, 2, 3
_GAPS = np.array([[_key(b","), _key(b", ")], [_key(b"],["), _key(b"], [")], [_key(b"]")] * 2, [_key(b"]]")] * 2])
_LEADS = np.array([_key(b"["), _key(b"[[")])  # one box, a list of boxes
_LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(5)], dtype=np.uint64)  # the first n bytes
_HIGH_BYTES = np.array([~((1 << (8 * (8 - n))) - 1) & (2**64 - 1) for n in range(9)], dtype=np.uint64)  # last n


@dataclass(frozen=True)
class LexedBoxes:
    """Box candidates of the contents in the fast form, in content order."""

    values: np.ndarray  # (B, 4) float64: every box candidate of the fast contents (not yet validated)
    per_content: np.ndarray  # (C,) int64: candidates of each content, 0 where not fast or empty
    fast: np.ndarray  # (C,) bool: the content is empty or in the fast form and was converted exactly


def windows(data: np.ndarray) -> np.ndarray:
    """Every 8 consecutive bytes of `data` as one little-endian uint64: window i starts at byte i.

    A strided view, no copy: gathering windows reads 8 bytes per index in one step."""
    return np.ndarray(shape=(len(data) - 7,), dtype="<u8", buffer=data, strides=(1,))


def _eight_digits(v: np.ndarray) -> np.ndarray:
    """Value of 8 ASCII digits per uint64 (first digit in the low byte; bytes 0x00 and '0' read as 0).

    The SWAR reduction of simdjson: digit pairs, then groups of 4, then 8, by multiply-and-shift
    (uint64 products wrap around, as the method intends)."""
    v = ((v & np.uint64(0x0F0F0F0F0F0F0F0F)) * np.uint64(2561)) >> np.uint64(8)
    v = ((v & np.uint64(0x00FF00FF00FF00FF)) * np.uint64(6553601)) >> np.uint64(16)
    return (((v & np.uint64(0x0000FFFF0000FFFF)) * np.uint64(42949672960001)) >> np.uint64(32)).astype(np.int64)


def _gap_keys(view: np.ndarray, at: np.ndarray, length: np.ndarray) -> np.ndarray:
    """`_key` of each gap data[at : at + length] (`view`: its `windows`); beyond 4 bytes, no gap's key."""
    low = (view[at] & _LOW_BYTES[np.minimum(length, 4)]).astype(np.int64)
    return (np.minimum(length, 5) << 32) | low


def _runs(data: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, ...]:
    """(run starts, run ends, runs per content, owner of each run, index of each run in its content)."""
    num = ((data - _DIGIT0) < 10) | (data == _MINUS) | (data == _DOT)  # uint8 wraps bytes below '0' around
    edges = np.flatnonzero(num[1:] != num[:-1]) + 1  # the padding is no number: runs start and end inside
    run_start, run_end = edges[0::2], edges[1::2]
    first_run = np.searchsorted(run_start, starts)
    per_content = np.diff(first_run, append=len(run_start))
    owner = np.repeat(np.arange(len(starts)), per_content)
    return run_start, run_end, per_content, owner, np.arange(len(run_start)) - first_run[owner]


def _is_digit(values: np.ndarray) -> np.ndarray:
    return (values - _DIGIT0) < 10


def lex_boxes(text: np.ndarray, offsets: np.ndarray) -> LexedBoxes:
    """`text`: uint8 bytes of PREFIX + content for each content, back to back; `offsets`: each PREFIX.

    Works through the contents in pieces of about _CHUNK_BYTES: a dozen temporaries per byte or run
    then stay in cache, where on the whole batch numpy spends most of its time on memory traffic."""
    if len(text) <= 2 * _CHUNK_BYTES:
        return _lex(text, offsets)
    cuts = np.searchsorted(offsets, np.arange(_CHUNK_BYTES, len(text), _CHUNK_BYTES))
    cuts = np.unique(cuts[(cuts > 0) & (cuts < len(offsets))])
    parts = []
    for lo, hi in zip(np.r_[0, cuts].tolist(), np.r_[cuts, len(offsets)].tolist(), strict=True):
        end = int(offsets[hi]) if hi < len(offsets) else len(text)
        parts.append(_lex(text[int(offsets[lo]) : end], offsets[lo:hi] - offsets[lo]))
    return LexedBoxes(
        np.concatenate([p.values for p in parts]),
        np.concatenate([p.per_content for p in parts]),
        np.concatenate([p.fast for p in parts]),
    )


def _lex(text: np.ndarray, offsets: np.ndarray) -> LexedBoxes:
    size = len(offsets)
    if size == 0:
        return LexedBoxes(np.zeros((0, 4)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
    pad = np.zeros(_PAD, dtype=np.uint8)
    data = np.concatenate([pad, text, pad])  # a copy we may write to
    view = windows(data)
    starts = offsets + _PAD
    ends = np.append(starts[1:], _PAD + len(text))
    empty = ends - starts == len(PREFIX)  # `<box></box>`: fast too, no box (a flawed block)
    run_start, run_end, runs, owner, index = _runs(data, starts)
    n_runs = len(run_start)
    if n_runs == 0:  # no numbers at all
        return LexedBoxes(np.zeros((0, 4)), np.zeros(size, dtype=np.int64), empty)
    has_runs = runs > 0
    lead = np.where(has_runs, run_start[np.minimum(np.cumsum(runs) - runs, n_runs - 1)], ends)
    lead_key = _gap_keys(view, starts + len(PREFIX), lead - starts - len(PREFIX))
    is_list = lead_key == _LEADS[1]
    fast = has_runs & ((lead_key == _LEADS[0]) & (runs == 4) | is_list & (runs % 4 == 0))

    # Gaps: from each run's end to the next run, or to the end of its content.
    last = index == runs[owner] - 1
    gap_end = np.where(last, ends[owner], np.append(run_start[1:], 0))
    case = np.where(last, _END_BOX + is_list[owner], (index & 3) == 3)
    key = _gap_keys(view, run_end, gap_end - run_end)
    run_ok = (key == _GAPS[case, 0]) | (key == _GAPS[case, 1])

    # Inside runs: every '-' and '.' checked against its neighbours, and no leading zero.
    marks = np.flatnonzero((data == _MINUS) | (data == _DOT))
    mark_run = np.searchsorted(run_start, marks, side="right") - 1
    is_minus = data[marks] == _MINUS
    around = _is_digit(data[marks + 1]) & np.where(is_minus, marks == run_start[mark_run], _is_digit(data[marks - 1]))
    run_ok[mark_run[~around]] = False
    dots, dot_run = marks[~is_minus], mark_run[~is_minus]
    run_ok[dot_run[1:][dot_run[1:] == dot_run[:-1]]] = False  # a second dot in one run
    negative = np.flatnonzero(data[run_start] == _MINUS)
    first_digit = run_start.copy()
    first_digit[negative] += 1
    run_ok &= ~((data[first_digit] == _DIGIT0) & _is_digit(data[first_digit + 1]))
    has_dot = np.zeros(n_runs, dtype=bool)
    has_dot[dot_run] = True
    width = run_end - first_digit  # digits and the dot
    run_ok &= width <= _MAX_DIGITS + has_dot
    fast[owner[~run_ok]] = False

    # Numbers: the digits (the dot read as a 0) as one integer N from 8-byte windows ending at the run's
    # end, bytes before the run masked off. With f fraction digits the mantissa is N without that 0,
    # and mantissa / 10**f is correctly rounded: both are exact in float64.
    data[dots] = _DIGIT0
    width = np.clip(width, 0, 16)
    number = _eight_digits(view[run_end - 8] & _HIGH_BYTES[np.minimum(width, 8)])
    long = np.flatnonzero(width > 8)
    if len(long):
        high = _eight_digits(view[run_end[long] - 16] & _HIGH_BYTES[width[long] - 8])
        number[long] += high * _POW10[8]
    value = number.astype(np.float64)
    below = _POW10[np.clip(run_end[dot_run] - dots - 1, 0, _MAX_DIGITS)]
    fractional = number[dot_run]
    value[dot_run] = (fractional // (below * 10) * below + fractional % below) / below.astype(np.float64)
    # json: "-0" is the int 0 (0.0), "-0.0" the float -0.0.
    value[negative] = np.where(has_dot[negative], -value[negative], 0.0 - value[negative])

    per_content = np.where(fast, runs // 4, 0).astype(np.int64)
    return LexedBoxes(value[np.repeat(fast, runs)].reshape(-1, 4), per_content, fast | empty)
