"""The image-reliance check: coordinate-token loss with each row's own image vs another row's."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rl.core.data import load_split
from rl.image_reliance import image_reliance, main


@pytest.fixture(scope="module")
def model_and_processor(tiny_model_dir):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return (AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32),
            AutoProcessor.from_pretrained(tiny_model_dir))


def test_the_same_image_for_every_row_gives_zero_reliance(model_and_processor, synthetic_dir):
    model, processor = model_and_processor
    rows = [r for r in load_split(synthetic_dir / "val.jsonl").rows if "<box>" in r.answer][:3]
    same = [replace(r, image=rows[0].image) for r in rows]  # swapping images then changes nothing
    m = image_reliance(model, processor, same, batch_size=2)
    assert m["image_reliance"] == 0.0 and m["coord_loss"] == m["coord_loss_shuffled"]
    # A random model over a ~320-token vocabulary: every answer token costs about ln(320) = 5.8 nats.
    assert 4.0 < m["coord_loss"] < 8.0 and 4.0 < m["text_loss"] < 8.0
    mixed = image_reliance(model, processor, rows, batch_size=2)
    assert mixed["coord_loss"] == pytest.approx(m["coord_loss"], abs=0.5)  # same answers, other images
    assert mixed["coord_loss"] != m["coord_loss"]  # the images do reach the model


def test_command_line_prints_every_figure(tiny_model_dir, synthetic_dir, capsys):
    assert main([str(tiny_model_dir), "--data", str(synthetic_dir / "val.jsonl"), "--rows", "2"]) == 0
    out = capsys.readouterr().out
    for name in ("coord_loss", "coord_loss_shuffled", "text_loss", "text_loss_shuffled", "image_reliance"):
        assert f"\n{name} " in f"\n{out}"
