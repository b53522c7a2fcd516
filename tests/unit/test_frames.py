"""One coordinate frame setting (`data.coord_frame`): relative 0-N or Qwen2.5-VL's resized-image pixels, the
same everywhere a box is read, scored or drawn. The same prediction scores the same in either frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rl.core.config import ConfigError, load_config
from rl.core.data import DatasetError, load_split
from rl.core.frames import CoordFrame, Resize, parse_frame, rescale
from rl.data import main
from rl.evaluate import grounding_metrics
from rl.visualize import REFERENCE, prediction_grid

# Resized by the Qwen2.5-VL rule with these bounds: a.png 1120x560 -> 560x280 (exactly half),
# b.png 333x517 -> 308x476 (odd: 0.925 x 0.921).
MIN_PIXELS, MAX_PIXELS = 28 * 28 * 4, 560 * 280
QWEN25 = parse_frame("qwen25_pixels", MIN_PIXELS, MAX_PIXELS)
SIZES = {"a.png": (1120, 560), "b.png": (333, 517)}
# Boxes in original pixels. On a.png x is a multiple of 28 and y of 14: whole numbers in both frames.
REFERENCES = {"a.png": [("cat", [28, 14, 280, 140]), ("cat", [560, 280, 1092, 546]), ("dog", [308, 84, 504, 224])],
              "b.png": [("cat", [17, 33, 151, 290]), ("dog", [200, 301, 330, 509])]}
PREDICTIONS = {"a.png": [("cat", [56, 14, 308, 168]), ("cat", [560, 252, 1232, 560]), ("bird", [0, 0, 112, 56])],
               "b.png": [("cat", [20, 30, 160, 280]), ("dog", [190, 280, 333, 517]), ("dog", [0, 0, 40, 40])]}


def _images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in SIZES.items():
        Image.new("RGB", size, (32, 32, 32)).save(folder / name)


def _convert_both(tmp_path: Path) -> dict[str, list]:
    """The pixel-box records converted into the 0-1000 frame and into qwen25 pixels, then loaded."""
    _images(tmp_path / "images")
    src = tmp_path / "boxes.jsonl"
    src.write_text("".join(json.dumps({"image": name, "label": label, "bbox": box}) + "\n"
                           for name, objects in REFERENCES.items() for label, box in objects))
    pixels = ["--frame", "qwen25_pixels", "--frame-min-pixels", MIN_PIXELS, "--frame-max-pixels", MAX_PIXELS]
    for name, extra in (("rel.jsonl", ["--frame", 1000]), ("px.jsonl", pixels)):
        argv = ["convert", "pixels", src, "--images", tmp_path / "images", "--out", tmp_path / name, *extra]
        assert main([str(a) for a in argv]) == 0
    return {"1000": load_split(tmp_path / "rel.jsonl", frame=1000).rows,
            "qwen25": load_split(tmp_path / "px.jsonl", frame=QWEN25).rows}


def _predictions(rows: list) -> list[str]:
    """The same predicted boxes (original pixels) as a model answering in the rows' frame writes them: whole
    numbers, one box list per label; a box may reach past the image (a.png's second cat)."""
    out = []
    for row in rows:
        groups: dict[str, list[str]] = {}
        for label, box in PREDICTIONS[row.image.name]:
            coords = [int(np.floor(v + 0.5)) for v in rescale(box, SIZES[row.image.name], row.extent)]
            groups.setdefault(label, []).append(str(coords))
        out.append(" ".join(f"{label} <box>[{', '.join(boxes)}]</box>" for label, boxes in groups.items()))
    return out


def _metrics(rows: list) -> dict[str, float]:
    return grounding_metrics(_predictions(rows), [r.answer for r in rows], extents=[r.extent for r in rows])


def test_convert_writes_resized_pixels_and_rows_carry_each_images_extent(tmp_path):
    rows = _convert_both(tmp_path)
    assert [r.extent for r in rows["1000"]] == [(1000, 1000), (1000, 1000)]
    assert [r.extent for r in rows["qwen25"]] == [(560, 280), (308, 476)]
    # a.png is halved: [28, 14, 280, 140] -> [14, 7, 140, 70]; in 0-1000: 28 / 1120 * 1000 = 25, 14 / 560 = 25.
    assert rows["qwen25"][0].answer == "cat <box>[[14, 7, 140, 70], [280, 140, 546, 273]]</box> " \
                                       "dog <box>[[154, 42, 252, 112]]</box>"
    assert rows["1000"][0].answer == "cat <box>[[25, 25, 250, 250], [500, 500, 975, 975]]</box> " \
                                     "dog <box>[[275, 150, 450, 400]]</box>"
    assert rows["qwen25"][0].prompt.endswith("coordinates in pixels.")
    assert rows["1000"][0].prompt.endswith("coordinates 0-1000.")


def test_the_same_prediction_scores_the_same_in_either_frame(tmp_path):
    rows = _convert_both(tmp_path)
    # a.png: every number is whole in both frames, so every metric (rewards, IoU, AP, with a predicted box
    # reaching past the image clipped to it) is equal to the last bit of rounding.
    exact = {frame: _metrics(r[:1]) for frame, r in rows.items()}
    assert exact["1000"].keys() == exact["qwen25"].keys()
    for key, value in exact["1000"].items():
        assert exact["qwen25"][key] == pytest.approx(value, abs=1e-12), key
    assert 0 < exact["1000"]["ap50"] < 1 and 0 < exact["1000"]["reward/giou"] < 1  # not a trivial case
    # Both images: b.png's numbers round to whole frame units, differently in each frame, which moves IoUs by
    # under 1%: rewards and IoUs agree within that (AP, a step function of IoU at .5, .55, ..., can step).
    both = {frame: _metrics(r) for frame, r in rows.items()}
    continuous = [k for k in both["1000"] if k.startswith("reward/") or k in ("mean_iou_matched", "label_accuracy",
                                                                              "format_valid", "duplicate_rate")]
    assert len(continuous) > 6
    for key in continuous:
        assert both["qwen25"][key] == pytest.approx(both["1000"][key], abs=0.01), key


def test_a_pixel_box_up_to_the_resized_size_loads_and_one_beyond_is_rejected_naming_the_row(tmp_path):
    _images(tmp_path)
    split = tmp_path / "val.jsonl"
    good = {"image": "b.png", "prompt": "p", "answer": "cat <box>[[0, 0, 308, 476]]</box>"}
    wide = {"image": "b.png", "prompt": "p", "answer": "cat <box>[[0, 0, 309, 476]]</box>"}
    split.write_text(json.dumps(good) + "\n" + json.dumps(wide) + "\n")
    with pytest.raises(DatasetError) as err:
        load_split(split, frame=QWEN25)
    assert str(err.value) == (f"{split}:2: box [0, 0, 309, 476] outside 0..308 x 0..476 (data.coord_frame="
                              "qwen25_pixels: the 333x517 image as the processor resizes it, 308x476) (label 'cat')")
    loaded = load_split(split, frame=QWEN25, on_error="skip")
    assert [r.line for r in loaded.rows] == [1] and loaded.rows[0].extent == (308, 476)
    assert len(load_split(split, frame=1000).rows) == 2  # 309 is inside the relative 0-1000 frame


def test_the_gallery_draws_the_same_rectangle_in_both_frames(tmp_path):
    # 140x70 resizes to 112x56 (0.8): [35, 35, 105, 70] is [28, 28, 84, 56] there and [250, 500, 750, 1000] in 0-1000.
    frame = CoordFrame(None, Resize(28, 28 * 28, 112 * 56))
    assert frame.extent(140, 70) == (112, 56)
    Image.new("RGB", (140, 70), (0, 0, 0)).save(tmp_path / "c.png")
    relative = prediction_grid([tmp_path / "c.png"], ["No findings."], ["x <box>[[250, 500, 750, 1000]]</box>"],
                               [(1000, 1000)])
    pixels = prediction_grid([tmp_path / "c.png"], ["No findings."], ["x <box>[[28, 28, 84, 56]]</box>"],
                             [frame.extent(140, 70)])
    assert np.array_equal(np.asarray(relative), np.asarray(pixels))
    drawn = np.asarray(pixels)
    assert tuple(drawn[70, 140]) == REFERENCE  # the top edge at y = 35 x 2, midway along x 70..210
    assert tuple(drawn[40, 140]) == (0, 0, 0)


def test_the_frame_setting_is_validated_and_resizes_as_the_model_processor():
    cfg = load_config(None, ["data.coord_frame=qwen25_pixels", "data.synthetic=null",
                             f"model.min_pixels={MIN_PIXELS}", f"model.max_pixels={MAX_PIXELS}"])
    assert cfg.frame() == QWEN25 and cfg.frame().extent(333, 517) == (308, 476)
    assert load_config(None, ["data.coord_frame=500"]).frame() == CoordFrame(500)
    for bad in ("qwen3_pixels", "0", "-5", "true"):
        with pytest.raises(ConfigError, match=r"data.coord_frame: expected a positive integer N .* or "
                                              r"'qwen25_pixels' \(absolute pixels"):
            load_config(None, [f"data.coord_frame={bad}", "data.synthetic=null"])
    with pytest.raises(ConfigError, match="set data.synthetic=null and convert your data"):
        load_config(None, ["data.coord_frame=qwen25_pixels"])


def test_convert_refuses_a_frame_placeholder_in_a_pixel_frame_prompt(tmp_path, capsys):
    _images(tmp_path)
    src = tmp_path / "rec.jsonl"
    src.write_text(json.dumps({"image": "a.png", "normal_caption": "cat", "solution": [28, 14, 280, 140]}) + "\n")
    argv = ["convert", "refcoco", str(src), "--out", str(tmp_path / "out.jsonl"), "--frame", "qwen25_pixels",
            "--prompt", "Find {phrase}, coordinates 0-{frame}."]
    assert main(argv) == 1
    assert "{frame} has no one value in the qwen25_pixels frame" in capsys.readouterr().out
    assert main(argv[:-2]) == 0  # the default template: "... coordinates in pixels."
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert row["prompt"] == "Find cat in the image. Answer as: Label <box>[[x1, y1, x2, y2]]</box>, " \
                            "coordinates in pixels."
