"""`python -m rl.data convert`: COCO, VLM-R1 REC/OVD and pixel-box data to our rows, in the right frame,
with every record that cannot be converted named and counted, and OUT never overwritten unasked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rewards import RewardConfig, score
from rl.core.data import format_answer, load_split, make_prompt, parse_reference_boxes
from rl.core.frames import CoordFrame, Resize, rescale, smart_resize
from rl.data import main
from tests.foreign_data import REC_IMAGES, REC_MAX_PIXELS, REC_MIN_PIXELS, resized_box, write_coco, write_vlmr1

SIZES = [(37, 1013), (1013, 37), (1, 500), (500, 1), (4000, 3), (3, 4000), (641, 479), (1999, 1001)]


def _convert(*argv: object) -> int:
    return main(["convert", *map(str, argv)])


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (32, 32, 32)).save(path)


# ---------------------------------------------------------------- frames


def test_smart_resize_matches_the_transformers_rule():
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference

    rng = np.random.default_rng(0)
    sizes = [(28, 28), (27, 29), (1080, 1920), (4000, 3000), (3000, 20), (56, 56), (10, 10)]
    sizes += [tuple(int(v) for v in rng.integers(20, 5000, size=2)) for _ in range(200)]
    for height, width in sizes:
        for lo, hi in ((56 * 56, 28 * 28 * 16384), (256 * 28 * 28, 1280 * 28 * 28), (64 * 64, 128 * 128)):
            if max(height, width) / min(height, width) <= 200:  # transformers refuses larger ratios
                assert smart_resize(height, width, 28, lo, hi) == reference(height, width, 28, lo, hi), (height, width)
    assert smart_resize(1, 500) == (28, 1260)  # beyond transformers' ratio limit the rule still holds


@pytest.mark.parametrize("resized", [False, True], ids=["original", "qwen25-resized"])
@pytest.mark.parametrize(("width", "height"), SIZES)
def test_pixel_frame_pixel_round_trip(width, height, resized):
    """Original pixels -> (the Qwen2.5-VL-resized image's pixels) -> the answer text's integers -> pixels:
    within one pixel wherever a frame unit is at most two pixels (sides up to 2000 in the 0-1000 frame),
    else within half a frame unit, the resolution the integer frame has."""
    frame, pixels = 1000, CoordFrame(None, Resize() if resized else None)
    grid_w, grid_h = pixels.extent(width, height)
    rng = np.random.default_rng([width, height])
    boxes = [[0, 0, width, height]]
    for _ in range(50):
        x1, x2 = sorted(rng.uniform(0, width, size=2))
        y1, y2 = sorted(rng.uniform(0, height, size=2))
        boxes.append([x1, y1, max(x2, x1 + width / 500), max(y2, y1 + height / 500)])
    for box in boxes:
        source = [box[0] * grid_w / width, box[1] * grid_h / height, box[2] * grid_w / width, box[3] * grid_h / height]
        answer = format_answer([("thing", rescale(source, (grid_w, grid_h), (frame, frame)))], (frame, frame))
        ((_, (written,)),) = parse_reference_boxes(answer)
        back = rescale(written, (frame, frame), (width, height))
        for axis, size in ((0, width), (1, height)):
            error = max(abs(back[axis] - box[axis]), abs(back[axis + 2] - box[axis + 2]))
            bound = max(1.0, size / frame / 2) + 1e-9
            assert error <= bound, (box, answer, back)
            assert size > 2 * frame or error <= 1 + 1e-9


# ---------------------------------------------------------------- COCO and VLM-R1, end to end


def test_coco_and_vlmr1_convert_check_and_score_perfectly(tmp_path, capsys):
    coco = write_coco(tmp_path / "coco")
    rec = write_vlmr1(tmp_path / "rec")
    out = tmp_path / "data"
    assert _convert("coco", coco, "--images", tmp_path / "coco" / "images", "--out", out / "coco.jsonl") == 0
    assert _convert("refcoco", rec, "--images", tmp_path / "rec" / "images", "--out", out / "rec.jsonl",
                    "--pixel-frame", "qwen25-resized", "--min-pixels", REC_MIN_PIXELS,
                    "--max-pixels", REC_MAX_PIXELS) == 0
    printed = capsys.readouterr().out
    assert "image id 3 (c.png): crowd annotation 5 (dog) left out (--crowd skip)" in printed
    assert "3 rows converted (1 without objects), 0 not converted, 0 box(es) clipped, 1 box(es) left out" in printed
    assert "images lie outside" in printed  # the images are not under OUT's folder: data.image_roots
    coco_rows = _rows(out / "coco.jsonl")
    assert [Path(r["image"]).name for r in coco_rows] == ["a.png", "b.png", "c.png"]
    assert {r["prompt"] for r in coco_rows} == {make_prompt(1000)}
    # a.png is 131x97: cat [10, 12, 40, 30] -> x 10/131*1000 = 76.3, y 12/97*1000 = 123.7 ...; both cats in one list
    assert coco_rows[0]["answer"] == ("cat <box>[[76, 124, 382, 433], [534, 515, 847, 918]]</box> "
                                      "dog <box>[[458, 52, 840, 361]]</box>")
    assert coco_rows[1]["answer"] == "No findings."
    assert coco_rows[2]["answer"] == "dog <box>[[200, 167, 800, 833]]</box>"
    rec_rows = _rows(out / "rec.jsonl")
    for row, (name, width, height, phrase, box) in zip(rec_rows, REC_IMAGES, strict=True):
        assert row["prompt"] == f"Find {phrase} in the image. Answer as: Label <box>[[x1, y1, x2, y2]]</box>, " \
                                "coordinates 0-1000."
        ((label, (written,)),) = parse_reference_boxes(row["answer"])
        assert label == phrase and Path(row["image"]).name == name
        # The resized boxes were rounded to whole resized pixels (up to ~0.9 original pixels here).
        assert np.abs(np.array(rescale(written, (1000, 1000), (width, height))) - box).max() <= 1.5
        assert resized_box(width, height, box) != [round(v) for v in box]  # the resize did change the numbers

    roots = ["--image-root", tmp_path / "coco" / "images", "--image-root", tmp_path / "rec" / "images"]
    assert main(["check", str(out / "coco.jsonl"), str(out / "rec.jsonl"), *map(str, roots)]) == 0
    assert capsys.readouterr().out.strip().endswith("5 rows, 0 bad")
    best = RewardConfig()
    maximum = best.label_accuracy + best.giou + best.tag_count  # no overlap penalty, no length penalty
    for row in coco_rows + rec_rows:
        scores = score(row["answer"], row["answer"], best)
        assert scores["total"] == pytest.approx(maximum), row
        assert scores["overlap_penalty"] == 0


def test_coco_rows_that_cannot_convert_are_named_and_counted(tmp_path, capsys):
    path = write_coco(tmp_path)
    data = json.loads(path.read_text())
    data["images"].append({"id": 9, "file_name": "missing.png", "width": 10, "height": 10})
    data["images"].append({"id": 10, "file_name": "../instances.json", "width": 10, "height": 10})
    data["annotations"][0]["bbox"] = [10, 12, "40", 30]  # a.png
    data["annotations"][3]["bbox"] = [90, 50, 20, 20]  # c.png is 100x60: reaches out to x 110, y 70
    data["annotations"].append({"id": 99, "image_id": 77, "category_id": 1, "bbox": [0, 0, 1, 1], "iscrowd": 0})
    path.write_text(json.dumps(data))
    out = tmp_path / "out" / "train.jsonl"
    assert _convert("coco", path, "--images", tmp_path / "images", "--out", out, "--crowd", "keep") == 0
    printed = capsys.readouterr().out
    assert f"{path}: image id 1 (a.png): annotation 1: bbox [10, 12, '40', 30] is not 4 numbers [x, y, w, h]" in printed
    assert f"{path}: image id 9 (missing.png): image not found: {tmp_path / 'images' / 'missing.png'}" in printed
    assert "image id 10 (../instances.json): image path escapes the dataset folder" in printed
    assert f"{path}: 1 annotation(s) name image_id 77, which is not in 'images'" in printed
    assert f"{path}: image id 3 (c.png): box [90, 50, 110, 70] clipped to [90, 50, 100, 60]" in printed
    assert "2 rows converted (1 without objects), 4 not converted, 1 box(es) clipped, 0 box(es) left out" in printed
    # --crowd keep: the crowd box covers all of c.png; the clipped dog box ends at the image's corner
    assert _rows(out)[1]["answer"] == "dog <box>[[0, 0, 1000, 1000], [900, 833, 1000, 1000]]</box>"

    again = tmp_path / "out" / "reject.jsonl"
    assert _convert("coco", path, "--images", tmp_path / "images", "--out", again, "--out-of-bounds", "reject") == 0
    assert "reaches outside the 100x60 image (--out-of-bounds reject) (label 'dog')" in capsys.readouterr().out
    assert len(_rows(again)) == 1  # only the negative b.png is left
    assert _convert("coco", path, "--images", tmp_path / "images", "--out", tmp_path / "s.jsonl", "--strict") == 1
    assert "wrote nothing" in capsys.readouterr().out and not (tmp_path / "s.jsonl").exists()


def test_coco_boxes_count_the_json_size_so_resized_image_copies_still_fit(tmp_path):
    path = write_coco(tmp_path)
    data = json.loads(path.read_text())
    Image.new("RGB", (50, 30), (32, 32, 32)).save(tmp_path / "images" / "c.png")  # a half-size copy of 100x60
    data["images"][1].pop("width")  # b.png: no width, the file's size is used
    path.write_text(json.dumps(data))
    assert _convert("coco", path, "--images", tmp_path / "images", "--out", tmp_path / "o.jsonl") == 0
    assert [r["answer"] for r in _rows(tmp_path / "o.jsonl")][1:] == ["No findings.",
                                                                      "dog <box>[[200, 167, 800, 833]]</box>"]


def test_out_is_never_overwritten_without_force(tmp_path, capsys):
    coco = write_coco(tmp_path)
    out = tmp_path / "train.jsonl"
    out.write_text("mine\n")
    assert _convert("coco", coco, "--images", tmp_path / "images", "--out", out) == 1
    assert out.read_text() == "mine\n" and "exists; pass --force" in capsys.readouterr().out
    assert _convert("coco", coco, "--images", tmp_path / "images", "--out", out, "--force") == 0
    assert len(_rows(out)) == 3 and not list(tmp_path.glob(".train.jsonl.tmp-*"))
    assert [r["image"] for r in _rows(out)] == ["images/a.png", "images/b.png", "images/c.png"]  # relative to OUT
    assert load_split(out).rows[0].image == tmp_path / "images" / "a.png"


def test_nothing_converted_exits_1_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "rec.jsonl"
    src.write_text('{"image": "x.png", "problem": "a cat", "solution": [0, 0, 1, 1]}\nnot json\n[1]\n')
    assert _convert("refcoco", src, "--out", tmp_path / "out.jsonl") == 1
    printed = capsys.readouterr().out
    assert f"{src}:1: image not found: {tmp_path / 'x.png'}" in printed
    assert f"{src}:2: invalid JSON" in printed and f"{src}:3: row is not a JSON object" in printed
    assert "0 rows converted (0 without objects), 3 not converted" in printed and not (tmp_path / "out.jsonl").exists()


# ---------------------------------------------------------------- VLM-R1 variants and generic pixel boxes


def test_vlmr1_ovd_rows_and_bad_solutions(tmp_path, capsys):
    _image(tmp_path / "img.png", 200, 100)
    ovd = json.dumps([{"bbox_2d": [10, 10, 50, 50], "label": "cup"}, {"bbox_2d": [100, 20, 180, 90], "label": "bowl"},
                      {"bbox_2d": [60, 10, 90, 40], "label": "cup"}])
    rows = [
        {"image": "img.png", "conversations": [{"from": "human", "value": "<image>Detect cup and bowl."},
                                               {"from": "gpt", "value": f"<answer>```json\n{ovd}\n```</answer>"}]},
        {"image": "img.png", "problem": "Detect a fork.", "solution": "<answer>[]</answer>"},
        {"image": "img.png", "problem": "the cup", "solution": "[10, 10, 50]"},
        {"image": "img.png", "problem": "a [weird] phrase", "solution": [10, 10, 50, 50]},
        {"image": ["a.png", "b.png"], "problem": "two", "solution": [0, 0, 1, 1]},
    ]
    src = tmp_path / "ovd.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _convert("refcoco", src, "--out", tmp_path / "out.jsonl", "--prompt", "{phrase}") == 0
    out = _rows(tmp_path / "out.jsonl")
    assert out[0] == {"image": "img.png", "prompt": "Detect cup and bowl",
                      "answer": "cup <box>[[50, 100, 250, 500], [300, 100, 450, 400]]</box> "
                                "bowl <box>[[500, 200, 900, 900]]</box>"}
    assert out[1]["answer"] == "No findings." and len(out) == 2
    printed = capsys.readouterr().out
    assert f"{src}:3: solution [10, 10, 50] is not a box of 4 numbers" in printed
    assert f"{src}:4: " in printed and "a [weird] phrase" in printed
    assert f"{src}:5: 'image' must be one path" in printed


def test_pixels_csv_xywh_and_jsonl_xyxy(tmp_path, capsys):
    _image(tmp_path / "im" / "p.png", 37, 1013)
    _image(tmp_path / "im" / "q.png", 50, 50)
    csv_src = tmp_path / "boxes.csv"
    csv_src.write_text("file,cls,x,y,w,h\np.png,mass,1,100,20,400\nq.png,,,,,\np.png,mass,0,0,37,10\n"
                       "q.png,nodule,1,2,x,4\n")
    assert _convert("pixels", csv_src, "--images", tmp_path / "im", "--out", tmp_path / "csv.jsonl", "--image-key",
                    "file", "--label-key", "cls", "--box-columns", "x,y,w,h", "--box-format", "xywh") == 0
    out = _rows(tmp_path / "csv.jsonl")
    assert out == [{"image": "im/p.png", "prompt": make_prompt(1000),
                    "answer": "mass <box>[[0, 0, 1000, 10], [27, 99, 568, 494]]</box>"}]
    printed = capsys.readouterr().out
    assert f"{csv_src}:5: box ['1', '2', 'x', '4'] is not 4 finite numbers (image q.png" in printed

    jsonl_src = tmp_path / "boxes.jsonl"
    jsonl_src.write_text('{"image": "q.png", "label": "nodule", "bbox": [5, 5, 45, 25]}\n{"image": "p.png"}\n')
    assert _convert("pixels", jsonl_src, "--images", tmp_path / "im", "--out", tmp_path / "j.jsonl",
                    "--frame", "100") == 0
    assert [r["answer"] for r in _rows(tmp_path / "j.jsonl")] == ["nodule <box>[[10, 10, 90, 50]]</box>",
                                                                   "No findings."]
    assert _rows(tmp_path / "j.jsonl")[0]["prompt"] == make_prompt(100)


def test_a_box_under_one_frame_unit_is_rejected_not_written_empty(tmp_path, capsys):
    _image(tmp_path / "wide.png", 4000, 3)
    src = tmp_path / "w.jsonl"
    src.write_text('{"image": "wide.png", "label": "line", "bbox": [100, 0, 101, 3]}\n')
    assert _convert("pixels", src, "--out", tmp_path / "o.jsonl") == 1
    assert "box [25, 0, 25, 1000] has x2 <= x1 in the 0-1000 frame" in capsys.readouterr().out
