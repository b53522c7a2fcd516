"""Box contents of a whole batch lexed and converted by numpy on their UTF-8 bytes, no regex.

The hot path of `rewards.batch`: a content in the form models write (`rewards.parse.FAST_SOURCE`:
`[x1, y1, x2, y2]` or `[[...], [...]]`, numbers `-?(0|[1-9][0-9]*)(\\.[0-9]+)?`, one optional space
after a comma) is recognised from the runs of number bytes (`0-9 - .`) of all contents at once, where
a regex costs ~7 ns per character. Every byte of a content is in a run or in a gap before, between
or after runs, so checking both covers the whole content:
- gaps: before the first run `[` (one box) or `[[` (a list), between runs `,` or `, `, with `],[` or
  `], [` after every fourth run, and `]` or `]]` at the end; a single box has exactly 4 runs. A gap
  is read as one integer (its length and bytes) and compared with the allowed ones; the few `],[`
  gaps are then checked to sit at ranks 3 mod 4 and to number one less than the boxes;
- runs: a `-` only first and before a digit, at most one `.`, between digits (the rare `-` and `.`
  are checked one by one), no leading zero (one pass over the bytes);
- numbers are converted from their bytes: the SWAR digit reduction reads `-` and `.` as the digits
  13 and 14 (their low nibbles), whose contributions are then taken out; mantissa M (all digits) and
  k fraction digits give M / 10**k, which is the correctly rounded value (what json.loads gives)
  whenever M < 2**53 and 10**k is exact, i.e. up to 15 digits. Longer numbers are not fast.
Only a few passes touch every byte; the rest works on arrays of runs, each a few numpy calls. Contents
that fail a check are reported, not parsed: `rewards.batch` sends them through `json.loads`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_MAX_DIGITS = 15  # mantissas < 10**15 < 2**53 and powers of ten <= 1e15 are exact in float64
_POW10 = 10 ** np.arange(_MAX_DIGITS + 2, dtype=np.int64)
_PAD = 16  # bytes of padding before and after the text: every 16-byte read stays in bounds
_DIGIT0, _MINUS, _DOT = b"0-."
_MINUS_DIGIT, _DOT_DIGIT = _MINUS & 15, _DOT & 15  # what the digit reduction reads them as: 13, 14
_CHUNK_BYTES = 1 << 18  # measured best in the benchmark (caches cold after the baseline)


def _key(text: bytes) -> int:
    """A gap as an integer: its length, then up to 4 bytes little-endian (see `_gap_keys`)."""
    return (len(text) << 32) | int.from_bytes(text, "little")


_INSIDE, _BETWEEN = ((_key(b","), _key(b", ")), (_key(b"],["), _key(b"], [")))  # gaps after a run
_ENDS = np.array([_key(b"]"), _key(b"]]")])  # the gap after the last run: one box, a list of boxes
_LEADS = np.array([_key(b"["), _key(b"[[")])  # the gap before the first run
_LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(5)], dtype=np.uint64)  # the first n bytes
_HIGH_BYTES = np.array([~((1 << (8 * (8 - n))) - 1) & (2**64 - 1) for n in range(9)], dtype=np.uint64)  # last n


@dataclass(frozen=True)
class LexedBoxes:
    """Box candidates of the contents in the fast form, in content order."""

    values: np.ndarray  # (B, 4) float64: every box candidate of the fast contents (not yet validated)
    per_content: np.ndarray  # (C,) int64: candidates of each content, 0 where not fast or empty
    fast: np.ndarray  # (C,) bool: the content is empty or in the fast form and was converted exactly


def windows(data: np.ndarray, size: int = 8) -> np.ndarray:
    """Every `size` consecutive bytes of `data` as one item (little-endian uint64 for 8, else bytes):
    window i starts at byte i. A strided view, no copy: a gather reads `size` bytes per index."""
    dtype = "<u8" if size == 8 else f"S{size}"
    return np.ndarray(shape=(len(data) - size + 1,), dtype=dtype, buffer=data, strides=(1,))


def _eight_digits(v: np.ndarray) -> np.ndarray:
    """Value of 8 digit bytes per uint64 (first digit in the low byte; a byte reads as its low nibble).

    The SWAR reduction of simdjson: digit pairs, then groups of 4, then 8, by multiply-and-shift
    (uint64 products wrap around, as the method intends). It is linear in the nibbles as long as each
    is <= 14 (no lane overflows), so `-` (13) and `.` (14) add 13 or 14 times their place value."""
    v = ((v & np.uint64(0x0F0F0F0F0F0F0F0F)) * np.uint64(2561)) >> np.uint64(8)
    v = ((v & np.uint64(0x00FF00FF00FF00FF)) * np.uint64(6553601)) >> np.uint64(16)
    return (((v & np.uint64(0x0000FFFF0000FFFF)) * np.uint64(42949672960001)) >> np.uint64(32)).view(np.int64)


def _gap_keys(window: np.ndarray, length: np.ndarray) -> np.ndarray:
    """`_key` of each gap: its first `length` bytes of the 8 in `window`; beyond 4 bytes, no gap's key."""
    low = (window & _LOW_BYTES[np.minimum(length, 4)]).view(np.int64)
    return (np.minimum(length, 5) << 32) | low


def lex_boxes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> LexedBoxes:
    """The contents data[starts[k] : ends[k]] of uint8 `data` (increasing, disjoint, not adjacent).

    Works through the contents in pieces of about _CHUNK_BYTES of `data`: the temporaries per byte or
    run then stay in cache, where on the whole batch numpy spends most of its time on memory traffic.
    The bytes between contents are read but never taken for numbers or gaps."""
    cuts = np.searchsorted(starts, np.arange(_CHUNK_BYTES, len(data), _CHUNK_BYTES))
    cuts = np.unique(cuts[(cuts > 0) & (cuts < len(starts))]).tolist()
    parts = [_lex(data, starts[lo:hi], ends[lo:hi]) for lo, hi in zip([0, *cuts], [*cuts, len(starts)], strict=True)]
    return LexedBoxes(
        np.concatenate([p.values for p in parts]),
        np.concatenate([p.per_content for p in parts]),
        np.concatenate([p.fast for p in parts]),
    )


@dataclass(frozen=True)
class _Piece:
    """A padded copy of the bytes from a few contents' first to their last, and where the digits, `-`
    and `.` of those contents are (those between contents left out)."""

    data: np.ndarray
    digit: np.ndarray
    minus: np.ndarray
    dot: np.ndarray

    @classmethod
    def of(cls, source: np.ndarray, lo: int, starts: np.ndarray, ends: np.ndarray) -> _Piece:
        """The piece of source[lo : lo + len(data) - 2 * _PAD], its contents at `starts` to `ends`."""
        data = np.zeros(int(ends[-1]) + _PAD, dtype=np.uint8)
        data[_PAD:-_PAD] = source[lo : lo + len(data) - 2 * _PAD]
        bounds = np.empty(2 * len(starts) + 2, dtype=np.int64)
        bounds[0], bounds[1:-1:2], bounds[2:-1:2], bounds[-1] = 0, starts, ends, len(data)
        inside = np.repeat((np.arange(len(bounds) - 1) & 1).astype(bool), np.diff(bounds))
        digit = (data - _DIGIT0) < 10  # uint8 wraps bytes below '0' around
        digit &= inside
        return cls(data, digit, (data == _MINUS) & inside, (data == _DOT) & inside)


@dataclass(frozen=True)
class _Runs:
    """The runs of number bytes of a padded piece, the contents they fall in, and the bytes around
    each run's end: the 8 up to it (the number's last 8) and the 8 from it (the gap after it)."""

    start: np.ndarray  # (R,) first byte of each run
    end: np.ndarray  # (R,) one past its last byte
    first: np.ndarray  # (C,) first run of each content
    count: np.ndarray  # (C,) runs of each content
    before: np.ndarray  # (R,) uint64: bytes end - 8 .. end - 1
    after: np.ndarray  # (R,) uint64: bytes end .. end + 7

    @classmethod
    def of(cls, piece: _Piece, starts: np.ndarray) -> _Runs:
        number_byte = piece.digit | piece.minus | piece.dot
        edges = np.flatnonzero(number_byte[1:] != number_byte[:-1]) + 1  # the padding holds no run
        start, end = np.ascontiguousarray(edges.reshape(-1, 2).T)
        first = np.searchsorted(start, starts)
        # One 16-byte gather: numpy copies a strided window at the same cost whatever its size.
        around = windows(piece.data, 16)[end - 8].view("<u8").reshape(-1, 2).T
        return cls(start, end, first, np.diff(first, append=len(start)), around[0].copy(), around[1].copy())


def _shape_ok(view: np.ndarray, starts: np.ndarray, ends: np.ndarray, runs: _Runs) -> np.ndarray:
    """Per content: the gaps before, between and after its runs are those of the fast form."""
    has_runs = runs.count > 0
    first = np.minimum(runs.first, len(runs.start) - 1)
    last = np.maximum(runs.first + runs.count - 1, 0)
    lead = _gap_keys(view[starts], np.where(has_runs, runs.start[first], ends) - starts)
    is_list = lead == _LEADS[1]
    tail = _gap_keys(runs.after[last], np.where(has_runs, ends - runs.end[last], 0))
    counted = np.where(is_list, runs.count % 4 == 0, runs.count == 4)
    fast = has_runs & (is_list | (lead == _LEADS[0])) & counted & (tail == np.where(is_list, _ENDS[1], _ENDS[0]))
    gap = np.zeros(len(runs.start), dtype=np.int64)
    np.subtract(runs.start[1:], runs.end[:-1], out=gap[:-1])
    key = _gap_keys(runs.after, gap)
    between = (key == _BETWEEN[0]) | (key == _BETWEEN[1])
    ok = between | (key == _INSIDE[0]) | (key == _INSIDE[1])
    ok[last[has_runs]], between[last[has_runs]] = True, False  # the gap after a content's last run is its tail
    fast[np.searchsorted(runs.first, np.flatnonzero(~ok), side="right") - 1] = False
    # `],[` follows exactly the 4th, 8th, ... run but the last: at ranks 3 mod 4, count // 4 - 1 of them.
    box_end = np.flatnonzero(between)
    owner = np.searchsorted(runs.first, box_end, side="right") - 1
    fast[owner[(box_end - runs.first[owner]) & 3 != 3]] = False
    return fast & (np.bincount(owner, minlength=len(fast)) == runs.count // 4 - 1)


def _values(piece: _Piece, runs: _Runs) -> tuple[np.ndarray, np.ndarray]:
    """(value of each run, positions of the bytes that make their run no number of the fast form)."""
    length = runs.end - runs.start
    number = _eight_digits(runs.before & _HIGH_BYTES[np.minimum(length, 8)])
    long = np.flatnonzero(length > 8)
    if len(long):
        high = _eight_digits(windows(piece.data)[runs.end[long] - 16] & _HIGH_BYTES[np.minimum(length[long] - 8, 8)])
        number[long] += high * _POW10[8]
    # The rare `-` and `.`, one by one: a `-` first in its run and before a digit, a `.` between digits.
    digit = piece.digit
    marks = np.flatnonzero(piece.minus | piece.dot)
    mark_run = np.searchsorted(runs.start, marks, side="right") - 1
    is_minus = piece.minus[marks]
    around = digit[marks + 1] & np.where(is_minus, marks == runs.start[mark_run], digit[marks - 1])
    bad = [marks[~around]]
    negative = mark_run[is_minus]
    dots, dotted = marks[~is_minus], mark_run[~is_minus]
    bad.append(dots[1:][dotted[1:] == dotted[:-1]])  # a second dot in one run
    has_dot = np.zeros(len(length), dtype=bool)
    has_dot[dotted] = True
    # Take out the `-` (place 10**(length - 1)), unless a 17-byte run leaves it out of the 16 bytes read.
    place = np.minimum(length[negative] - 1, _MAX_DIGITS + 1)
    number[negative] -= np.where(length[negative] <= 16, _MINUS_DIGIT * _POW10[place], 0)
    # With f fraction digits, number = int part * 10**(f + 1) + 14 * 10**f + fraction.
    below = _POW10[np.clip(runs.end[dotted] - dots - 1, 0, _MAX_DIGITS)]
    fractional = number[dotted]
    value = number.astype(np.float64)
    value[dotted] = ((fractional // (below * 10) - 1) * below + fractional % below) / below
    # json: "-0" is the int 0 (0.0), "-0.0" the float -0.0.
    value[negative] = np.where(has_dot[negative], -value[negative], 0.0 - value[negative])
    wide = np.flatnonzero(length > _MAX_DIGITS)  # at most 15 digits
    if len(wide):
        digits = length[wide] - has_dot[wide] - np.isin(wide, negative)
        bad.append(runs.start[wide[digits > _MAX_DIGITS]])
    # No leading zero: a 0 that follows no digit or dot, followed by a digit.
    zero = piece.data[1:-1] == _DIGIT0
    zero &= digit[1:-1] & digit[2:]
    zero &= ~(digit[:-2] | piece.dot[:-2])
    bad.append(np.flatnonzero(zero) + 1)
    return value, np.concatenate(bad)


def _lex(source: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> LexedBoxes:
    size = len(starts)
    if size == 0:
        return LexedBoxes(np.zeros((0, 4)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
    lo = int(starts[0]) - _PAD  # source byte lo is piece byte 0
    starts, ends = starts - lo, ends - lo
    piece = _Piece.of(source, lo + _PAD, starts, ends)
    empty = ends == starts  # `<box></box>`: fast too, no box (a flawed block)
    runs = _Runs.of(piece, starts)
    if len(runs.start) == 0:  # no numbers at all
        return LexedBoxes(np.zeros((0, 4)), np.zeros(size, dtype=np.int64), empty)
    fast = _shape_ok(windows(piece.data), starts, ends, runs)
    value, bad = _values(piece, runs)
    fast[np.searchsorted(starts, bad, side="right") - 1] = False
    per_content = np.where(fast, runs.count // 4, 0)
    if (fast | (runs.count == 0)).all():  # every run is a number of a fast content
        return LexedBoxes(value.reshape(-1, 4), per_content, fast | empty)
    return LexedBoxes(value[np.repeat(fast, runs.count)].reshape(-1, 4), per_content, fast | empty)
