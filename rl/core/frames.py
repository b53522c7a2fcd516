"""Coordinate frames: what the four numbers of a box mean (docs/data.md, "Coordinates").

- relative N (`data.coord_frame: 1000`, Qwen3-VL): both axes run 0..N whatever the image's size;
- `qwen25_pixels` (Qwen2.5-VL): absolute pixels of the image as the Qwen2.5-VL processor resizes it
  (`smart_resize` with `model.min_pixels` / `model.max_pixels`), so each image has its own extent.
- original pixels (what datasets ship; `rl.core.convert` reads them): pixels of the image file itself.

Moving a box between frames scales each axis, and IoU / GIoU of axis-aligned boxes do not change under
that: rewards and metrics compare boxes of one frame and need no frame (rewards/ stays frame-free).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass

# Qwen2.5-VL's image processor: 14-pixel patches merged 2x2, so resized sides are multiples of 28 in every
# Qwen2.5-VL checkpoint; the pixel bounds are its preprocessor_config.json defaults (and VLM-R1's).
QWEN25_PATCH_SIZE, QWEN25_MERGE_SIZE = 14, 2
QWEN25_FACTOR = QWEN25_PATCH_SIZE * QWEN25_MERGE_SIZE
QWEN25_MIN_PIXELS, QWEN25_MAX_PIXELS = 56 * 56, 28 * 28 * 16384
QWEN25_PIXELS = "qwen25_pixels"  # the data.coord_frame value of Qwen2.5-VL's absolute frame
FRAME_HELP = (f"a positive integer N (relative: boxes in 0..N on both axes; Qwen3-VL answers in 1000) or "
              f"{QWEN25_PIXELS!r} (absolute pixels of the image as the Qwen2.5-VL processor resizes it)")
Extent = tuple[float, float]  # (width, height) of the box numbers' range: boxes lie in [0, w] x [0, h]


def smart_resize(height: int, width: int, factor: int = QWEN25_FACTOR,
                 min_pixels: int = QWEN25_MIN_PIXELS, max_pixels: int = QWEN25_MAX_PIXELS) -> tuple[int, int]:
    """(height, width) of the image a Qwen2.5-VL processor feeds the model: each side rounded to a multiple
    of `factor`, then both scaled (aspect kept) into [min_pixels, max_pixels]. The rule of transformers'
    Qwen2-VL image processor, written out because that one pulls in torch and refuses aspect ratios over
    200 (its processor's limit, not the geometry's); tests/unit/test_convert.py checks that they agree."""
    if min(height, width) < 1:
        raise ValueError(f"image size {width}x{height} has an empty side")
    h_bar = round(height / factor) * factor  # a side under factor / 2 rounds to 0: the min_pixels branch
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class Resize:
    """A Qwen2.5-VL processor's resize rule: sides a multiple of `factor`, area in [min_pixels, max_pixels]."""

    factor: int = QWEN25_FACTOR
    min_pixels: int = QWEN25_MIN_PIXELS
    max_pixels: int = QWEN25_MAX_PIXELS

    def size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of a width x height image once resized."""
        h, w = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        return w, h


@dataclass(frozen=True)
class CoordFrame:
    """Relative 0..`relative` on both axes, or (`relative` None) absolute pixels: of the image as `resize`
    resizes it, or of the image file itself when `resize` is None."""

    relative: int | None = 1000
    resize: Resize | None = None

    @property
    def per_image(self) -> bool:
        """Whether a box's range depends on its image's size (then reading it needs the image header)."""
        return self.relative is None

    def extent(self, width: int, height: int) -> tuple[int, int]:
        """(w, h): boxes of a width x height image lie in [0, w] x [0, h] in this frame."""
        if self.relative is not None:
            return self.relative, self.relative
        return self.resize.size(width, height) if self.resize else (width, height)

    @property
    def name(self) -> str:
        """How the config and the command lines spell it: "1000", "qwen25_pixels", "original pixels"."""
        if self.relative is not None:
            return str(self.relative)
        return QWEN25_PIXELS if self.resize else "original pixels"

    def prompt_hint(self) -> str:
        """The words of the default prompts that tell the model its frame."""
        return f"0-{self.relative}" if self.relative is not None else "in pixels"


def parse_frame(value: object, min_pixels: int = QWEN25_MIN_PIXELS, max_pixels: int = QWEN25_MAX_PIXELS,
                factor: int = QWEN25_FACTOR) -> CoordFrame:
    """The frame `value` names (a CoordFrame, an int N, its digits, or "qwen25_pixels": then resized with
    these bounds); ValueError saying what is accepted."""
    if isinstance(value, CoordFrame):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if type(value) is int and value > 0:  # not bool: True is no frame
        return CoordFrame(value)
    if value == QWEN25_PIXELS:
        return CoordFrame(None, Resize(factor, min_pixels, max_pixels))
    raise ValueError(f"coordinate frame must be {FRAME_HELP}; got {value!r}")


def rescale(box: Sequence[float], source: Extent, target: Extent) -> list[float]:
    """An xyxy box of the [0, source w] x [0, source h] range placed in the target range (unrounded)."""
    (sw, sh), (tw, th) = source, target
    x1, y1, x2, y2 = box
    return [x1 / sw * tw, y1 / sh * th, x2 / sw * tw, y2 / sh * th]


# ---------------------------------------------------------------- command lines (rl.data check / convert)


def add_frame_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """--frame and, for qwen25_pixels, the resize bounds that say each image's resized size."""
    parser.add_argument("--frame", type=_frame_value, default=1000, metavar="N|qwen25_pixels",
                        help=f"coordinate frame {what} (data.coord_frame): {FRAME_HELP}")
    parser.add_argument("--frame-min-pixels", type=int, default=QWEN25_MIN_PIXELS,
                        help="with --frame qwen25_pixels: the run's model.min_pixels")
    parser.add_argument("--frame-max-pixels", type=int, default=QWEN25_MAX_PIXELS,
                        help="with --frame qwen25_pixels: the run's model.max_pixels")


def frame_from_arguments(args: argparse.Namespace) -> CoordFrame:
    return parse_frame(args.frame, args.frame_min_pixels, args.frame_max_pixels)


def _frame_value(text: str) -> int | str:
    try:
        return parse_frame(text).relative or QWEN25_PIXELS
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
