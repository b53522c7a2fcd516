"""Our COCO-style AP equals pycocotools' COCOeval, on hand-made and random answers."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from rl.ap import answer_boxes, answers_ap, coco_iou


def cocoeval(completions: list[str], references: list[str]) -> tuple[float, float, dict[str, float]]:
    """(AP@[.5:.95], AP@.5, per-class AP) from pycocotools, scores = minus the box's rank in its answer."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    refs = [answer_boxes(r) for r in references]
    labels = sorted({d.label for image in refs for d in image})
    cat = {label: i + 1 for i, label in enumerate(labels)}
    gt = {"images": [{"id": i + 1} for i in range(len(references))], "categories": [{"id": c} for c in cat.values()],
          "annotations": []}
    for i, image in enumerate(refs):
        for d in image:
            x1, y1, x2, y2 = d.box.tolist()
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i + 1, "category_id": cat[d.label],
                                      "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                      "iscrowd": 0})
    dets = [{"image_id": i + 1, "category_id": cat.get(d.label, 999), "score": d.score,
             "bbox": [d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]]}
            for i, c in enumerate(completions) for d in answer_boxes(c)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = gt
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # area "all", maxDets 100
    per_class = {label: float(precision[:, :, k].mean()) for label, k in zip(labels, range(len(labels)), strict=True)}
    return float(ev.stats[0]), float(ev.stats[1]), per_class


def assert_equal_to_pycocotools(completions: list[str], references: list[str]) -> None:
    ours = answers_ap(completions, references)
    ap, ap50, per_class = cocoeval(completions, references)
    assert ours.ap == pytest.approx(ap, abs=1e-12)
    assert ours.ap50 == pytest.approx(ap50, abs=1e-12)
    assert {k: v["ap"] for k, v in ours.per_class.items()} == pytest.approx(per_class, abs=1e-12)


def test_perfect_answers_score_one():
    refs = ["Nodule <box>[[10, 10, 100, 100], [200, 200, 300, 300]]</box> Mass <box>[[500, 500, 900, 900]]</box>"]
    result = answers_ap(refs, refs)
    assert (result.ap, result.ap50) == pytest.approx((1.0, 1.0), abs=1e-12)  # COCO's precision has a +eps
    assert result.per_class["nodule"] == pytest.approx({"ap": 1.0, "ap50": 1.0, "references": 2.0, "detections": 2.0})


def test_hand_made_cases_equal_pycocotools():
    refs = ["Nodule <box>[[0, 0, 100, 100], [200, 200, 300, 300]]</box> Mass <box>[[500, 500, 900, 900]]</box>",
            "Mass <box>[[0, 0, 400, 400]]</box>",
            "No findings.",
            "Lesion <box>[[100, 100, 200, 200]]</box>"]
    preds = ["Nodule <box>[[0, 0, 100, 80], [210, 200, 300, 300], [600, 600, 700, 700]]</box>",  # IoU .8, .9, FP
             "Mass <box>[[0, 0, 200, 400]]</box> Nodule <box>[[0, 0, 10, 10]]</box>",  # IoU exactly .5; FP class
             "Mass <box>[[1, 1, 50, 50]]</box>",  # FP on an image without findings
             "Fracture <box>[[100, 100, 200, 200]]</box>"]  # right box, wrong label: lesion AP 0
    result = answers_ap(preds, refs)
    assert result.per_class["lesion"]["ap"] == 0.0
    assert result.per_class["mass"]["ap50"] == pytest.approx(0.5, abs=0.01)  # 1 of 2 found, at rank 1
    assert "fracture" not in result.per_class  # no reference box: no AP, as in COCOeval
    assert_equal_to_pycocotools(preds, refs)


def test_ties_and_duplicates_equal_pycocotools():
    refs = ["Nodule <box>[[0, 0, 100, 100], [0, 0, 100, 100]]</box>", "Nodule <box>[[0, 0, 100, 100]]</box>"]
    preds = ["Nodule <box>[[0, 0, 100, 100], [0, 0, 100, 100], [0, 0, 100, 100]]</box>",
             "Nodule <box>[[0, 0, 50, 100]]</box> Nodule <box>[[0, 0, 100, 100]]</box>"]
    assert_equal_to_pycocotools(preds, refs)


def _random_answer(rng: np.random.Generator, labels: list[str], base: list[tuple[str, list[int]]] | None) -> str:
    groups: dict[str, list[str]] = {}
    for _ in range(rng.integers(0, 5)):
        if base and rng.random() < 0.6:  # a jittered copy of a reference box, often with its label
            label, box = base[rng.integers(len(base))]
            box = [int(np.clip(v + rng.integers(-40, 41), 0, 1000)) for v in box]
            label = label if rng.random() < 0.8 else labels[rng.integers(len(labels))]
        else:
            label = labels[rng.integers(len(labels))]
            x, y = rng.integers(0, 800, size=2)
            box = [int(x), int(y), int(x + rng.integers(5, 200)), int(y + rng.integers(5, 200))]
        if box[2] > box[0] and box[3] > box[1]:
            groups.setdefault(label, []).append(str(box))
    return " ".join(f"{k} <box>[{', '.join(v)}]</box>" for k, v in groups.items()) or "No findings."


@pytest.mark.parametrize("seed", range(6))
def test_random_cases_equal_pycocotools(seed: int):
    rng = np.random.default_rng(seed)
    labels = ["Nodule", "Mass", "Fracture"]
    refs, preds = [], []
    for _ in range(12):
        ref = _random_answer(rng, labels, None)
        refs.append(ref)
        base = [(d.label, d.box.astype(int).tolist()) for d in answer_boxes(ref)]
        preds.append(_random_answer(rng, labels, base))
    if not any(answer_boxes(p) for p in preds):
        preds[0] = refs[0]  # pycocotools cannot load an empty result list
    assert_equal_to_pycocotools(preds, refs)


def test_iou_matches_the_usual_formula():
    a = np.array([[0, 0, 10, 10]], dtype=float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30]], dtype=float)
    np.testing.assert_allclose(coco_iou(a, b), [[50 / 150, 0.0]])
