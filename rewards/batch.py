"""`parse_batch`: parsing a whole batch of answers at once, the hot path of `score_batch`.

Most answers are *regular*: every `<` of the region starts a `<box>` whose content has the form models
write (`rewards.parse.FAST_SOURCE`: numbers only, `, ` or `,` between them), closed by `</box>`. The
whole batch is joined into one string (NUL-separated) and scanned with numpy on its UTF-8 bytes: the
`<` positions give every region's tags, the contents of the regions whose tags alternate are lexed
and converted together (`rewards.lexer`), and one `str.split("<")` yields the labels. No Python
loop per block. The other answers take the general path: a linear regex scan per answer and
per-content checks. Both are linear in the input.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat

import numpy as np

from rewards.contents import ContentBoxes, content_boxes
from rewards.lexer import lex_boxes, windows
from rewards.parse import ANSWER_OPEN, BOX_CLOSE, BOX_OPEN, answer_region, normalize_label, scan_blocks

_SEP = "\x00"  # joins answers; an answer containing it takes the general path
_LOW_BYTES = [np.uint64((1 << (8 * n)) - 1) for n in range(9)]  # masks of the first n bytes
_OPEN_KEY = np.uint64(int.from_bytes(BOX_OPEN.encode(), "little"))
_CLOSE_KEY = np.uint64(int.from_bytes(BOX_CLOSE.encode(), "little"))


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


def _label_ids(pieces: list[str], vocab: dict[str, int], clean=None) -> np.ndarray:  # noqa: ANN001
    """Vocabulary id (grown as needed) of each raw label's normalised form; computed once per text.

    `clean` (a str -> str function) first extracts the label from a raw piece."""
    ids = {}
    for raw in dict.fromkeys(pieces):
        ids[raw] = vocab.setdefault(normalize_label(clean(raw) if clean else raw), len(vocab))
    return np.fromiter(map(ids.__getitem__, pieces), np.int64, len(pieces))


def _assemble(
    n_blocks: np.ndarray, n_open: np.ndarray, n_close: np.ndarray, block_label: np.ndarray, found: ContentBoxes
) -> ParsedBatch:
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


def _label_text(piece: str) -> str:
    """The raw label in a piece of the batch split at '<': a region's first block has the region's
    text after the NUL that starts it, later blocks the text after the previous '</box>'."""
    _, sep, tail = piece.rpartition(_SEP)
    return tail if sep else piece[len(BOX_CLOSE) - 1 :]


def _regular_tags(data: np.ndarray, seps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(positions of every '<', their region, which open a block, regions whose tags all alternate).

    A region qualifies when its '<'s are, in order, `<box>`, `</box>`, `<box>`, ... ending with `</box>`.
    """
    lt = np.flatnonzero(data == ord("<"))
    size = len(seps) - 1
    region = np.searchsorted(seps, lt) - 1  # the NUL at seps[k] opens region k
    # The 8 bytes from each '<' as one integer (`lexer.windows`), its first 5 or 6 bytes compared.
    window = windows(np.concatenate([data, np.zeros(8, dtype=np.uint8)]))[lt]
    is_open = (window & _LOW_BYTES[len(BOX_OPEN)]) == _OPEN_KEY
    is_close = (window & _LOW_BYTES[len(BOX_CLOSE)]) == _CLOSE_KEY
    per_region = np.bincount(region, minlength=size)
    opening = (np.arange(len(lt)) - (np.cumsum(per_region) - per_region)[region]) % 2 == 0
    misfit = np.bincount(region[np.where(opening, ~is_open, ~is_close)], minlength=size)
    return lt, region, opening, (per_region % 2 == 0) & (misfit == 0)


def _parse_regular(regions: list[str], vocab: dict[str, int]) -> tuple[np.ndarray, ParsedBatch]:
    """(which regions are regular, the parse of those) from one numpy scan of the joined batch."""
    size = len(regions)
    if not size:
        return np.zeros(0, dtype=bool), _parse_general([], vocab)
    joined = _SEP + _SEP.join(regions) + _SEP
    # UTF-8 never puts an ASCII byte inside a multi-byte character, so the tags are found byte-wise.
    data = np.frombuffer(joined.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    seps = np.flatnonzero(data == 0)
    if len(seps) != size + 1:  # some answer contains the separator: a lone '<' makes it irregular
        joined = _SEP + _SEP.join("<" if _SEP in r else r for r in regions) + _SEP
        data = np.frombuffer(joined.encode("utf-8", "surrogatepass"), dtype=np.uint8)
        seps = np.flatnonzero(data == 0)
    lt, region, opening, tags_ok = _regular_tags(data, seps)
    opens = np.flatnonzero(opening & tags_ok[region])  # each followed by its '</box>'
    pieces = joined.split("<")  # piece k + 1 follows '<' number k
    lengths = lt[opens + 1] - lt[opens] - 1  # bytes of PREFIX + content
    text = "".join(map(pieces.__getitem__, (opens + 1).tolist()))
    lexed = lex_boxes(
        np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8), np.cumsum(lengths) - lengths
    )
    block_region = region[opens]
    regular = tags_ok & (np.bincount(block_region[~lexed.fast], minlength=size) == 0)
    mine = regular[block_region]  # blocks of regular regions (all their contents are fast)
    counts = lexed.per_content[mine]
    values = lexed.values[np.repeat(mine, lexed.per_content)]
    owner = np.repeat(np.arange(len(counts)), counts)
    valid = (values[:, 0] < values[:, 2]) & (values[:, 1] < values[:, 3])  # the lexer's are all finite
    bad = counts == 0  # an empty content: no box
    bad[owner[~valid]] = True  # a block with an invalid box is flawed
    n_blocks = np.bincount(block_region[mine], minlength=size)[regular].astype(np.int64)
    labels = _label_ids(list(map(pieces.__getitem__, opens[mine].tolist())), vocab, _label_text)
    found = ContentBoxes(values[valid], owner[valid], bad)
    return regular, _assemble(n_blocks, n_blocks, n_blocks, labels, found)


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
    return _assemble(n_blocks, n_open, n_close, _label_ids(labels, vocab), content_boxes(contents))


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
    regular, parsed = _parse_regular(regions, vocab)
    parts = [(np.flatnonzero(regular), parsed)]
    irregular = np.flatnonzero(~regular)
    if len(irregular):
        parts.append((irregular, _parse_general([regions[s] for s in irregular.tolist()], vocab)))
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
