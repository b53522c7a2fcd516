"""Predictions vs references drawn on their images: reference boxes green, predicted boxes red, labels
written beside them. Used for TensorBoard image grids and evaluation galleries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rewards import parse_answer

REFERENCE, PREDICTION = (60, 220, 60), (240, 60, 60)


def draw(image: Image.Image, prediction: str, reference: str, extent: tuple[float, float],
         scale: int = 2) -> Image.Image:
    """The image enlarged `scale` times with both answers' boxes; `extent`: the image's (w, h) in the
    answers' coordinate frame (`GroundingRow.extent`: 1000 x 1000, or its resized size in pixels)."""
    out = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    pen = ImageDraw.Draw(out)
    (fw, fh), (sx, sy) = extent, (out.width / extent[0], out.height / extent[1])
    for text, colour, width in ((reference, REFERENCE, 2), (prediction, PREDICTION, 1)):
        for label, boxes in parse_answer(text):
            for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
                box = [float(np.clip(v, -1, limit + 1)) * s
                       for v, limit, s in ((x1, fw, sx), (y1, fh, sy), (x2, fw, sx), (y2, fh, sy))]
                if box[2] > box[0] and box[3] > box[1]:
                    pen.rectangle(box, outline=colour, width=width)
                    pen.text((box[0] + 2, box[1] + 1), label[:12], fill=colour)
    return out


def grid(images: Sequence[Image.Image], columns: int = 4) -> Image.Image:
    """Tiles of equal size, row-major, on a black canvas."""
    width, height = images[0].size
    rows = -(-len(images) // columns)
    canvas = Image.new("RGB", (width * min(columns, len(images)), height * rows))
    for i, img in enumerate(images):
        canvas.paste(img, ((i % columns) * width, (i // columns) * height))
    return canvas


GRID_ROWS = 8  # rows drawn in the TensorBoard prediction grids of GRPO and SFT (two rows of four)


def prediction_grid(paths: Sequence[str | Path], predictions: Sequence[str], references: Sequence[str],
                    extents: Sequence[tuple[float, float]], columns: int = 4) -> Image.Image:
    """One `draw` tile per image (its answers' frame extent from `extents`), in a grid."""
    tiles = [draw(Image.open(p), pred, ref, extent)
             for p, pred, ref, extent in zip(paths, predictions, references, extents, strict=True)]
    return grid(tiles, columns)
