"""model.path start-up checks (rl.core.model_path): a user's folder is never written, and a checkpoint that cannot
load fails before anything starts, naming the path and what is missing. No model is built or loaded here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rl.core.config import ModelConfig, TinyModelConfig
from rl.core.frames import parse_frame
from rl.core.model_path import ModelPathError, check_checkpoint, check_frame, check_tiny_target
from rl.tiny import MARKER, ensure_model


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root (relative) -> its bytes (None for a folder): equal trees are byte for byte equal."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes() for p in sorted(root.rglob("*"))}


def _users_folder(root: Path) -> Path:
    """The issue's case: weights in a subfolder, a README at the top, no top-level config.json."""
    (root / "hf").mkdir(parents=True)
    (root / "hf" / "config.json").write_text(json.dumps({"model_type": "qwen3_vl"}))
    (root / "hf" / "model.safetensors").write_bytes(b"\x00weights\xff")
    (root / "README.md").write_text("my fine-tuned Qwen3-VL, do not delete\n")
    return root


def _checkpoint(root: Path, config: object = None, **files: str) -> Path:
    """A minimal folder that passes check_checkpoint; `files` replace or (value "") drop single files."""
    root.mkdir(parents=True)
    contents = {"config.json": json.dumps(config if config is not None else {"model_type": "qwen3_vl"}),
                "model.safetensors": "w", "tokenizer.json": "{}", "preprocessor_config.json": "{}", **files}
    for name, text in contents.items():
        if text:
            (root / name).write_text(text)
    return root


@pytest.mark.parametrize("tiny", [TinyModelConfig(), None], ids=["tiny-set", "tiny-null"])
def test_a_folder_with_weights_in_a_subfolder_stays_byte_for_byte_as_it_was(tmp_path, tiny):
    folder = _users_folder(tmp_path / "mine")
    before = _tree(tmp_path)
    with pytest.raises(ModelPathError) as err:
        ensure_model(ModelConfig(path=str(folder), tiny=tiny))
    assert _tree(tmp_path) == before  # nothing added, removed or changed, temporaries included
    assert str(folder) in str(err.value)
    if tiny is not None:
        assert f"no {MARKER}" in str(err.value) and "set model.tiny=null" in str(err.value)
        assert "choose another model.path" in str(err.value)
    else:
        assert "no config.json" in str(err.value) and "no weights" in str(err.value)


def test_the_launcher_stops_on_such_a_folder_before_the_data_or_any_actor(tmp_path, capsys):
    from rl.launch import main

    folder = _users_folder(tmp_path / "mine")
    before = _tree(folder)
    assert main([f"model.path={folder}", f"data.path={tmp_path / 'data'}"]) == 2
    assert f"error: model.path={folder}: the folder holds files but no {MARKER}" in capsys.readouterr().err
    assert _tree(folder) == before and not (tmp_path / "data").exists()  # stopped before the dataset step


def test_the_tiny_model_may_be_built_only_where_nothing_is_lost(tmp_path):
    check_tiny_target(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    check_tiny_target(tmp_path / "empty")
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / MARKER).write_text("{}")
    (tmp_path / "earlier" / "model.safetensors").write_text("old build")
    check_tiny_target(tmp_path / "earlier")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelPathError, match=r"model.path=.*/file: not a folder"):
        check_tiny_target(tmp_path / "file")
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "config.json").write_text("{}")  # a checkpoint we did not build (e.g. SFT output)
    with pytest.raises(ModelPathError, match=rf"model.path=.*/sft: the folder holds files but no {MARKER}"):
        check_tiny_target(tmp_path / "sft")
    (tmp_path / "link").symlink_to(tmp_path / "sft")
    with pytest.raises(ModelPathError, match="model.path=.*/link: the folder holds files"):
        ensure_model(ModelConfig(path=str(tmp_path / "link"), tiny=TinyModelConfig()))
    assert sorted(p.name for p in (tmp_path / "sft").iterdir()) == ["config.json"]


def test_a_complete_checkpoint_passes(tmp_path):
    path = _checkpoint(tmp_path / "ok")
    assert ensure_model(ModelConfig(path=str(path), tiny=None)) == path
    qwen25 = {"model_type": "custom", "architectures": ["Qwen2_5_VLForConditionalGeneration"]}
    check_checkpoint(_checkpoint(tmp_path / "qwen25", qwen25, **{"tokenizer.json": "", "vocab.json": "{}",
                                                                  "merges.txt": "#"}))
    sharded = {"model.safetensors": "", "model.safetensors.index.json": json.dumps(
        {"weight_map": {"a": "model-1-of-2.safetensors", "b": "model-2-of-2.safetensors"}}),
        "model-1-of-2.safetensors": "w", "model-2-of-2.safetensors": "w", "preprocessor_config.json": "",
        "processor_config.json": "{}"}
    check_checkpoint(_checkpoint(tmp_path / "sharded", **sharded))


@pytest.mark.parametrize(("config", "files", "message"), [
    (None, {"config.json": ""}, "no config.json"),
    (None, {"config.json": "{'model_type': 'qwen3_vl'}"}, "config.json does not parse as JSON"),
    ([], {}, "config.json is not a JSON object"),
    ({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]}, {},
     "config.json describes model_type='llava', architectures=['LlavaForConditionalGeneration']; supported: "
     "model_type qwen3_vl or qwen2_5_vl"),
    (None, {"model.safetensors": ""}, "no weights (model.safetensors, pytorch_model.bin, model.safetensors.index"),
    (None, {"model.safetensors": "", "model.safetensors.index.json": json.dumps(
        {"weight_map": {"a": "model-1-of-2.safetensors", "b": "model-2-of-2.safetensors"}}),
        "model-1-of-2.safetensors": "w"},
     "model.safetensors.index.json lists weight files that are missing: model-2-of-2.safetensors"),
    (None, {"model.safetensors": "", "pytorch_model.bin.index.json": "[]"},
     "pytorch_model.bin.index.json has no readable weight_map"),
    (None, {"tokenizer.json": ""}, "no tokenizer files (tokenizer.json, or vocab.json + merges.txt)"),
    (None, {"preprocessor_config.json": ""},
     "no image processor config (preprocessor_config.json or processor_config.json)"),
], ids=["no-config", "bad-json", "not-object", "architecture", "no-weights", "missing-shard", "bad-index",
        "no-tokenizer", "no-image-processor"])
def test_an_unusable_checkpoint_names_the_path_and_what_is_missing(tmp_path, config, files, message):
    path = _checkpoint(tmp_path / "ckpt", config, **files)
    with pytest.raises(ModelPathError) as err:
        ensure_model(ModelConfig(path=str(path), tiny=None))
    assert str(err.value).startswith(f"model.path={path}: not a usable checkpoint: ")
    assert message in str(err.value)


def test_a_path_that_does_not_exist_is_an_error_not_a_random_model_or_a_hub_lookup(tmp_path):
    with pytest.raises(ModelPathError, match=r"model.path=org/some-hub-model: does not exist; with model.tiny=null "
                                             r"it must be a local checkpoint folder"):
        ensure_model(ModelConfig(path="org/some-hub-model", tiny=None))
    (tmp_path / "weights.safetensors").write_text("w")
    with pytest.raises(ModelPathError, match="weights.safetensors: is not a folder"):
        check_checkpoint(tmp_path / "weights.safetensors")


def test_a_resized_pixel_frame_must_match_the_checkpoints_patch_tiling(tmp_path):
    """qwen25_pixels with a Qwen3-VL checkpoint (16-pixel patches: a 32-multiple resize, a 0-1000 answer) stops
    before anything starts; with Qwen2.5-VL's 14 x 2 tiling, or a relative frame, it passes."""
    qwen3 = _checkpoint(tmp_path / "qwen3", {"model_type": "qwen3_vl",
                                             "vision_config": {"patch_size": 16, "spatial_merge_size": 2}})
    qwen25 = _checkpoint(tmp_path / "qwen25", {"model_type": "qwen2_5_vl",
                                               "vision_config": {"patch_size": 14, "spatial_merge_size": 2}})
    pixels = parse_frame("qwen25_pixels")
    with pytest.raises(ModelPathError) as err:
        check_frame(qwen3, pixels)
    assert str(err.value) == (
        f"data.coord_frame=qwen25_pixels is Qwen2.5-VL's frame (images resized to multiples of 28 pixels), but "
        f"model.path={qwen3} (model_type 'qwen3_vl') tiles images by patch_size 16 x spatial_merge_size 2 = 32; "
        "Qwen3-VL answers in the relative frame: data.coord_frame=1000")
    check_frame(qwen25, pixels)
    check_frame(qwen3, parse_frame(1000))
