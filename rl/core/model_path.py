"""Start-up checks of `model.path`, before any actor starts: a checkpoint must be usable, and the tiny
model may be built only where nothing of the user's can be lost.

A user's checkpoint folder is never written. The tiny build (`rl.tiny`) goes only into a folder that does
not exist, is empty, or holds an earlier tiny build (its marker file); anything else is an error that
names the folder and says what to do. A checkpoint (`model.tiny: null`) must be a local folder with a
Qwen3-VL or Qwen2.5-VL `config.json`, its weights and its processor files; `config.json` is read as
JSON, nothing in the folder is executed.
"""

from __future__ import annotations

import json
from pathlib import Path

from rl.core.config import ConfigError
from rl.core.frames import CoordFrame

TINY_MARKER = "tiny_build.json"  # rl.tiny writes it last into every complete tiny build
MODEL_TYPES = ("qwen3_vl", "qwen2_5_vl")
ARCHITECTURES = ("Qwen3VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


class ModelPathError(ConfigError):
    """`model.path` cannot be used as configured; the message names the path and what is wrong."""


def check_tiny_target(path: Path) -> None:
    """Raise unless the tiny model may be (re)built at `path`: absent, an empty folder, or a tiny build."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir():
        raise ModelPathError(f"model.path={path}: not a folder; the tiny model (model.tiny) is built only into "
                             "a folder that does not exist, is empty or holds an earlier tiny build")
    if (path / TINY_MARKER).is_file() or not any(path.iterdir()):
        return
    raise ModelPathError(
        f"model.path={path}: the folder holds files but no {TINY_MARKER}, so it is not an earlier tiny build; "
        "refusing to build the tiny model there (it would replace what the folder holds). To use the folder as "
        "a checkpoint set model.tiny=null; to build the tiny model choose another model.path")


def check_checkpoint(path: Path) -> None:
    """Raise unless `path` is a local folder holding a Qwen3-VL / Qwen2.5-VL checkpoint that transformers and
    vLLM can load: config.json of a known architecture, the weights, the tokenizer and the image processor."""
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise ModelPathError(
            f"model.path={path}: {what}; with model.tiny=null it must be a local checkpoint folder (HF format). "
            "A hub model: download it first (huggingface-cli download ORG/NAME --local-dir DIR) and set "
            "model.path=DIR; the offline tiny model: set model.tiny (conf/default.yaml)")
    problems = [p for p in (_config_problem(path), _weights_problem(path), _processor_problem(path)) if p]
    if problems:
        raise ModelPathError(f"model.path={path}: not a usable checkpoint: " + "; ".join(problems))


def check_frame(path: Path, frame: CoordFrame) -> None:
    """Raise when a resized-pixel frame (qwen25_pixels: sides multiples of 28) is set for a checkpoint (already
    checked) whose vision tower tiles images otherwise, e.g. Qwen3-VL's 16-pixel patches merged 2x2: that
    model sees another resized image and answers in its relative 0-1000 frame, so every reward would be off."""
    if frame.resize is None:
        return
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    vision = config.get("vision_config") if isinstance(config.get("vision_config"), dict) else {}
    patch, merge = vision.get("patch_size"), vision.get("spatial_merge_size")
    if type(patch) is int and type(merge) is int and patch * merge != frame.resize.factor:
        raise ModelPathError(
            f"data.coord_frame={frame.name} is Qwen2.5-VL's frame (images resized to multiples of "
            f"{frame.resize.factor} pixels), but model.path={path} (model_type {config.get('model_type')!r}) tiles "
            f"images by patch_size {patch} x spatial_merge_size {merge} = {patch * merge}; Qwen3-VL answers in the "
            "relative frame: data.coord_frame=1000")


def _config_problem(path: Path) -> str | None:
    file = path / "config.json"
    if not file.is_file():
        return "no config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return f"config.json does not parse as JSON ({exc})"
    if not isinstance(config, dict):
        return "config.json is not a JSON object"
    model_type, architectures = config.get("model_type"), config.get("architectures") or []
    if model_type in MODEL_TYPES or (isinstance(architectures, list) and set(architectures) & set(ARCHITECTURES)):
        return None
    return (f"config.json describes model_type={model_type!r}, architectures={architectures!r}; supported: "
            f"model_type {' or '.join(MODEL_TYPES)} (Qwen3-VL, Qwen2.5-VL)")


def _weights_problem(path: Path) -> str | None:
    if any((path / name).is_file() for name in WEIGHT_FILES):
        return None
    index = next((path / name for name in WEIGHT_INDEXES if (path / name).is_file()), None)
    if index is None:
        return f"no weights ({', '.join(WEIGHT_FILES + WEIGHT_INDEXES)})"
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{index.name} has no readable weight_map ({exc!r})"
    missing = sorted(str(s) for s in shards if not (path / str(s)).is_file())
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        return f"{index.name} lists weight files that are missing: {shown}"
    return None


def _processor_problem(path: Path) -> str | None:
    missing = []
    if not (path / "tokenizer.json").is_file() and not ((path / "vocab.json").is_file()
                                                        and (path / "merges.txt").is_file()):
        missing.append("tokenizer files (tokenizer.json, or vocab.json + merges.txt)")
    if not any((path / name).is_file() for name in IMAGE_PROCESSOR_FILES):
        missing.append(f"image processor config ({' or '.join(IMAGE_PROCESSOR_FILES)})")
    return f"no {' and no '.join(missing)}" if missing else None
