"""`parse_batch`: parsing a whole batch of answers at once, the hot path of `score_batch`.

Most answers are *regular*: every `<` of the region starts a `<box>` whose content has the form models
write (`rewards.parse.FAST_SOURCE`: numbers only, `, ` or `,` between them), closed by `</box>`. One
possessive regex walks the whole batch (joined with NUL separators) and marks the regular answers;
they are then cut into labels and contents with two C-level `str` calls for all of them, with no
Python loop per block. The other answers take the general path: a linear regex scan per answer and
per-content checks. Both are linear in the input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from rewards.contents import content_boxes
from rewards.parse import (
    ANSWER_OPEN,
    BOX_CLOSE,
    BOX_OPEN,
    FAST_SOURCE,
    answer_region,
    normalize_label,
    scan_blocks,
)

_SEP = "\x00"  # joins answers; an answer containing it takes the general path
_REGULAR_RUN = re.compile(rf"(?:(?:[^<\x00]*+<box>{FAST_SOURCE}</box>)*+[^<\x00]*+\x00)*+")


@dataclass(frozen=True)
class ParsedBatch:
    """Parse of S texts. Each sample's boxes are contiguous in `boxes`, from `box_start`."""

    n_blocks: np.ndarray  # (S,) int64
    n_open: np.ndarray  # (S,) int64: `<box>` count in the region
    n_close: np.ndarray  # (S,) int64: `</box>` count in the region
    blocks_ok: np.ndarray  # (S,) bool: >= 1 block, every block has a valid box and is not flawed
    block_sample: np.ndarray  # (T,) int64: sample of each block (blocks of a sample in text order)
    block_label: np.ndarray  # (T,) int64: id of each block's normalised label in the vocabulary
    boxes: np.ndarray  # (B, 4) float64: valid boxes only
    box_block: np.ndarray  # (B,) int64: block of each box
    box_start: np.ndarray  # (S,) int64
    box_count: np.ndarray  # (S,) int64


def _label_ids(pieces: list[str], vocab: dict[str, int], strip_to_sep: bool = False) -> np.ndarray:
    """Vocabulary id (grown as needed) of each raw label's normalised form; computed once per text."""
    ids = {}
    for raw in dict.fromkeys(pieces):
        label = raw.rpartition(_SEP)[2] if strip_to_sep else raw
        ids[raw] = vocab.setdefault(normalize_label(label), len(vocab))
    return np.fromiter(map(ids.__getitem__, pieces), np.int64, len(pieces))


def _assemble(
    n_blocks: np.ndarray,
    n_open: np.ndarray,
    n_close: np.ndarray,
    block_label: np.ndarray,
    contents: list[str],
    canonical: bool,
) -> ParsedBatch:
    found = content_boxes(contents, all_canonical=canonical)
    block_sample = np.repeat(np.arange(len(n_blocks)), n_blocks)
    bad_per_sample = np.bincount(block_sample[found.bad], minlength=len(n_blocks))
    box_count = np.bincount(block_sample[found.content], minlength=len(n_blocks)).astype(np.int64)
    return ParsedBatch(
        n_blocks=n_blocks,
        n_open=n_open,
        n_close=n_close,
        blocks_ok=(n_blocks > 0) & (bad_per_sample == 0),
        block_sample=block_sample,
        block_label=block_label,
        boxes=found.boxes,
        box_block=found.content,
        box_start=np.cumsum(box_count) - box_count,
        box_count=box_count,
    )


def _parse_regular(regions: list[str], vocab: dict[str, int]) -> ParsedBatch:
    """Regular answers: every '<' opens or closes a block, so splitting on the tags cuts them all."""
    pieces = (_SEP.join(regions) + _SEP).replace(BOX_CLOSE, BOX_OPEN).split(BOX_OPEN)
    labels, contents = pieces[0:-1:2], pieces[1::2]
    # A label piece also holds the tail of the answers before it, up to its last separator.
    separators = np.fromiter(map(str.count, labels, repeat(_SEP)), np.int64, len(labels))
    n_blocks = np.bincount(np.cumsum(separators), minlength=len(regions)).astype(np.int64)
    block_label = _label_ids(labels, vocab, strip_to_sep=True)
    return _assemble(n_blocks, n_blocks, n_blocks, block_label, contents, canonical=True)


def _parse_general(regions: list[str], vocab: dict[str, int]) -> ParsedBatch:
    labels: list[str] = []
    contents: list[str] = []
    counts: list[int] = []
    for region in regions:
        region_labels, region_contents = scan_blocks(region)
        labels += region_labels
        contents += region_contents
        counts.append(len(region_contents))
    n_blocks = np.asarray(counts, dtype=np.int64).reshape(-1)
    n_open = np.fromiter(map(str.count, regions, repeat(BOX_OPEN)), np.int64, len(regions))
    n_close = np.fromiter(map(str.count, regions, repeat(BOX_CLOSE)), np.int64, len(regions))
    return _assemble(n_blocks, n_open, n_close, _label_ids(labels, vocab), contents, canonical=False)


def _regular_mask(regions: list[str]) -> np.ndarray:
    """Which regions are regular, found by one regex walk over all of them (two on irregular ones)."""
    size = len(regions)
    regular = np.zeros(size, dtype=bool)
    joined = _SEP.join(regions) + _SEP
    if joined.count(_SEP) != size:  # some answer contains the separator: a lone '<' makes it irregular
        joined = _SEP.join("<" if _SEP in r else r for r in regions) + _SEP
    pos = s = 0
    while s < size:
        end = _REGULAR_RUN.match(joined, pos).end()  # type: ignore[union-attr]  # `*+` always matches
        k = joined.count(_SEP, pos, end)  # whole answers matched
        regular[s : s + k] = True
        s += k + 1  # answer s + k is irregular: skip it
        pos = joined.find(_SEP, end) + 1
    return regular


def _merge(parts: list[tuple[np.ndarray, ParsedBatch]], size: int) -> ParsedBatch:
    """One ParsedBatch over all samples from parts covering disjoint sample index sets."""
    per_sample = {name: np.zeros(size, dtype=np.int64) for name in ("n_blocks", "n_open", "n_close", "box_count")}
    blocks_ok, box_start = np.zeros(size, dtype=bool), np.zeros(size, dtype=np.int64)
    block_sample, block_label, boxes, box_block = [], [], [], []
    n_blocks_seen = n_boxes_seen = 0
    for index, part in parts:
        for name, arr in per_sample.items():
            arr[index] = getattr(part, name)
        blocks_ok[index] = part.blocks_ok
        box_start[index] = part.box_start + n_boxes_seen
        block_sample.append(index[part.block_sample])
        block_label.append(part.block_label)
        boxes.append(part.boxes)
        box_block.append(part.box_block + n_blocks_seen)
        n_blocks_seen += len(part.block_label)
        n_boxes_seen += len(part.boxes)
    return ParsedBatch(
        blocks_ok=blocks_ok,
        block_sample=np.concatenate(block_sample),
        block_label=np.concatenate(block_label),
        boxes=np.concatenate(boxes),
        box_block=np.concatenate(box_block),
        box_start=box_start,
        **per_sample,
    )


def parse_batch(texts: list[str], vocab: dict[str, int] | None = None) -> ParsedBatch:
    """Parse every text: answer region, blocks, label ids (into `vocab`), boxes and tag counts."""
    vocab = {} if vocab is None else vocab
    regions = [answer_region(t) if ANSWER_OPEN in t else t for t in texts]
    regular = _regular_mask(regions)
    parts = []
    for index, parser in ((np.flatnonzero(regular), _parse_regular), (np.flatnonzero(~regular), _parse_general)):
        if len(index) or not parts:  # an empty batch still yields one (empty) part
            parts.append((index, parser([regions[s] for s in index.tolist()], vocab)))
    return _merge(parts, len(texts))


def parse_answer(text: str) -> list[tuple[str, np.ndarray]]:
    """(normalised label, valid boxes (K, 4) float64) of each block of the answer; never raises.

    Blocks whose content holds no valid box are kept, with K = 0: their label still counts.
    """
    if not isinstance(text, str):
        return []
    vocab: dict[str, int] = {}
    parsed = parse_batch([text], vocab)
    names = list(vocab)  # insertion order is id order
    bounds = np.searchsorted(parsed.box_block, np.arange(int(parsed.n_blocks[0]) + 1))
    return [
        (names[label], parsed.boxes[bounds[b] : bounds[b + 1]].copy())
        for b, label in enumerate(parsed.block_label.tolist())
    ]
