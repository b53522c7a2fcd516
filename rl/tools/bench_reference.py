"""A straightforward per-sample, pure-Python implementation of the reward contract (issue 4).

It reads like the contract: the regexes it quotes, `json.loads`, textbook IoU from areas, and a
textbook Hungarian algorithm. It is the baseline of `python -m rl.bench rewards` and the oracle the
tests cross-check `rewards.score_batch` against. It is not hardened against hostile input (the lazy
regex is quadratic on `"<box>" * n`, and coordinates near 1e154 overflow its areas, which raises
OracleDomainError): use it on realistic text.
"""

from __future__ import annotations

import json
import math
import re

from rewards.config import RewardConfig

ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.S)
BLOCK_RE = re.compile(r"<box>(.*?)</box>", re.S)
TAG_RE = re.compile(r"</?box>")
Box = tuple[float, float, float, float]
DEFAULT = RewardConfig()


def region(text: str) -> str:
    answers = ANSWER_RE.findall(text)
    return answers[-1] if answers else text


def normalize(label: str) -> str:
    return re.sub(r"\s+", " ", label.lower()).strip(" .,;:")


def to_box(candidate: object) -> Box | None:
    if not isinstance(candidate, list) or len(candidate) != 4:
        return None
    numbers = []
    for v in candidate:
        if isinstance(v, bool) or not isinstance(v, int | float):
            return None
        try:
            f = float(v)
        except OverflowError:
            return None
        if not math.isfinite(f):
            return None
        numbers.append(f)
    x1, y1, x2, y2 = numbers
    return (x1, y1, x2, y2) if x1 < x2 and y1 < y2 else None


def parse_boxes(content: str) -> tuple[list[Box], bool]:
    """(valid boxes, flawed) of one block."""
    try:
        value = json.loads(content)
    except (ValueError, RecursionError):
        return [], True
    if not isinstance(value, list):
        return [], True
    if value and all(isinstance(v, list) for v in value):
        candidates = value
    else:
        candidates = [value]
    boxes = []
    flawed = False
    for candidate in candidates:
        box = to_box(candidate)
        if box is None:
            flawed = True
        else:
            boxes.append(box)
    return boxes, flawed


def parse(text: str) -> tuple[str, list[tuple[str, list[Box], bool]]]:
    """(region, [(label, boxes, flawed) per block])."""
    r = region(text)
    blocks = []
    previous_end = 0
    for m in BLOCK_RE.finditer(r):
        boxes, flawed = parse_boxes(m.group(1))
        blocks.append((normalize(r[previous_end : m.start()]), boxes, flawed))
        previous_end = m.end()
    return r, blocks


def iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def giou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    enclosing = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    if union <= 0 or enclosing <= 0:
        return -1.0
    return inter / union - (enclosing - union) / enclosing


class OracleDomainError(ValueError):
    """The input is outside what this textbook implementation computes (float overflow)."""


def hungarian_max(weights: list[list[float]]) -> float:
    """Maximum sum of a one-to-one matching of min(n, m) pairs (Kuhn-Munkres with potentials)."""
    if not math.isfinite(sum(map(sum, weights))):
        raise OracleDomainError("non-finite weights (coordinates overflow the textbook formulas)")
    if len(weights) > len(weights[0]):
        weights = [list(col) for col in zip(*weights, strict=True)]
    n, m = len(weights), len(weights[0])
    u, v = [0.0] * (n + 1), [0.0] * (m + 1)
    owner, way = [0] * (m + 1), [0] * (m + 1)  # owner[j]: row matched to column j (1-based)
    for i in range(1, n + 1):
        owner[0], j0 = i, 0
        min_v, used = [math.inf] * (m + 1), [False] * (m + 1)
        while True:
            used[j0] = True
            i0, delta, j1 = owner[j0], math.inf, 0
            for j in range(1, m + 1):
                if not used[j]:
                    cur = -weights[i0 - 1][j - 1] - u[i0] - v[j]
                    if cur < min_v[j]:
                        min_v[j], way[j] = cur, j0
                    if min_v[j] < delta:
                        delta, j1 = min_v[j], j
            for j in range(m + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    min_v[j] -= delta
            j0 = j1
            if owner[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            owner[j0] = owner[j1]
            j0 = j1
    return sum(weights[owner[j] - 1][j - 1] for j in range(1, m + 1) if owner[j])


def label_accuracy(pred_blocks: list, ref_blocks: list) -> float:
    if not ref_blocks:
        return 1.0 if not pred_blocks else 0.0
    a = {label for label, _, _ in pred_blocks}
    b = {label for label, _, _ in ref_blocks}
    return len(a & b) / len(a | b)


def giou_reward(pred: list[Box], ref: list[Box], max_boxes: int) -> float:
    if not pred and not ref:
        return 1.0
    if not pred or not ref or len(pred) > max_boxes:
        return 0.0
    weights = [[(giou(p, g) + 1) / 2 for g in ref] for p in pred]
    return hungarian_max(weights) / max(len(pred), len(ref))


def tags_alternate(r: str) -> bool:
    tags = TAG_RE.findall(r)
    if not tags or len(tags) % 2:
        return False
    return all(tag == ("<box>" if k % 2 == 0 else "</box>") for k, tag in enumerate(tags))


def tag_count(r: str, pred_blocks: list, n: int) -> float:
    if n == 0:
        return 1.0 if "<box>" not in r and "</box>" not in r else 0.0
    checks = [
        r.count("<box>") == n,
        r.count("</box>") == n,
        tags_alternate(r),
        bool(pred_blocks) and all(boxes and not flawed for _, boxes, flawed in pred_blocks),
    ]
    return 0.25 * sum(checks)


def overlap_penalty(pred: list[Box], threshold: float, max_boxes: int) -> float:
    if len(pred) > max_boxes:
        return -1.0
    if len(pred) < 2:
        return 0.0
    ious = [iou(pred[i], pred[j]) for i in range(len(pred)) for j in range(i + 1, len(pred))]
    if not math.isfinite(sum(ious)):
        raise OracleDomainError("non-finite IoU (coordinates overflow the textbook formulas)")
    terms = [max(0.0, (value - threshold) / (1 - threshold)) for value in ious]
    return -sum(terms) / len(terms)


def overlong_penalty(length: int | None, max_tokens: int | None, buffer: int | None) -> float:
    if length is None or max_tokens is None:
        return 0.0
    buffer = buffer or 0
    if length <= max_tokens - buffer:
        return 0.0
    if length <= max_tokens:
        return (max_tokens - buffer - length) / buffer
    return -1.0


def reference_score(
    completion: str, reference: str, config: RewardConfig | None = None, length: int | None = None
) -> dict[str, float]:
    """Every component and the weighted total of one sample."""
    config = config or DEFAULT
    r, pred_blocks = parse(completion)
    _, ref_blocks = parse(reference)
    pred = [box for _, boxes, _ in pred_blocks for box in boxes]
    ref = [box for _, boxes, _ in ref_blocks for box in boxes]
    out = {
        "label_accuracy": label_accuracy(pred_blocks, ref_blocks),
        "giou": giou_reward(pred, ref, config.max_boxes),
        "tag_count": tag_count(r, pred_blocks, len(ref_blocks)),
        "overlap_penalty": overlap_penalty(pred, config.overlap_threshold, config.max_boxes),
        "overlong_penalty": overlong_penalty(length, config.overlong_max_tokens, config.overlong_buffer),
    }
    weights = config.weights()
    out["total"] = sum(weights[key] * value for key, value in out.items())
    return out
