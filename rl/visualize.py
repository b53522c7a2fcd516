"""Predictions vs references drawn on their images: reference boxes green, predicted boxes red, labels
written beside them. Used for TensorBoard image grids and evaluation galleries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from rewards import parse_answer

REFERENCE, PREDICTION = (60, 220, 60), (240, 60, 60)


def draw(image: Image.Image, prediction: str, reference: str, frame: int, scale: int = 2) -> Image.Image:
    """The image enlarged `scale` times with both answers' boxes (coordinates in the 0..frame frame)."""
    out = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    pen = ImageDraw.Draw(out)
    for text, colour, width in ((reference, REFERENCE, 2), (prediction, PREDICTION, 1)):
        for label, boxes in parse_answer(text):
            for x1, y1, x2, y2 in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
                sx, sy = out.width / frame, out.height / frame
                box = [float(np.clip(v, -1, frame + 1)) * s for v, s in ((x1, sx), (y1, sy), (x2, sx), (y2, sy))]
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


def prediction_grid(paths: Sequence[str | Path], predictions: Sequence[str], references: Sequence[str],
                    frame: int, columns: int = 4) -> Image.Image:
    tiles = [draw(Image.open(p), pred, ref, frame)
             for p, pred, ref in zip(paths, predictions, references, strict=True)]
    return grid(tiles, columns)
