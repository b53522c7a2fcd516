"""The tags of a whole batch of texts, found by numpy on the UTF-8 bytes of their joined text.

The texts are joined into one NUL-separated string. Every tag starts with `<` and holds no other
`<`, so the tags are read off the 8 bytes at each `<`. The contract's lazy regexes
(`<answer>(.*?)</answer>`, `<box>(.*?)</box>`) pair tags like this automaton: outside a pair, an
open tag starts one and a close tag is ignored; inside, an open tag is ignored and a close tag ends
it. So a close tag ends a pair iff an open tag lies between it and the previous close tag (or the
text's start), and that pair opens at the first of those (`lazy_pairs`): found for every text at
once, without a loop. UTF-8 never puts an ASCII byte inside a multi-byte character, so byte-wise
tag search is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rewards.lexer import windows
from rewards.parse import ANSWER_CLOSE, ANSWER_OPEN, BOX_CLOSE, BOX_OPEN

SEP = "\x00"  # joins the texts (those containing it cannot be joined)
OTHER, OPEN, CLOSE, ANSWER_START, ANSWER_END = range(5)  # tag kinds
_PAD = 32  # NULs after the last text: every read (a tag: 9 bytes, a label: 32) stays in bounds


def _key(tag: str) -> np.uint64:
    return np.uint64(int.from_bytes(tag.encode()[:8], "little"))


def _low(n: int) -> np.uint64:
    return np.uint64((1 << (8 * n)) - 1)


@dataclass(frozen=True)
class Joined:
    """The texts joined: text k is text[bounds[k] + 1 : bounds[k + 1]] (UTF-8 bytes in `data`)."""

    text: str  # SEP + SEP.join(texts) + SEP * _PAD
    raw: bytes  # its UTF-8 (lone surrogates passed through)
    data: np.ndarray  # raw as uint8
    bounds: np.ndarray  # (S + 1,) positions of the separators

    @classmethod
    def of(cls, texts: list[str]) -> Joined | None:
        """The joined texts; None if some text contains SEP."""
        text = SEP + SEP.join(texts) + SEP * _PAD
        raw = text.encode("utf-8", "surrogatepass")
        data = np.frombuffer(raw, dtype=np.uint8)
        bounds = np.flatnonzero(data == 0)
        if len(bounds) != max(len(texts), 1) + _PAD:  # no texts: one SEP more than texts
            return None
        return cls(text, raw, data, bounds[: len(texts) + 1])

    def slices(self, start: np.ndarray, end: np.ndarray) -> list[str]:
        """The byte ranges [start, end) as str: sliced from the text if it is ASCII, else decoded."""
        if self.text.isascii():
            return list(map(self.text.__getitem__, map(slice, start.tolist(), end.tolist())))
        pieces = map(self.raw.__getitem__, map(slice, start.tolist(), end.tolist()))
        return [piece.decode("utf-8", "surrogatepass") for piece in pieces]


@dataclass(frozen=True)
class Tags:
    """Every `<` of the joined text, in order: its byte position, text and kind."""

    pos: np.ndarray
    text: np.ndarray
    kind: np.ndarray  # OTHER, OPEN (`<box>`), CLOSE (`</box>`), ANSWER_START, ANSWER_END

    @classmethod
    def of(cls, joined: Joined) -> Tags:
        data = joined.data
        pos = np.flatnonzero(data == ord("<"))
        window = windows(data)[pos]
        kind = np.zeros(len(pos), dtype=np.int8)
        kind[(window & _low(len(BOX_OPEN))) == _key(BOX_OPEN)] = OPEN
        kind[(window & _low(len(BOX_CLOSE))) == _key(BOX_CLOSE)] = CLOSE
        kind[window == _key(ANSWER_OPEN)] = ANSWER_START
        kind[(window == _key(ANSWER_CLOSE)) & (data[pos + 8] == ord(">"))] = ANSWER_END
        # Text of each `<`: the `<`s before each separator, counted by a search per text (not per tag).
        per_text = np.diff(np.searchsorted(pos, joined.bounds))
        return cls(pos, np.repeat(np.arange(len(per_text)), per_text), kind)

    def take(self, index: np.ndarray) -> Tags:
        return Tags(self.pos[index], self.text[index], self.kind[index])


def lazy_pairs(is_close: np.ndarray, text: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(open, close) indices of the pairs the lazy regex finds among open and close tags in order.

    A segment runs from a text's start or the tag after a close tag up to the next close tag
    (inclusive); it is a pair iff it starts with an open tag and ends with a close tag."""
    n = len(is_close)
    begins = np.ones(n, dtype=bool)
    begins[1:] = is_close[:-1] | (text[1:] != text[:-1])
    first = np.flatnonzero(begins)
    last = np.append(first[1:], n)[: len(first)] - 1
    paired = ~is_close[first] & is_close[last]
    return first[paired], last[paired]


def regions(joined: Joined, tags: Tags) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) byte positions of each text's answer region: its last `<answer>...</answer>`
    pair's content, else the whole text."""
    start, end = joined.bounds[:-1] + 1, joined.bounds[1:].copy()
    answer = tags.take(np.flatnonzero(tags.kind >= ANSWER_START))
    if len(answer.pos):
        opened, closed = lazy_pairs(answer.kind == ANSWER_END, answer.text)
        owner = answer.text[opened]
        last = np.append(owner[1:] != owner[:-1], True)[: len(owner)]  # pairs are in text order: a text's last pair
        start[owner[last]] = answer.pos[opened[last]] + len(ANSWER_OPEN)
        end[owner[last]] = answer.pos[closed[last]]
    return start, end


@dataclass(frozen=True)
class Blocks:
    """The `<box>` blocks of every text's region, in text order, and the region's tag counts."""

    n_open: np.ndarray  # (S,) `<box>` in the region
    n_close: np.ndarray  # (S,) `</box>` in the region
    text: np.ndarray  # (T,) text of each block
    label_start: np.ndarray  # (T,) byte range of the raw label: previous block's end or region start ...
    open_pos: np.ndarray  # (T,) ... up to the block's `<box>`
    close_pos: np.ndarray  # (T,) position of the block's `</box>`; the content lies in between


def blocks(joined: Joined) -> Blocks:
    """Every text's blocks, as the lazy regex `<box>(.*?)</box>` finds them in its answer region."""
    tags = Tags.of(joined)
    start, end = regions(joined, tags)
    size = len(start)
    inside = (tags.pos >= start[tags.text]) & (tags.pos < end[tags.text])
    box = tags.take(np.flatnonzero(inside & ((tags.kind == OPEN) | (tags.kind == CLOSE))))
    is_close = box.kind == CLOSE
    opened, closed = lazy_pairs(is_close, box.text)
    owner = box.text[opened]
    close_pos = box.pos[closed]
    first = np.ones(len(owner), dtype=bool)
    first[1:] = owner[1:] != owner[:-1]
    previous_end = np.append(0, close_pos[:-1] + len(BOX_CLOSE))[: len(owner)]
    return Blocks(
        n_open=np.bincount(box.text[~is_close], minlength=size),
        n_close=np.bincount(box.text[is_close], minlength=size),
        text=owner,
        label_start=np.where(first, start[owner], previous_end),
        open_pos=box.pos[opened],
        close_pos=close_pos,
    )
