"""The offline tiny Qwen3-VL: deterministic, loadable by transformers, sized for the task."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from rl.core.config import TinyModelConfig
from rl.core.data import chat_messages, load_split
from rl.tiny import MARKER, build_tiny_model, build_tokenizer

# Smaller than the default so building twice stays fast; the default model is built by the fixture.
SMALL = TinyModelConfig(hidden_size=128, num_layers=1, intermediate_size=256, vision_depth=1)


def _digest(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_build_is_deterministic_from_the_seed(tmp_path):
    a = build_tiny_model(tmp_path / "a", SMALL)
    b = build_tiny_model(tmp_path / "b", SMALL)
    c = build_tiny_model(tmp_path / "c", SMALL.model_copy(update={"seed": 1}))
    assert _digest(a) == _digest(b) != _digest(c)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind


def test_build_is_cached_and_rebuilt_when_the_spec_changes(tmp_path):
    out = build_tiny_model(tmp_path / "m", SMALL)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(out, SMALL) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp  # same spec: not rebuilt
    build_tiny_model(out, SMALL.model_copy(update={"seed": 2}))
    assert json.loads((out / MARKER).read_text())["fingerprint"] != ""
    assert (out / "model.safetensors").stat().st_mtime_ns != stamp


def test_tokenizer_has_qwen_specials_and_single_digit_tokens():
    tok = build_tokenizer()
    assert len(tok) < 400
    for special in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"):
        assert tok.convert_tokens_to_ids(special) < 10  # a real special token, not bytes
    pieces = tok.tokenize("<box>[[156, 516, 231, 607]]</box>")
    assert [p for p in pieces if p.isdigit()] == list("156516231607")
    assert tok.decode(tok.encode("Nodule <box>[[1, 2, 3, 4]]</box>")) == "Nodule <box>[[1, 2, 3, 4]]</box>"


def test_default_model_size_and_transformers_generation(tiny_model_dir, synthetic_dir):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from rl.core.data import load_image

    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    assert model.config.text_config.head_dim == 64  # vLLM CPU attention needs >= 64
    params = sum(p.numel() for p in model.parameters())
    assert 3e6 < params < 8e6, params
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    row = load_split(synthetic_dir / "val.jsonl").rows[0]
    text = processor.apply_chat_template(chat_messages(row.prompt), add_generation_prompt=True)
    inputs = processor(text=[text], images=[load_image(row.image)], return_tensors="pt")
    # 128x128 px / 16 px patches = 8x8 patches, merged 2x2 -> 16 image tokens.
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 8]]
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape == (1, inputs["input_ids"].shape[1] + 8)
    assert torch.isfinite(model(**inputs).logits).all()


def test_ensure_model_builds_into_an_empty_folder_rebuilds_its_own_build_and_the_build_passes_the_checks(tmp_path):
    from rl.core.config import ModelConfig
    from rl.tiny import ensure_model

    (tmp_path / "tiny").mkdir()  # empty: may be built into (test_model_path: any other folder may not)
    ours = ModelConfig(path=str(tmp_path / "tiny"), tiny=SMALL)
    built = ensure_model(ours)
    fingerprint = json.loads((built / MARKER).read_text())["fingerprint"]
    changed = ours.model_copy(update={"tiny": SMALL.model_copy(update={"seed": 3})})
    assert json.loads((ensure_model(changed) / MARKER).read_text())["fingerprint"] != fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]  # the old build and the temporaries are gone
    # The build is a complete checkpoint by the start-up checks' rules (config, weights, processor files).
    assert ensure_model(ours.model_copy(update={"tiny": None})) == built


def test_processor_normalises_with_the_synthetic_images_statistics(tmp_path):
    """The default image_mean/std are the generator's per-channel pixel statistics (0-3 objects), so a
    background patch enters the random vision tower near zero instead of as a large shared constant."""
    import numpy as np
    from transformers import AutoProcessor

    from rl.core.synthetic import CLASSES, synthetic_example

    rng = np.random.default_rng(0)
    pixels = np.stack([synthetic_example(rng, image_size=128, max_objects=3, classes=CLASSES, frame=1000)[0]
                       for _ in range(300)]) / 255.0
    cfg = TinyModelConfig()
    assert np.allclose(pixels.mean(axis=(0, 1, 2)), cfg.image_mean, atol=0.01)
    assert np.allclose(pixels.std(axis=(0, 1, 2)), cfg.image_std, atol=0.01)
    processor = AutoProcessor.from_pretrained(build_tiny_model(tmp_path / "m", SMALL))
    assert list(processor.image_processor.image_mean) == list(SMALL.image_mean)
    assert list(processor.image_processor.image_std) == list(SMALL.image_std)


def test_vision_position_table_is_2d_sincos(tmp_path):
    from transformers import Qwen3VLForConditionalGeneration

    from rl.tiny import sincos_position_table

    table = sincos_position_table(16, 8)  # a 4x4 grid: channels 0-3 encode the row, 4-7 the column
    assert table.shape == (16, 8)
    assert torch.allclose(table.norm(dim=1), torch.full((16,), 2.0))  # sqrt(dim / 2)
    assert torch.equal(table[0, 4:], table[4, 4:]) and torch.equal(table[0, :4], table[1, :4])  # same column / row
    assert not torch.equal(table[0, :4], table[4, :4])
    model = Qwen3VLForConditionalGeneration.from_pretrained(build_tiny_model(tmp_path / "m", SMALL))
    weight = model.model.visual.pos_embed.weight
    assert torch.allclose(weight, sincos_position_table(*weight.shape))
