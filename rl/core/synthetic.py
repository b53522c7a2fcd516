"""The seeded synthetic grounding data of the CPU demo and the tests: images of coloured shapes, one class
each, and their answers, written as a dataset folder the loader (rl/core/data.py) reads like any other."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from rl.core.atomic import atomic_dir, replace_dir
from rl.core.config import DataConfig
from rl.core.data import format_answer, split_path

CLASSES: tuple[str, ...] = ("Nodule", "Mass", "Fracture", "Lesion")
SPLITS: tuple[str, ...] = ("train", "val", "test")
BACKGROUND: tuple[int, int, int] = (32, 32, 32)
# Each class gets its own colour and shape, so a tiny model can tell them apart from 16 image tokens.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 60, 60), (60, 110, 235), (70, 200, 90), (235, 205, 50),
    (200, 80, 220), (60, 210, 215), (245, 140, 40), (235, 235, 235),
)
SHAPES: tuple[str, ...] = ("ellipse", "rectangle", "cross", "diamond")
GENERATOR_VERSION = 2  # bump when the drawing changes, so cached datasets are regenerated
MANIFEST = "manifest.json"
_MIN_SIDE, _MAX_SIDE = 0.12, 0.40  # object size as a fraction of the image side
_MAX_IOU, _MIN_VISIBLE = 0.3, 0.6  # overlap allowed between objects; share of each one left visible
# The synthetic rows' prompt: the tiny model learns the answer format and frame from SFT's answers, not from an
# instruction, and DEFAULT_PROMPT's instruction was a third of each training sequence's tokens; the steps it
# cost buy more SFT steps instead (docs/sft.md). Converted real data keeps make_prompt's instruction.
SYNTHETIC_PROMPT = "Find every finding."


def palette(classes: Sequence[str] = CLASSES) -> dict[str, tuple[int, int, int]]:
    """Label -> RGB colour used by the generator (distinct per class, never the background)."""
    if not 0 < len(classes) <= len(PALETTE) or len(set(classes)) != len(classes):
        raise ValueError(f"need 1..{len(PALETTE)} distinct classes, got {list(classes)}")
    return {label: PALETTE[i] for i, label in enumerate(classes)}


def _shape_mask(shape: str, h: int, w: int) -> np.ndarray:
    # Pixel centres in [-1, 1]; exact boolean masks, no antialiasing, so pixel checks are exact.
    dy = np.abs((np.arange(h) + 0.5) / h * 2 - 1)[:, None]
    dx = np.abs((np.arange(w) + 0.5) / w * 2 - 1)[None, :]
    if shape == "ellipse":
        return dx**2 + dy**2 <= 1
    if shape == "rectangle":
        return np.ones((h, w), dtype=bool)
    if shape == "cross":
        return (dx <= 0.3) | (dy <= 0.3)
    return dx + dy <= 1  # diamond


def _iou(a: Sequence[int], b: Sequence[int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _place_objects(rng: np.random.Generator, size: int, min_objects: int, max_objects: int, n_classes: int,
                   ) -> tuple[np.ndarray, list[int]]:
    """Object-id map (-1 = background) and each object's class; later objects are drawn on top."""
    ids = np.full((size, size), -1, dtype=np.int16)
    placed: list[tuple[int, ...]] = []  # (x0, y0, x1, y1) placement boxes, pixel edges
    kinds: list[int] = []
    lo, hi = max(3, round(_MIN_SIDE * size)), max(3, round(_MAX_SIDE * size))
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        for _attempt in range(20):  # crowded images may end up with fewer objects than drawn
            kind = int(rng.integers(n_classes))
            w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            box = (x0, y0, x0 + w, y0 + h)
            if any(_iou(box, other) > _MAX_IOU for other in placed):
                continue
            trial = ids.copy()
            trial[y0:y0 + h, x0:x0 + w][_shape_mask(SHAPES[kind % len(SHAPES)], h, w)] = len(kinds)
            # Reject a placement that would hide most of an earlier object (IoU alone misses containment).
            if all((trial == i).sum() >= _MIN_VISIBLE * (ids == i).sum() for i in range(len(kinds))):
                ids, placed, kinds = trial, [*placed, box], [*kinds, kind]
                break
    return ids, kinds


def _to_frame(px: int, size: int, frame: int) -> int:
    return (2 * px * frame + size) // (2 * size)  # round(px / size * frame), halves up, exact integers


def synthetic_example(rng: np.random.Generator, *, image_size: int, max_objects: int,
                      classes: Sequence[str], frame: int, min_objects: int = 0) -> tuple[np.ndarray, str]:
    """One image (H, W, 3 uint8) and its answer; boxes are the visible pixels' bounding boxes."""
    colours = palette(classes)
    ids, kinds = _place_objects(rng, image_size, min_objects, max_objects, len(classes))
    pixels = np.empty((image_size, image_size, 3), dtype=np.uint8)
    pixels[:] = BACKGROUND
    objects = []
    for i, kind in enumerate(kinds):
        ys, xs = np.nonzero(ids == i)
        pixels[ys, xs] = colours[classes[kind]]
        box = [_to_frame(int(v), image_size, frame) for v in (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)]
        objects.append((kind, box[1], box[0], classes[kind], box))
    # Canonical order (class, then top-to-bottom, left-to-right) so the target text is predictable.
    objects.sort(key=lambda o: o[:3])
    return pixels, format_answer([(label, box) for *_, label, box in objects], (frame, frame))


def generate_synthetic(out_dir: Path, *, num_train: int, num_val: int, num_test: int, image_size: int = 128,
                       max_objects: int = 3, classes: Sequence[str] = CLASSES, frame: int = 1000,
                       seed: int = 0, min_objects: int = 0) -> dict[str, Path]:
    """Write {split}.jsonl + images/{split}/{i:06d}.png; a no-op if out_dir already holds this dataset."""
    out_dir = Path(out_dir)
    palette(classes)  # validate classes before any work
    if not 16 <= image_size <= frame or not 0 <= min_objects <= max_objects or min(num_train, num_val, num_test) < 0:
        # frame >= image_size keeps every 1-pixel-wide object at least one frame unit wide.
        raise ValueError(f"need 16 <= image_size <= frame, 0 <= min_objects <= max_objects and counts >= 0; got "
                         f"image_size={image_size}, frame={frame}, min_objects={min_objects}, "
                         f"max_objects={max_objects}")
    counts = {"train": num_train, "val": num_val, "test": num_test}
    params = {"generator_version": GENERATOR_VERSION, "counts": counts, "image_size": image_size,
              "min_objects": min_objects, "max_objects": max_objects, "classes": list(classes), "frame": frame,
              "seed": seed}
    paths = {split: out_dir / f"{split}.jsonl" for split in SPLITS}
    if _manifest(out_dir) == params:
        return paths
    if out_dir.exists() and any(out_dir.iterdir()) and _manifest(out_dir) is None:
        raise FileExistsError(f"{out_dir} is not empty and holds no {MANIFEST}; refusing to overwrite it")
    # The manifest goes in last, and the folder appears only by rename: a crash leaves no half dataset.
    with atomic_dir(out_dir, publish=lambda tmp, final: _publish(tmp, final, params)) as tmp:
        for split_index, split in enumerate(SPLITS):
            _write_split(tmp, split, split_index, counts[split], params)
        (tmp / MANIFEST).write_text(json.dumps(params, indent=1) + "\n", encoding="utf-8")
    return paths


def _write_split(root: Path, split: str, split_index: int, count: int, params: dict) -> None:
    image_dir = root / "images" / split
    image_dir.mkdir(parents=True)
    lines = []
    for i in range(count):
        # One generator per image: an image does not change when split sizes change.
        rng = np.random.default_rng([params["seed"], split_index, i])
        pixels, answer = synthetic_example(rng, image_size=params["image_size"], classes=params["classes"],
                                           min_objects=params["min_objects"], max_objects=params["max_objects"],
                                           frame=params["frame"])
        rel = f"images/{split}/{i:06d}.png"
        Image.fromarray(pixels).save(root / rel, format="PNG")
        lines.append(json.dumps({"image": rel, "prompt": SYNTHETIC_PROMPT, "answer": answer}))
    (root / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _manifest(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _publish(tmp: Path, out_dir: Path, params: dict) -> None:
    """Rename tmp to out_dir, replacing an older generated dataset; tolerate a concurrent writer."""
    if _manifest(out_dir) == params:
        return  # a concurrent writer already published the same dataset
    try:
        replace_dir(tmp, out_dir)
    except OSError:
        if _manifest(out_dir) != params:  # another process won the race with the same dataset: fine
            raise


def ensure_dataset(data: DataConfig) -> Path:
    """The dataset folder `data.path`, generated first when `data.synthetic` is configured."""
    root = Path(data.path)
    if data.synthetic is not None:
        s = data.synthetic
        generate_synthetic(root, num_train=s.num_train, num_val=s.num_val, num_test=s.num_test,
                           image_size=s.image_size, min_objects=s.min_objects, max_objects=s.max_objects,
                           frame=data.coord_frame, seed=s.seed)
    split_path(root, data.split, "data.split")
    return root
