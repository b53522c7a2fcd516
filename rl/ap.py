"""COCO-style average precision for grounded answers, in numpy (equal to pycocotools, checked by a test).

Answers carry no scores, so a box's confidence is its rank in the answer: the first box written is the
most confident. Per class (normalised label), detections of all images are ranked together (ties keep
image order, as pycocotools' stable sort does), matched greedily to unmatched references at each IoU
threshold, and precision is read at 101 recall points. AP@[.5:.95] averages the 10 thresholds;
classes without any reference box have no AP and are left out of the mean, as in COCOeval.

Why our own: COCOeval prints to stdout, wants COCO json dicts and ids, and is several times slower for
the handful of boxes per image we have; `tests/unit/test_ap.py` pins this to it on hand-made and random
cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rewards import parse_answer

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's .5:.05:.95, built as COCOeval builds it
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
MAX_DETS = 100  # per image and class, COCO's largest maxDets


@dataclass(frozen=True)
class Detection:
    label: str
    box: np.ndarray  # (4,) xyxy
    score: float


@dataclass(frozen=True)
class APResult:
    ap: float  # mean over classes of AP@[.5:.95]; nan when no class has a reference box
    ap50: float
    per_class: dict[str, dict[str, float]]  # label -> {"ap", "ap50", "references", "detections"}


def answer_boxes(text: str, extent: tuple[float, float] | None = None) -> list[Detection]:
    """Every valid box of an answer with its rank as confidence (first box: highest); boxes clipped to
    the image, [0, w] x [0, h] of its frame's `extent`, when given (outside it a box covers nothing more)."""
    upper = np.tile(np.asarray(extent, dtype=np.float64), 2) if extent is not None else None
    out: list[Detection] = []
    for label, boxes in parse_answer(text):
        for box in boxes:
            clipped = np.clip(box, 0.0, upper) if upper is not None else np.asarray(box, dtype=np.float64)
            out.append(Detection(label, clipped, -float(len(out))))
    return out


def coco_iou(dets: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """(D, G) IoU computed as pycocotools' bbIou does: from x, y, w, h, in float64, 0 for no overlap."""
    d = _xywh(dets)[:, None, :]
    g = _xywh(refs)[None, :, :]
    w = np.minimum(d[..., 0] + d[..., 2], g[..., 0] + g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 1] + d[..., 3], g[..., 1] + g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    union = d[..., 2] * d[..., 3] + g[..., 2] * g[..., 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def _xywh(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], np.maximum(b[:, 2] - b[:, 0], 0), np.maximum(b[:, 3] - b[:, 1], 0)], 1)


def match(ious: np.ndarray, thresholds: np.ndarray = IOU_THRESHOLDS) -> np.ndarray:
    """(T, D) bool: detection d (rows in score order) matched at threshold t. COCOeval's greedy rule:
    each detection takes the unmatched reference of highest IoU >= t (on equal IoU, the later one)."""
    num_d, num_g = ious.shape
    matched = np.zeros((len(thresholds), num_d), dtype=bool)
    for t, threshold in enumerate(thresholds):
        taken = np.zeros(num_g, dtype=bool)
        for d in range(num_d):
            best, m = min(threshold, 1 - 1e-10), -1
            for g in range(num_g):
                if not taken[g] and ious[d, g] >= best:
                    best, m = ious[d, g], g
            if m >= 0:
                taken[m], matched[t, d] = True, True
    return matched


def precision_at_recall(scores: np.ndarray, matched: np.ndarray, num_refs: int) -> np.ndarray:
    """(T, R) interpolated precision at the recall points, COCOeval's accumulate for one class."""
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(matched[:, order], axis=1, dtype=np.float64)
    fp = np.cumsum(~matched[:, order], axis=1, dtype=np.float64)
    out = np.zeros((matched.shape[0], len(RECALL_POINTS)))
    for t in range(matched.shape[0]):
        recall = tp[t] / num_refs
        precision = tp[t] / (tp[t] + fp[t] + np.spacing(1))
        precision = np.maximum.accumulate(precision[::-1])[::-1]  # precision envelope, from the right
        idx = np.searchsorted(recall, RECALL_POINTS, side="left")
        reached = idx < len(precision)
        out[t, reached] = precision[idx[reached]]
    return out


def average_precision(predictions: Sequence[Sequence[Detection]], references: Sequence[Sequence[Detection]]
                      ) -> APResult:
    """AP per class and its mean over classes, over images given as parallel lists of detections."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    labels = sorted({d.label for image in references for d in image})
    per_class = {label: _class_ap(label, predictions, references) for label in labels}
    aps = [v["ap"] for v in per_class.values()]
    ap50s = [v["ap50"] for v in per_class.values()]
    return APResult(ap=float(np.mean(aps)) if aps else float("nan"),
                    ap50=float(np.mean(ap50s)) if ap50s else float("nan"), per_class=per_class)


def _class_ap(label: str, predictions: Sequence[Sequence[Detection]],
              references: Sequence[Sequence[Detection]]) -> dict[str, float]:
    scores, matched, num_refs = [], [], 0
    for pred, ref in zip(predictions, references, strict=True):
        dets = sorted((d for d in pred if d.label == label), key=lambda d: -d.score)[:MAX_DETS]  # stable
        refs = [r.box for r in ref if r.label == label]
        num_refs += len(refs)
        if not dets:
            continue
        ious = coco_iou(np.array([d.box for d in dets]), np.array(refs)) if refs else np.zeros((len(dets), 0))
        scores.append([d.score for d in dets])
        matched.append(match(ious))
    all_scores = np.concatenate(scores) if scores else np.zeros(0)
    all_matched = np.concatenate(matched, axis=1) if matched else np.zeros((len(IOU_THRESHOLDS), 0), dtype=bool)
    precision = precision_at_recall(all_scores, all_matched, num_refs)
    return {"ap": float(precision.mean()), "ap50": float(precision[0].mean()),
            "references": float(num_refs), "detections": float(len(all_scores))}


def answers_ap(completions: Sequence[str], references: Sequence[str],
               extents: Sequence[tuple[float, float]] | None = None) -> APResult:
    """`average_precision` of answer texts against reference answer texts; `extents`: each answer's image
    in its frame (predictions are clipped to it)."""
    bounds = extents if extents is not None else [None] * len(completions)
    return average_precision([answer_boxes(c, e) for c, e in zip(completions, bounds, strict=True)],
                             [answer_boxes(r) for r in references])
