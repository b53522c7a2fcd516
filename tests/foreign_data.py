"""Small datasets in foreign formats, written by the tests (nothing is downloaded): a COCO detection json
with its images, and a VLM-R1 REC jsonl whose boxes count pixels of the Qwen2.5-VL-resized image.

Each image is a dark background with filled rectangles exactly where the boxes say, so a model trained on
the converted rows can see what it is asked to find."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

from rl.core.frames import smart_resize

COLOURS = {"cat": (230, 60, 60), "dog": (60, 110, 235), "the red square": (230, 60, 60)}

# (file name, width, height, [(category, [x, y, w, h]) ...]): odd sizes, one image without objects, one
# category with two boxes in one image, and one crowd box.
COCO_IMAGES = [
    ("a.png", 131, 97, [("cat", [10.0, 12.0, 40.0, 30.0]), ("cat", [70.0, 50.0, 41.0, 39.0]),
                         ("dog", [60.0, 5.0, 50.0, 30.0])]),
    ("b.png", 64, 150, []),
    ("c.png", 100, 60, [("dog", [20.0, 10.0, 60.0, 40.0])]),
]
COCO_CROWD = ("c.png", "dog", [0.0, 0.0, 100.0, 60.0])
CATEGORIES = ["cat", "dog"]

# (file name, width, height, phrase, [x1, y1, x2, y2] in original pixels)
REC_IMAGES = [
    ("r1.png", 300, 201, "the red square", [30.0, 40.0, 150.0, 160.0]),
    ("r2.png", 173, 311, "the red square", [100.0, 200.0, 170.0, 300.0]),
]
REC_MIN_PIXELS, REC_MAX_PIXELS = 56 * 56, 200 * 200  # a small max_pixels, so that resizing matters


def _draw(path: Path, width: int, height: int, boxes: list[tuple[str, list[float]]]) -> None:
    image = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(image)
    for label, (x1, y1, x2, y2) in boxes:
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=COLOURS[label])
    image.save(path)


def write_coco(folder: Path) -> Path:
    """images/ and instances.json in the COCO layout (info, licenses, images, annotations, categories)."""
    (folder / "images").mkdir(parents=True)
    images, annotations = [], []
    for image_id, (name, width, height, objects) in enumerate(COCO_IMAGES, start=1):
        _draw(folder / "images" / name, width, height, [(c, [x, y, x + w, y + h]) for c, (x, y, w, h) in objects])
        images.append({"id": image_id, "file_name": name, "width": width, "height": height, "license": 1,
                       "date_captured": "2026-01-01 00:00:00"})
        for category, (x, y, w, h) in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": CATEGORIES.index(category) + 1, "bbox": [x, y, w, h], "area": w * h,
                                "iscrowd": 0, "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]})
    name, category, (x, y, w, h) = COCO_CROWD
    annotations.append({"id": len(annotations) + 1, "image_id": [i[0] for i in COCO_IMAGES].index(name) + 1,
                        "category_id": CATEGORIES.index(category) + 1, "bbox": [x, y, w, h], "area": w * h,
                        "iscrowd": 1, "segmentation": {"counts": [0, int(w * h)], "size": [int(h), int(w)]}})
    coco = {"info": {"description": "grounded-grpo test set", "version": "1.0", "year": 2026},
            "licenses": [{"id": 1, "name": "CC0", "url": ""}], "images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": c, "supercategory": "animal"} for i, c in enumerate(CATEGORIES)]}
    path = folder / "instances.json"
    path.write_text(json.dumps(coco), encoding="utf-8")
    return path


def resized_box(width: int, height: int, box: list[float]) -> list[int]:
    """The box in pixels of the image as Qwen2.5-VL's processor resizes it (REC_*_PIXELS), rounded as
    VLM-R1's data holds them."""
    h_bar, w_bar = smart_resize(height, width, min_pixels=REC_MIN_PIXELS, max_pixels=REC_MAX_PIXELS)
    sx, sy = w_bar / width, h_bar / height
    return [round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)]


def write_vlmr1(folder: Path) -> Path:
    """rec.jsonl in both VLM-R1 layouts (problem/solution and conversations), boxes in resized pixels."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (name, width, height, phrase, box) in enumerate(REC_IMAGES):
        _draw(folder / "images" / name, width, height, [(phrase, box)])
        resized = resized_box(width, height, box)
        question = f"<image>Please provide the bounding box coordinate of the region this sentence describes: {phrase}."
        if i % 2 == 0:
            lines.append({"id": i, "image": name, "problem": question.replace("<image>", ""), "solution": resized,
                          "normal_caption": phrase})
        else:
            lines.append({"id": i, "image": name, "conversations": [
                {"from": "human", "value": question},
                {"from": "gpt", "value": f"<answer>{json.dumps([{'bbox_2d': resized, 'label': phrase}])}</answer>"}]})
    path = folder / "rec.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


def converted_dataset(data: Path, coco_split: str, rec_split: str) -> Path:
    """`data` holding `{coco_split}.jsonl` and `{rec_split}.jsonl`: the COCO set and the VLM-R1 jsonl above,
    written there and converted by `python -m rl.data convert` (the REC boxes in Qwen2.5-VL-resized pixels)."""
    from rl.data import main as data_main

    coco, rec = write_coco(data / "coco"), write_vlmr1(data / "rec")
    assert data_main(["convert", "coco", str(coco), "--images", str(data / "coco" / "images"),
                      "--out", str(data / f"{coco_split}.jsonl")]) == 0
    assert data_main(["convert", "refcoco", str(rec), "--images", str(data / "rec" / "images"), "--out",
                      str(data / f"{rec_split}.jsonl"), "--pixel-frame", "qwen25-resized", "--min-pixels",
                      str(REC_MIN_PIXELS), "--max-pixels", str(REC_MAX_PIXELS)]) == 0
    return data
