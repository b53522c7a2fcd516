"""`score` and `score_batch`: every component and the weighted total.

`score_batch` is the trainer's hot path: the completions are parsed in one batched pass, each distinct
reference is parsed once and cached across calls (a GRPO batch repeats every reference group-size
times, and epochs repeat them again), and the geometry is vectorised over the whole batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from itertools import repeat

import numpy as np
from numpy.typing import ArrayLike

from rewards import components, grids
from rewards.batch import parse_batch
from rewards.components import FlatBoxes
from rewards.config import RewardConfig, resolve_extra
from rewards.references import reference_batch

_DEFAULT = RewardConfig()


def _check_texts(name: str, texts: Sequence[str]) -> list[str]:
    out = list(texts)
    if not all(map(isinstance, out, repeat(str))):
        k = next(k for k, text in enumerate(out) if not isinstance(text, str))
        raise TypeError(f"{name}[{k}] must be str, got {type(out[k]).__name__}")
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
    """Every component (and extra reward) per sample as float64 arrays, plus the weighted `total`."""
    config = config or _DEFAULT
    completions = _check_texts("completions", completions)
    references = _check_texts("references", references)
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions but {len(references)} references")
    size = len(completions)
    lengths_arr = _check_lengths(lengths, size)

    vocab: dict[str, int] = {}  # label ids shared by completions and references
    ref = reference_batch(references, vocab)
    pred = parse_batch(completions, vocab)
    pred_boxes = FlatBoxes.build(pred.boxes, pred.box_start, pred.box_count)
    out = {
        "label_accuracy": components.label_accuracy(
            pred.block_sample, pred.block_label, ref.labels, ref.label_count, len(vocab)
        ),
        "giou": grids.giou_reward(pred_boxes, ref.boxes, config.max_boxes),
        "tag_count": components.tag_count(ref.n_blocks, pred.n_blocks, pred.n_open, pred.n_close, pred.blocks_ok),
        "overlap_penalty": grids.overlap_penalty(pred_boxes, config.overlap_threshold, config.max_boxes),
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
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        # Kept, not raised: one bad sample must not end a days-long run. The GRPO trainer skips the
        # update of a step with a non-finite reward and stops after several in a row (rl/faults.py).
        warnings.warn(f"extra reward {path!r} returned {bad.size} non-finite values (first: sample {bad[0]})",
                      stacklevel=3)
    return values


def score(
    completion: str, reference: str, config: RewardConfig | None = None, length: int | None = None
) -> dict[str, float]:
    """`score_batch` of one sample, as plain floats. `length` (tokens) feeds the overlong penalty."""
    batch = score_batch([completion], [reference], config, None if length is None else [length])
    return {key: float(values[0]) for key, values in batch.items()}
