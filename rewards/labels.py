"""Vocabulary ids of block labels: each distinct raw label is normalised once.

`block_label_ids` takes the labels of a whole batch as byte ranges of the joined text. A label of up
to 32 bytes is, with its length, exactly 4 little-endian words (bytes past its end masked off), so
equal labels are found without slicing them: the words are hashed to one uint64, equal hashes are
grouped by a sort, and every label is checked against its group's first one (a hash collision, which
64 bits make vanishingly rare, sends the batch to the per-label path). Only the first label of each
group is sliced out of the text and normalised. Longer labels (about 1 in 100) are sliced one by one.
"""

from __future__ import annotations

import numpy as np

from rewards.lexer import windows
from rewards.parse import normalize_label
from rewards.scan import Joined

_WORDS = 4
_KEY_BYTES = 8 * _WORDS  # labels up to this long are keyed exactly by their words and length
_LOW_BYTES = np.array([(1 << (8 * n)) - 1 for n in range(9)], dtype=np.uint64)  # the first n bytes
_WORD_STARTS = np.arange(0, _KEY_BYTES, 8)
_MIX = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93], dtype=np.uint64)
_MIX_LENGTH = np.uint64(0xFF51AFD7ED558CCD)


def label_ids(pieces: list[str], vocab: dict[str, int]) -> np.ndarray:
    """Vocabulary id (grown as needed) of each raw label's normalised form; computed once per text."""
    ids = {raw: vocab.setdefault(normalize_label(raw), len(vocab)) for raw in dict.fromkeys(pieces)}
    return np.fromiter(map(ids.__getitem__, pieces), np.int64, len(pieces))


def _words(joined: Joined, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """(N, 4) uint64: the first 32 bytes of each label, bytes past its end zeroed."""
    words = windows(joined.data, _KEY_BYTES)[start].view("<u8").reshape(-1, _WORDS)
    words &= _LOW_BYTES[np.clip(length[:, None] - _WORD_STARTS, 0, 8)]
    return words


def _groups(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group of each hash, first index of each group), groups numbered in increasing hash order."""
    order = np.argsort(hashes)
    ordered = hashes[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = ordered[1:] != ordered[:-1]
    group = np.empty(len(order), dtype=np.int64)
    group[order] = np.cumsum(new) - 1
    return group, np.minimum.reduceat(order, np.flatnonzero(new))


def block_label_ids(joined: Joined, start: np.ndarray, end: np.ndarray, vocab: dict[str, int]) -> np.ndarray:
    """Vocabulary id of the label in each byte range [start, end) of the joined text."""
    if len(start) == 0:
        return np.zeros(0, dtype=np.int64)
    length = end - start
    words = _words(joined, start, length)
    hashes = np.add.reduce(words * _MIX, axis=1) + length.astype(np.uint64) * _MIX_LENGTH
    group, first = _groups(hashes)
    mine = first[group]
    if not ((words[mine] == words).all() and (length[mine] == length).all()):  # a hash collision
        return label_ids(joined.slices(start, end), vocab)
    by_position = np.argsort(first)  # ids in order of first appearance
    names = joined.slices(start[first[by_position]], end[first[by_position]])
    group_ids = np.empty(len(first), dtype=np.int64)
    group_ids[by_position] = label_ids(names, vocab)
    ids = group_ids[group]
    long = np.flatnonzero(length > _KEY_BYTES)
    if len(long):
        ids[long] = label_ids(joined.slices(start[long], end[long]), vocab)
    return ids
