"""`score` and `score_batch`: every component and the weighted total.

`score_batch` is the trainer's hot path: the completions are parsed in one pass (Python only slices
strings), each distinct reference is parsed once and cached across calls (a GRPO batch repeats every
reference group-size times, and epochs repeat them again), and the geometry is vectorised over the
whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from rewards import components
from rewards.config import COMPONENTS, RewardConfig, resolve_extra
from rewards.parse import parse_batch

_DEFAULT = RewardConfig()
_CACHE_LIMIT = 200_000  # references kept; the cache is simply dropped when full


@dataclass(frozen=True)
class _Reference:
    labels: frozenset[str]
    boxes: np.ndarray  # (K, 4) valid boxes
    n_blocks: int


_REFERENCES: dict[str, _Reference] = {}


def clear_reference_cache() -> None:
    """Forget cached reference parses (benchmarks time cold parses with it)."""
    _REFERENCES.clear()


def _parse_references(texts: list[str]) -> list[_Reference]:
    """Parse of each distinct reference text, from the cache or one batched parse of the misses."""
    missing = [t for t in texts if t not in _REFERENCES]
    if missing:
        if len(_REFERENCES) + len(missing) > _CACHE_LIMIT:
            _REFERENCES.clear()
        parsed = parse_batch(missing)
        start = parsed.box_start
        for s, text in enumerate(missing):
            boxes = parsed.boxes[start[s] : start[s] + parsed.box_count[s]].copy()
            _REFERENCES[text] = _Reference(frozenset(parsed.labels[s]), boxes, int(parsed.n_blocks[s]))
    return [_REFERENCES[t] for t in texts]


def _check_texts(name: str, texts: Sequence[str]) -> list[str]:
    out = list(texts)
    for k, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{k}] must be str, got {type(text).__name__}")
    return out


def _check_lengths(lengths: ArrayLike | None, size: int) -> np.ndarray | None:
    if lengths is None:
        return None
    arr = np.asarray(lengths, dtype=np.float64).reshape(-1)
    if arr.shape != (size,) or not np.isfinite(arr).all():
        raise ValueError(f"lengths must be {size} finite token counts, got shape {np.shape(lengths)}")
    return arr


def score_batch(
    completions: Sequence[str],
    references: Sequence[str],
    config: RewardConfig | None = None,
    lengths: ArrayLike | None = None,
) -> dict[str, np.ndarray]:
    """Every component (and extras) per sample as float64 arrays, plus their weighted `total`."""
    config = config or _DEFAULT
    completions = _check_texts("completions", completions)
    references = _check_texts("references", references)
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions but {len(references)} references")
    size = len(completions)
    lengths_arr = _check_lengths(lengths, size)

    distinct: dict[str, int] = {}
    ref_index = np.fromiter((distinct.setdefault(r, len(distinct)) for r in references), np.int64, size)
    refs = _parse_references(list(distinct))
    ref_boxes = np.concatenate([r.boxes for r in refs]) if refs else np.zeros((0, 4))
    ref_count_u = np.fromiter((len(r.boxes) for r in refs), np.int64, len(refs))
    ref_start = (np.cumsum(ref_count_u) - ref_count_u)[ref_index]
    ref_count = ref_count_u[ref_index]
    ref_blocks = np.fromiter((r.n_blocks for r in refs), np.int64, len(refs))[ref_index]

    pred = parse_batch(completions)
    pred_start = pred.box_start
    out = {
        "label_accuracy": components.label_accuracy(pred.labels, [refs[i].labels for i in ref_index]),
        "giou": components.giou_reward(
            pred.boxes, pred_start, pred.box_count, ref_boxes, ref_start, ref_count, config.max_boxes
        ),
        "tag_count": components.tag_count(ref_blocks, pred.n_blocks, pred.n_open, pred.n_close, pred.blocks_ok),
        "overlap_penalty": components.overlap_penalty(
            pred.boxes, pred_start, pred.box_count, config.overlap_threshold, config.max_boxes
        ),
        "overlong_penalty": components.overlong_penalty(
            lengths_arr, config.overlong_max_tokens, config.overlong_buffer, size
        ),
    }
    for path in config.extra:
        out[path] = _extra(path, completions, references)
    total = np.zeros(size)
    for key, weight in config.weights().items():
        total += weight * out[key]
    out["total"] = total
    return out


def _extra(path: str, completions: list[str], references: list[str]) -> np.ndarray:
    fn = resolve_extra(path)
    values = np.fromiter((fn(c, r) for c, r in zip(completions, references, strict=True)), np.float64, len(completions))
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise ValueError(f"extra reward {path!r} returned a non-finite value for sample {bad}")
    return values


def score(
    completion: str, reference: str, config: RewardConfig | None = None, length: int | None = None
) -> dict[str, float]:
    """`score_batch` of one sample, as plain floats. `length` (tokens) feeds the overlong penalty."""
    batch = score_batch([completion], [reference], config, None if length is None else [length])
    return {key: float(values[0]) for key, values in batch.items()}


__all__ = ["COMPONENTS", "clear_reference_cache", "score", "score_batch"]
