"""Reference answers of a batch as arrays, each distinct reference parsed once and cached.

A GRPO batch repeats every reference group-size times, and epochs and evaluations repeat them
again. The cache maps a reference text to (the batched parse it came from, its row there), so that
filling it costs one dict entry per text, and a batch of references is assembled with one vectorised
gather per parse it draws from, not a Python step per reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat

import numpy as np

from rewards.batch import ParsedBatch, parse_batch
from rewards.components import FlatBoxes, distinct, offsets, segments

_CACHE_LIMIT = 100_000  # distinct references kept; the cache is simply dropped when full


@dataclass(frozen=True, eq=False)
class _Parse:
    """One `parse_batch` of references, shared by the cache entries of its texts."""

    batch: ParsedBatch
    names: list[str]  # its own label vocabulary, in id order


_CACHE: dict[str, tuple[_Parse, int]] = {}


def clear_reference_cache() -> None:
    """Forget cached reference parses (benchmarks time cold parses with it)."""
    _CACHE.clear()


def _entries(texts: list[str]) -> list[tuple[_Parse, int]]:
    missing = [t for t in texts if t not in _CACHE]
    if missing:
        if len(_CACHE) + len(missing) > _CACHE_LIMIT:
            _CACHE.clear()
        vocab: dict[str, int] = {}
        parse = _Parse(parse_batch(missing, vocab), list(vocab))
        _CACHE.update(zip(missing, zip(repeat(parse), range(len(missing))), strict=True))
    return [_CACHE[t] for t in texts]


@dataclass(frozen=True)
class _Rows:
    """Per-reference arrays of some distinct references; flat arrays are segmented by the counts."""

    boxes: np.ndarray  # (sum box_count, 4)
    box_count: np.ndarray
    n_blocks: np.ndarray
    labels: np.ndarray  # distinct label ids in the shared vocabulary
    label_count: np.ndarray

    def take(self, order: np.ndarray) -> _Rows:
        """The references in `order`, segments moved along."""
        return _Rows(
            self.boxes[_segment_index(self.box_count, order)],
            self.box_count[order],
            self.n_blocks[order],
            self.labels[_segment_index(self.label_count, order)],
            self.label_count[order],
        )


def _segment_index(counts: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Flat indices that gather the segments of a segmented array in `order`."""
    owner, local = segments(counts[order])
    return offsets(counts)[order][owner] + local


def _rows(parse: _Parse, rows: np.ndarray, vocab: dict[str, int]) -> _Rows:
    batch = parse.batch
    counts = batch.box_count[rows]
    owner, local = segments(counts)
    boxes = batch.boxes[batch.box_start[rows][owner] + local]
    to_shared = np.asarray([vocab.setdefault(n, len(vocab)) for n in parse.names], dtype=np.int64)
    position = np.full(len(batch.n_blocks), -1)
    position[rows] = np.arange(len(rows))
    block_position = position[batch.block_sample]
    mine = block_position >= 0
    width = max(len(vocab), 1)
    keys = distinct(block_position[mine] * width + to_shared[batch.block_label[mine]])  # distinct labels
    label_count = np.bincount(keys // width, minlength=len(rows)).astype(np.int64)
    return _Rows(boxes, counts, batch.n_blocks[rows], keys % width, label_count)


@dataclass(frozen=True)
class References:
    """Per sample: reference boxes (indexing the distinct references' boxes), block count, labels."""

    boxes: FlatBoxes
    n_blocks: np.ndarray  # (S,)
    labels: np.ndarray  # distinct label ids of each sample's reference, flat
    label_count: np.ndarray  # (S,)


def reference_batch(texts: list[str], vocab: dict[str, int]) -> References:
    """The references of a batch, label ids taken from (and added to) `vocab`."""
    unique_texts = list(dict.fromkeys(texts))
    position = {t: i for i, t in enumerate(unique_texts)}
    index = np.fromiter(map(position.__getitem__, texts), np.int64, len(texts))
    parses, rows = zip(*_entries(unique_texts), strict=True) if texts else ((), ())
    row = np.asarray(rows, dtype=np.int64)
    sources = list(dict.fromkeys(parses))  # usually one: the references missing from the cache
    if len(sources) == 1:
        found = _rows(sources[0], row, vocab)
    else:
        number = {parse: k for k, parse in enumerate(sources)}
        which = np.fromiter(map(number.__getitem__, parses), np.int64, len(parses))
        parts = [_rows(parse, row[which == k], vocab) for k, parse in enumerate(sources)]
        found = _concat(parts).take(np.argsort(np.argsort(which, kind="stable")))
    owner, local = segments(found.label_count[index])
    return References(
        boxes=FlatBoxes.build(found.boxes, offsets(found.box_count)[index], found.box_count[index]),
        n_blocks=found.n_blocks[index],
        labels=found.labels[offsets(found.label_count)[index][owner] + local],
        label_count=found.label_count[index],
    )


def _concat(parts: list[_Rows]) -> _Rows:
    empty = np.zeros(0, dtype=np.int64)
    return _Rows(
        np.concatenate([p.boxes for p in parts] + [np.zeros((0, 4))]),
        np.concatenate([p.box_count for p in parts] + [empty]),
        np.concatenate([p.n_blocks for p in parts] + [empty]),
        np.concatenate([p.labels for p in parts] + [empty]),
        np.concatenate([p.label_count for p in parts] + [empty]),
    )
