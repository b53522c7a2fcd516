"""Foreign grounding datasets to our JSONL rows (`python -m rl.data convert FORMAT SRC --out OUT.jsonl`).

Formats: COCO detection json (`coco`), RefCOCO / VLM-R1 REC and OVD jsonl (`refcoco`), and jsonl or csv
with one pixel box per record (`pixels`). Boxes arrive in pixels, either of the original image or of the
image as a Qwen2.5-VL processor resized it (`smart_resize`), and leave in the frame of `--frame`
(rl/core/frames.py): relative 0..N (Qwen3-VL: x = x_pixel / width * 1000) or Qwen2.5-VL's resized-image pixels
(x = x_pixel / width * resized width). Every record that cannot be converted is named with its reason
and counted; nothing is dropped silently (docs/data.md, "Your own data").
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rl.core.atomic import temporary_sibling
from rl.core.data import (
    NO_FINDINGS,
    format_answer,
    image_size,
    parse_reference_boxes,
    path_problem,
)
from rl.core.frames import CoordFrame, rescale

FORMATS: tuple[str, ...] = ("coco", "refcoco", "pixels")
REC_PROMPT = "Find {phrase} in the image. Answer as: Label <box>[[x1, y1, x2, y2]]</box>, coordinates 0-{frame}."
# VLM-R1's REC question ("...this sentence describes: the man in red."): the phrase is what follows it.
_REC_QUESTION = re.compile(r"^.*?please provide the bounding box coordinates? of the region this sentence "
                           r"describes\s*:?\s*", re.I | re.S)
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$")


class ConvertError(ValueError):
    """The source as a whole cannot be read (not one bad record); the message names the file."""


# ---------------------------------------------------------------- one image to one row


ORIGINAL_PIXELS = CoordFrame(relative=None)  # the source boxes count pixels of the image file


@dataclass
class Options:
    images: Path  # the folder image paths in the source are relative to
    out_dir: Path  # OUT's folder: written image paths are relative to it when the image lies inside
    frame: CoordFrame = CoordFrame(1000)  # the frame written
    prompt: str = ""
    pixels: CoordFrame = ORIGINAL_PIXELS  # the frame the source's boxes count in: original or resized pixels
    clip: bool = True  # boxes reaching outside the image: clip them (True) or reject the record (False)


@dataclass
class Report:
    rows: list[dict] = field(default_factory=list)
    negatives: int = 0
    problems: list[str] = field(default_factory=list)  # "where: reason" per record not converted
    clipped: list[str] = field(default_factory=list)  # "where: box [..] clipped to [..]"
    notes: list[str] = field(default_factory=list)  # counted, deliberate leave-outs (COCO crowd boxes)


Obj = tuple[str, Sequence[float]]  # (label, xyxy box in source pixels)


def _box(values: object) -> list[float] | None:
    if not isinstance(values, list | tuple) or len(values) != 4:
        return None
    if not all(type(v) in (int, float) and math.isfinite(v) for v in values):  # bool is not a coordinate
        return None
    return [float(v) for v in values]


def _fit(box: list[float], width: int, height: int, clip: bool, clips: list[str]) -> list[float] | str:
    """The box inside the width x height grid (clipped when allowed, noted in `clips`), or why not."""
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        return f"box {_show(box)} has x2 <= x1 or y2 <= y1"
    inside = [min(max(x1, 0.0), float(width)), min(max(y1, 0.0), float(height)),
              min(max(x2, 0.0), float(width)), min(max(y2, 0.0), float(height))]
    if inside == box:
        return box
    if not clip:
        return f"box {_show(box)} reaches outside the {width}x{height} image (--out-of-bounds reject)"
    if inside[2] <= inside[0] or inside[3] <= inside[1]:
        return f"box {_show(box)} lies outside the {width}x{height} image"
    clips.append(f"box {_show(box)} clipped to {_show(inside)}")
    return inside


def _show(box: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"  # 110, not 110.0, as the source wrote it


def _image_ref(path: Path, opts: Options) -> str:
    """How OUT names the image: relative to OUT's folder when inside it, else absolute (then the folder
    must be listed in data.image_roots, which the summary says)."""
    resolved, out_dir = path.resolve(), opts.out_dir.resolve()
    return resolved.relative_to(out_dir).as_posix() if resolved.is_relative_to(out_dir) else str(resolved)


def build_row(written: str, prompt: str, objects: Sequence[Obj], opts: Options, where: str,
              report: Report, grid: tuple[int, int] | None = None) -> None:
    """Append the row of one image (and its clipped boxes) to the report, or the reason it has none.
    `grid`: (width, height) the boxes count pixels of, when the source says (else from the image)."""
    clips: list[str] = []
    row = _row(written, prompt, objects, opts, clips, grid)
    if isinstance(row, str):
        report.problems.append(f"{where}: {row}")
        return
    report.rows.append(row)
    report.negatives += row["answer"] == NO_FINDINGS
    report.clipped += [f"{where}: {clip}" for clip in clips]


def _row(written: str, prompt: str, objects: Sequence[Obj], opts: Options, clips: list[str],
         grid: tuple[int, int] | None) -> dict | str:
    image = opts.images / written
    if reason := path_problem(image, written, [opts.images.resolve()]):
        return f"{reason} (--images {opts.images})"
    size = image_size(image)
    if isinstance(size, str):
        return size
    width, height = grid or opts.pixels.extent(*size)
    target = opts.frame.extent(*size)  # the written frame of the image file the model will see
    framed = []
    for label, box in objects:
        fitted = _fit(list(box), width, height, opts.clip, clips)
        if isinstance(fitted, str):
            return f"{fitted} (label {label!r})"
        framed.append((label, rescale(fitted, (width, height), target)))
    # Canonical order, as the synthetic data: labels as the source lists them, then top-down, left-right.
    labels = list(dict.fromkeys(label for label, _ in framed))
    framed.sort(key=lambda o: (labels.index(o[0]), o[1][1], o[1][0]))
    try:
        answer = format_answer(framed, target)
        written_labels = [label for label, _ in parse_reference_boxes(answer)]
    except ValueError as e:  # a box under one frame unit wide after rounding, or a label with < > [ ]
        where = f"0-{opts.frame.relative}" if opts.frame.relative else f"{opts.frame.name} ({target[0]}x{target[1]})"
        return f"{e} in the {where} frame"
    if written_labels != labels:
        return f"labels {labels} cannot be written as answer labels"
    return {"image": _image_ref(image, opts), "prompt": prompt, "answer": answer}


# ---------------------------------------------------------------- COCO detection json


def convert_coco(src: Path, opts: Options, report: Report, crowd: str = "skip") -> None:
    """COCO detection json: one row per entry of `images`, its annotations grouped by category name,
    an image without annotations a negative. bbox is [x, y, width, height] in pixels of the entry's
    width x height (the file's size where those are missing).
    iscrowd=1 boxes (one box around a crowd) are left out and counted (`crowd="skip"`) or kept."""
    try:
        data = json.loads(src.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as e:
        raise ConvertError(f"{src}: not a readable COCO json ({e})") from e
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations",
                                                                                      "categories")):
        raise ConvertError(f"{src}: a COCO detection json needs lists 'images', 'annotations' and 'categories'")
    names = {c.get("id"): c.get("name") for c in data["categories"] if isinstance(c, dict)}
    by_image: dict[object, list[dict]] = {}
    for ann in data["annotations"]:
        key = ann.get("image_id") if isinstance(ann, dict) else None
        by_image.setdefault(key, []).append(ann)
    known = set()
    for img in data["images"]:
        if not isinstance(img, dict) or not isinstance(img.get("file_name"), str):
            report.problems.append(f"{src}: image entry {str(img)[:80]} has no string 'file_name'")
            continue
        known.add(img.get("id"))
        where = f"{src}: image id {img.get('id')} ({img['file_name']})"
        objects = _coco_objects(by_image.get(img.get("id"), []), names, crowd, where, report)
        if isinstance(objects, str):
            report.problems.append(f"{where}: {objects}")
        else:
            build_row(img["file_name"], opts.prompt, objects, opts, where, report, _coco_grid(img))
    for key, anns in by_image.items():
        if key not in known:
            report.problems.append(f"{src}: {len(anns)} annotation(s) name image_id {key!r}, which is not in 'images'")


def _coco_grid(img: dict) -> tuple[int, int] | None:
    """COCO boxes count pixels of the image's `width` x `height`: the frame stays right for a resized copy
    of the images. Without both, the image file's own size."""
    width, height = img.get("width"), img.get("height")
    ok = all(type(v) in (int, float) and math.isfinite(v) and v > 0 for v in (width, height))
    return (width, height) if ok else None


def _coco_objects(anns: list[dict], names: dict, crowd: str, where: str, report: Report) -> list[Obj] | str:
    objects = []
    for ann in anns:
        box, name = _box(ann.get("bbox")), names.get(ann.get("category_id"))
        if box is None:
            return f"annotation {ann.get('id')}: bbox {ann.get('bbox')!r} is not 4 numbers [x, y, w, h]"
        if not isinstance(name, str) or not name.strip():
            return f"annotation {ann.get('id')}: category_id {ann.get('category_id')!r} has no name in 'categories'"
        if ann.get("iscrowd") and crowd == "skip":
            report.notes.append(f"{where}: crowd annotation {ann.get('id')} ({name}) left out (--crowd skip)")
            continue
        x, y, w, h = box
        objects.append((name.strip(), [x, y, x + w, y + h]))
    return objects


# ---------------------------------------------------------------- RefCOCO / VLM-R1 REC and OVD jsonl


def convert_rec(src: Path, opts: Options, report: Report) -> None:
    """VLM-R1 jsonl rows: {"image", "problem", "solution"} (REC json: solution [x1, y1, x2, y2]) or
    {"image", "conversations": [human question, gpt answer]}; the answer may be a box, or OVD's list of
    {"bbox_2d", "label"}, inside <answer> tags or a ```json fence. The phrase (`normal_caption`, else the
    question after VLM-R1's "...this sentence describes:") is the label of a bare box and fills {phrase}
    of the prompt template."""
    for number, text in _lines(src):
        where = f"{src}:{number}"
        parsed = _rec_record(text)
        if isinstance(parsed, str):
            report.problems.append(f"{where}: {parsed}")
            continue
        image, phrase, objects = parsed
        build_row(image, opts.prompt.format(phrase=phrase, frame=opts.frame.name), objects, opts, where, report)


def _lines(src: Path) -> Iterator[tuple[int, str]]:
    try:
        with src.open(encoding="utf-8-sig") as f:
            yield from ((n, t) for n, t in enumerate(f, start=1) if t.strip())
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"{src}: cannot read ({e})") from e


def _rec_record(text: str) -> tuple[str, str, list[Obj]] | str:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return f"invalid JSON ({e})"
    if not isinstance(obj, dict):
        return "row is not a JSON object"
    image = obj.get("image")
    if isinstance(image, list) and len(image) == 1:
        image = image[0]
    if not isinstance(image, str) or not image:
        return f"'image' must be one path, got {str(image)[:80]}"
    if "solution" in obj:
        question, solution = obj.get("problem", ""), obj["solution"]
    else:
        turns = obj.get("conversations")
        if not (isinstance(turns, list) and len(turns) >= 2 and all(isinstance(t, dict) for t in turns[:2])):
            return "neither 'solution' nor a 'conversations' list of two turns"
        question, solution = turns[0].get("value", ""), turns[1].get("value", "")
    phrase = obj.get("normal_caption") or _REC_QUESTION.sub("", str(question).replace("<image>", ""))
    phrase = phrase.strip().rstrip(".").strip() if isinstance(phrase, str) else ""
    if not phrase:
        return "no phrase: 'normal_caption' and the question are empty"
    objects = _rec_objects(solution, phrase)
    return (image, phrase, objects) if isinstance(objects, list) else objects


def _rec_objects(solution: object, phrase: str) -> list[Obj] | str:
    if isinstance(solution, str):
        inner = solution.replace("<answer>", "").replace("</answer>", "").strip()
        try:
            solution = json.loads(_FENCE.sub("", inner))
        except json.JSONDecodeError:
            return f"solution {inner[:80]!r} is neither a box nor a JSON list of boxes"
    if (box := _box(solution)) is not None:
        return [(phrase, box)]
    items = solution if isinstance(solution, list) else [solution]
    if items and all(type(v) in (int, float) for v in items):
        return f"solution {solution} is not a box of 4 numbers"
    objects = []
    for item in items:
        box = _box(item.get("bbox_2d")) if isinstance(item, dict) else None
        if box is None:
            return f"solution item {str(item)[:80]} has no 'bbox_2d' of 4 numbers"
        label = item.get("label", phrase)
        if not isinstance(label, str) or not label.strip():
            return f"solution item {str(item)[:80]} has an empty label"
        objects.append((label.strip(), box))
    return objects


# ---------------------------------------------------------------- generic pixel boxes (jsonl or csv)


@dataclass(frozen=True)
class PixelKeys:
    image: str = "image"
    label: str = "label"
    box: str = "bbox"  # jsonl: a list of 4 numbers
    columns: tuple[str, ...] = ("x1", "y1", "x2", "y2")  # csv: the 4 columns
    xywh: bool = False


def convert_pixels(src: Path, opts: Options, report: Report, keys: PixelKeys) -> None:
    """One record per box ({image, label, box}); the records of one image become one row, in file order.
    A record with an image and no label and no box marks an image without objects (a negative)."""
    groups: dict[str, list[tuple[str, Obj | str | None]]] = {}  # image -> its records (where, object)
    for where, record in _pixel_records(src, keys):
        if isinstance(record, str):
            report.problems.append(f"{where}: {record}")
        else:
            groups.setdefault(record[0], []).append((where, record[1]))
    for image, records in groups.items():
        first = records[0][0]
        if bad := next(((w, o) for w, o in records if isinstance(o, str)), None):
            report.problems.append(f"{bad[0]}: {bad[1]} (image {image}, first record {first}: the image is left out)")
        else:
            build_row(image, opts.prompt, [o for _, o in records if o is not None], opts, first, report)


def _pixel_records(src: Path, keys: PixelKeys) -> Iterator[tuple[str, tuple[str, Obj | str | None] | str]]:
    """(file:line, (image, (label, xyxy box) | None for a negative | reason)) or (file:line, reason)."""
    if src.suffix.lower() == ".csv":
        try:
            with src.open(encoding="utf-8-sig", newline="") as f:
                reader = csv.DictReader(f)
                missing = [k for k in (keys.image, keys.label, *keys.columns) if k not in (reader.fieldnames or [])]
                if missing:
                    raise ConvertError(f"{src}: csv header {reader.fieldnames} lacks column(s) {missing}")
                for row in reader:
                    values = [row[c].strip() if row[c] else "" for c in keys.columns]
                    box: object = None if not any(values) else _csv_numbers(values)
                    where = f"{src}:{reader.line_num}"
                    if not row[keys.image]:
                        yield where, f"empty {keys.image!r}"
                    else:
                        yield where, (row[keys.image], _pixel_object(row[keys.label], box, keys))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise ConvertError(f"{src}: cannot read ({e})") from e
        return
    for number, text in _lines(src):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield f"{src}:{number}", f"invalid JSON ({e})"
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get(keys.image), str) or not obj[keys.image]:
            yield f"{src}:{number}", f"not an object with a non-empty string {keys.image!r}"
            continue
        yield f"{src}:{number}", (obj[keys.image], _pixel_object(obj.get(keys.label), obj.get(keys.box), keys))


def _csv_numbers(values: list[str]) -> list[float] | list[str]:
    try:
        return [float(v) for v in values]
    except ValueError:
        return values  # _box rejects it, naming the text


def _pixel_object(label: object, box: object, keys: PixelKeys) -> Obj | str | None:
    if box is None and not label:
        return None
    numbers = _box(box)
    if numbers is None:
        return f"box {box!r} is not 4 finite numbers"
    if not isinstance(label, str) or not label.strip():
        return f"empty {keys.label!r} for box {numbers}"
    if keys.xywh:
        x, y, w, h = numbers
        numbers = [x, y, x + w, y + h]
    return label.strip(), numbers


# ---------------------------------------------------------------- writing OUT


def write_jsonl(rows: Sequence[dict], out: Path, force: bool) -> None:
    """Write rows to a temporary sibling, then publish it: by a hard link that fails when OUT exists
    (nothing the user owns is overwritten), or with --force by an atomic rename over it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(out)
    try:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        if force:
            os.replace(tmp, out)
        else:
            os.link(tmp, out)  # FileExistsError if OUT appeared meanwhile
    finally:
        tmp.unlink(missing_ok=True)
