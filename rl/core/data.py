"""Grounding data: a seeded synthetic generator and the JSONL loader that also reads user datasets.

A row is one JSON object per line: {"image": path, "prompt": str, "answer": str}. Image paths resolve
against the JSONL file's folder and must stay inside it (or inside `data.image_roots`). Answers name
boxes in the coordinate frame of `data.coord_frame` (rl/core/frames.py; Qwen3-VL: relative 0-1000):
"Nodule <box>[[x1, y1, x2, y2], ...]</box> Mass <box>[[...]]</box>", or "No findings." for none.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from rl.core.atomic import atomic_dir, replace_dir
from rl.core.config import Config, DataConfig
from rl.core.frames import CoordFrame, Extent, parse_frame

CLASSES: tuple[str, ...] = ("Nodule", "Mass", "Fracture", "Lesion")
NO_FINDINGS = "No findings."
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


def answer_instruction(frame: CoordFrame | int = 1000) -> str:
    """The default prompts' answer format, naming the frame ("coordinates 0-1000." / "coordinates in pixels.")."""
    return f"Answer as: Label <box>[[x1, y1, x2, y2]]</box>, coordinates {parse_frame(frame).prompt_hint()}."


def make_prompt(frame: CoordFrame | int = 1000) -> str:
    return f"Find every finding in the image. {answer_instruction(frame)}"


DEFAULT_PROMPT = make_prompt(1000)
# The synthetic rows' prompt: the tiny model learns the answer format and frame from SFT's answers, not from an
# instruction, and DEFAULT_PROMPT's instruction was a third of each training sequence's tokens; the steps it
# cost buy more SFT steps instead (docs/sft.md). Converted real data keeps make_prompt's instruction.
SYNTHETIC_PROMPT = "Find every finding."


class DatasetError(ValueError):
    """A bad dataset row or image; the message starts with "file:line: " (or "file: " for images)."""


@dataclass(frozen=True)
class GroundingRow:
    image: Path
    prompt: str
    answer: str
    source: Path  # the JSONL file and 1-based line this row came from, for error messages
    line: int
    extent: tuple[int, int]  # (w, h): the answer's boxes lie in [0, w] x [0, h] (its frame, for this image)


@dataclass(frozen=True)
class LoadedSplit:
    rows: list[GroundingRow]
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" for each skipped row


# ---------------------------------------------------------------- answer text

def format_answer(objects: Sequence[tuple[str, Sequence[float]]], extent: Extent) -> str:
    """Boxes (already in the frame, inside [0, w] x [0, h] of `extent`) as answer text, whole numbers,
    grouped by label in first-appearance order."""
    groups: dict[str, list[str]] = {}
    for label, box in objects:
        coords = [int(np.floor(float(v) + 0.5)) for v in box]
        if reason := _box_problem(coords, extent):
            raise ValueError(f"{label}: {reason}")
        groups.setdefault(label, []).append("[" + ", ".join(map(str, coords)) + "]")
    if not groups:
        return NO_FINDINGS
    return " ".join(f"{label} <box>[{', '.join(boxes)}]</box>" for label, boxes in groups.items())


# The label is taken greedily and stripped afterwards: a lazy label followed by \s* backtracks
# quadratically on a long run of spaces (a 1 MB answer would take minutes).
_GROUP = re.compile(r"([^<>\[\]]*)<box>(.*?)</box>", re.S)
_NON_SPACE = re.compile(r"\S")
_BOX_LIST = re.compile(r"\s*\[\s*\[[^\[\]]*\](?:\s*,\s*\[[^\[\]]*\])*\s*\]\s*")
_BOX = re.compile(r"\[([^\[\]]*)\]")
# Plain decimal numbers only: float() alone would also accept "nan", "inf" and "1_000".
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_reference_boxes(answer: str) -> list[tuple[str, list[list[float]]]]:
    """Strict parse of a reference answer; raises ValueError on anything but the exact grammar."""
    if answer.strip() == NO_FINDINGS:
        return []
    groups: list[tuple[str, list[list[float]]]] = []
    pos = 0
    while (rest := _NON_SPACE.search(answer, pos)) is not None:  # not answer[pos:]: quadratic in the groups
        m = _GROUP.match(answer, rest.start())
        label = m.group(1).strip() if m else ""
        if not label:
            raise ValueError(f"unparseable answer at {answer[rest.start():rest.start() + 40]!r}")
        if not _BOX_LIST.fullmatch(m.group(2)):
            raise ValueError(f"bad box list {m.group(2)[:80]!r} for {label!r}")
        boxes = []
        for inner in _BOX.findall(m.group(2)):
            items = [s.strip() for s in inner.split(",")]
            if not all(_NUMBER.fullmatch(s) for s in items):
                raise ValueError(f"non-numeric box [{inner}] for {label!r}")
            boxes.append([float(s) for s in items])
        groups.append((label, boxes))
        pos = m.end()
    if not groups:
        raise ValueError("empty answer")
    return groups


def _box_problem(box: Sequence[float], extent: Extent) -> str | None:
    shown = "[" + ", ".join(f"{v:g}" for v in box) + "]"  # 1001, not 1001.0, as the user wrote it
    if len(box) != 4:
        return f"box {shown} has {len(box)} numbers, need 4"
    x1, y1, x2, y2 = box
    width, height = extent
    if min(box) < 0 or max(x1, x2) > width or max(y1, y2) > height:
        return f"box {shown} outside 0..{width:g}" + ("" if width == height else f" x 0..{height:g}")
    if x2 <= x1:
        return f"box {shown} has x2 <= x1"
    if y2 <= y1:
        return f"box {shown} has y2 <= y1"
    return None


# ---------------------------------------------------------------- loading

def load_image(path: Path) -> Image.Image:
    """The image as RGB; DatasetError naming the path if it is missing or unreadable."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise DatasetError(f"{path}: image not found") from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DatasetError(f"{path}: unreadable image ({e})") from e


MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # larger images are bad rows (a 2 GB decode is a denial of service)
_MAX_PATH = 4096  # Linux's PATH_MAX: no file with a longer path can be opened
_MAX_REASON = 500  # characters of a reason kept: a 1 MB path must not make a 1 MB log line


def image_size(path: Path) -> tuple[int, int] | str:
    """(width, height) from the image header (PIL opens lazily, nothing is decoded), or why not."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        return f"image not found: {path}"
    except Exception as e:  # Pillow raises many types for broken files; all mean "unreadable"
        return f"unreadable image {path}: {type(e).__name__}: {e}"


def _image_problem(path: Path, max_pixels: int, decode: bool) -> str | None:
    try:
        if not path.is_file():  # raises for a name too long for the file system
            return f"image not found: {path}"
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                return f"image {path} has {im.width}x{im.height} pixels, more than the limit of {max_pixels}"
            im.verify()  # checks structure and checksums without decoding every pixel
        if decode:  # a truncated file can pass verify() (JPEG): decoding every pixel finds it
            with Image.open(path) as im:
                im.load()
    except Exception as e:  # Pillow raises many types for broken files; all mean "unreadable"
        return f"unreadable image {path}: {type(e).__name__}: {e}"
    return None


def path_problem(image: Path, written: str, roots: Sequence[Path]) -> str | None:
    """Why the image path may not be read: it resolves (after `..` and symlinks) outside every allowed folder.
    A dataset row must not make training read, feed to the model and log /etc/shadow or ~/.ssh/id_rsa."""
    if len(written) > _MAX_PATH:  # resolving 500,000 components one by one takes minutes
        return f"image path of {len(written)} characters, longer than the limit of {_MAX_PATH}"
    try:
        resolved = image.resolve()
    except (OSError, ValueError, RuntimeError) as e:  # NUL byte, symlink loop
        return f"bad image path {written!r}: {e}"
    if not any(resolved.is_relative_to(root) for root in roots):
        return f"image path escapes the dataset folder: {written}"
    return None


def _json_line(line: bytes) -> object:
    """The line's JSON value; ValueError with the reason for anything Python's parser chokes on."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e})") from None
    except RecursionError:
        raise ValueError("invalid JSON (nested too deeply)") from None
    except ValueError as e:  # the int() digit limit; the advice after ':' (sys.set_int_max_str_digits) is not ours
        raise ValueError(f"invalid JSON ({str(e).split(':')[0]})") from None


def _printable(reason: str) -> str:
    """The reason as a terminal or log may show it: control characters and lone surrogates (a JSON
    "\\udc80" decodes to one and cannot be printed as UTF-8) escaped, long text cut."""
    if len(reason) > _MAX_REASON:
        reason = f"{reason[:_MAX_REASON]}... ({len(reason)} characters)"
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in reason)


def _parse_row(line: bytes, folder: Path, roots: Sequence[Path], frame: CoordFrame, check_images: bool,
               max_pixels: int = MAX_IMAGE_PIXELS, decode: bool = False) -> GroundingRow | str:
    """The row, or the reason it is bad (source and line are filled in by the caller). `roots`: the
    resolved folders its image may lie in (the dataset folder and `data.image_roots`)."""
    try:
        obj = _json_line(line)
    except ValueError as e:
        return str(e)
    if not isinstance(obj, dict):
        return "row is not a JSON object"
    for key in ("image", "prompt", "answer"):
        if key not in obj:
            return f"missing key {key!r}"
        if not isinstance(obj[key], str):
            return f"key {key!r} must be a string, got {type(obj[key]).__name__}"
    if not obj["image"]:
        return "key 'image' is empty"
    try:
        groups = parse_reference_boxes(obj["answer"])
    except ValueError as e:
        return f"bad answer: {e}"
    image = folder / obj["image"]  # an absolute "image" replaces folder; path_problem then vets it
    if reason := path_problem(image, obj["image"], roots):
        return reason
    if check_images and (reason := _image_problem(image, max_pixels, decode)):
        return reason
    found = _row_extent(image, frame)
    if isinstance(found, str):
        return found
    extent, how = found
    for label, boxes in groups:
        for box in boxes:
            if reason := _box_problem(box, extent):
                return f"{reason}{how} (label {label!r})"
    return GroundingRow(image=image, prompt=obj["prompt"], answer=obj["answer"], source=Path(), line=0,
                        extent=extent)


def _row_extent(image: Path, frame: CoordFrame) -> tuple[tuple[int, int], str] | str:
    """The row's box range and how it came about (for messages): the frame's own, or for a per-image frame
    from the image's size (its header only); or why the image cannot say."""
    if not frame.per_image:
        return frame.extent(0, 0), ""
    size = image_size(image)
    if isinstance(size, str):
        return size
    extent = frame.extent(*size)
    return extent, (f" (data.coord_frame={frame.name}: the {size[0]}x{size[1]} image as the processor resizes "
                    f"it, {extent[0]}x{extent[1]})")


def load_split(path: Path, *, frame: CoordFrame | int = 1000, on_error: Literal["raise", "skip"] = "raise",
               check_images: bool = True, max_pixels: int = MAX_IMAGE_PIXELS, decode: bool = False,
               image_roots: Sequence[str | Path] = ()) -> LoadedSplit:
    """Read and validate a JSONL split. Bad rows raise DatasetError, or with on_error="skip" are counted.
    `decode`: decode every image fully (finds truncated JPEGs; `python -m rl.data check` does).
    `image_roots`: folders besides the file's own that image paths may resolve into (`data.image_roots`).
    `frame`: what box numbers mean (`Config.frame()`); a per-image frame reads every image's header."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path, frame = Path(path), parse_frame(frame)
    roots = [Path(root).resolve() for root in (path.parent, *image_roots)]
    rows: list[GroundingRow] = []
    skipped: list[str] = []
    # Bytes, decoded line by line: a line that is not UTF-8 is one bad row, not the end of the file.
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # tolerate a byte-order mark from Windows editors
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) are not rows
            result = _parse_row(line, path.parent, roots, frame, check_images, max_pixels, decode)
            if isinstance(result, GroundingRow):
                rows.append(dataclasses.replace(result, source=path, line=number))
            elif on_error == "raise":
                raise DatasetError(f"{path}:{number}: {_printable(result)}")
            else:
                skipped.append(f"{path}:{number}: {_printable(result)}")
    return LoadedSplit(rows=rows, skipped=skipped)


# ---------------------------------------------------------------- synthetic generation

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


# ---------------------------------------------------------------- wiring to the config and the model

def chat_messages(prompt: str) -> list[dict]:
    """The one chat layout for rollout, SFT and evaluation: a user turn holding the image, then the text."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]


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


def split_path(root: str | Path, name: str, key: str) -> Path:
    """The file of split `name` (`root/name.jsonl`); DatasetError naming the file and the config key `key`
    that chose it when it is not there."""
    path = Path(root) / f"{name}.jsonl"
    if not path.is_file():
        present = sorted(p.stem for p in Path(root).glob("*.jsonl")) if Path(root).is_dir() else []
        raise DatasetError(f"{path}: dataset split not found ({key}={name}; the folder holds "
                           f"{', '.join(present) or 'no .jsonl files'})")
    return path


def load_configured_split(cfg: Config, path: Path, on_error: Literal["raise", "skip"] | None = None) -> LoadedSplit:
    """The split file `path` read as `cfg` says: boxes in its frame (`Config.frame()`), image paths also under
    `data.image_roots`, bad rows per `data.on_error` unless `on_error` is given."""
    return load_split(path, frame=cfg.frame(), on_error=on_error or cfg.data.on_error,
                      image_roots=cfg.data.image_roots)


class PromptOrder:
    """The order in which training prompts are drawn: a fresh seeded permutation each epoch. Its state
    (epoch, cursor) goes into checkpoints, so a resumed run draws exactly the prompts it would have."""

    def __init__(self, num_rows: int, seed: int, epoch: int = 0, cursor: int = 0):
        if num_rows < 1:
            raise ValueError("no training rows to draw prompts from")
        self.num_rows, self.seed, self.epoch, self.cursor = num_rows, seed, epoch, cursor

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows)

    def take(self, count: int) -> list[int]:
        """The next `count` row indices, crossing into the next epoch when this one runs out."""
        out: list[int] = []
        while len(out) < count:
            perm = self._permutation()
            step = min(count - len(out), self.num_rows - self.cursor)
            out.extend(int(i) for i in perm[self.cursor: self.cursor + step])
            self.cursor += step
            if self.cursor == self.num_rows:
                self.epoch, self.cursor = self.epoch + 1, 0
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}
