"""A tiny random-weight Qwen3-VL, built offline: model, tokenizer, processors, chat template.

No model can be downloaded here, so tests and the demo build their own checkpoint. It is a real
`Qwen3VLForConditionalGeneration` saved with `save_pretrained` (safetensors) that transformers and
vLLM load as-is, deterministic from a seed. Its byte-level BPE tokenizer is trained on the spot on
grounding text with digits split into single tokens, so coordinates cost 3-4 tokens each and the
vocabulary stays small (a few hundred tokens): that is what lets the model learn in minutes.

    python -m rl.tiny --out checkpoints/tiny-qwen3vl [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path

from rl.core.atomic import atomic_dir, replace_dir
from rl.core.config import ModelConfig, TinyModelConfig
from rl.core.model_path import TINY_MARKER, check_checkpoint, check_tiny_target

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]
MARKER = TINY_MARKER  # written last: its presence means the checkpoint is complete (and ours to replace)

# Qwen-style chat template, reduced to what grounding needs: text and image parts per message.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _corpus() -> list[str]:
    from rl.core.data import DEFAULT_PROMPT
    from rl.core.synthetic import CLASSES

    text = [DEFAULT_PROMPT, "No findings.", "<box>[[0, 1, 2, 3], [4, 5, 6, 7]]</box>", "<answer></answer>"]
    text += [f"{c} {c.lower()} {c.upper()} <box>[[8, 9, 10, 11]]</box>" for c in CLASSES]
    text += ["user assistant system the a an and of in on with image find every label"]
    # Repeat so the merges that matter (labels, tags, ", ") win over one-off byte pairs.
    return text * 50


def build_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:], chat_template=CHAT_TEMPLATE,
    )


def build_processor(tokenizer, min_pixels: int, max_pixels: int, cfg: TinyModelConfig):  # -> Qwen3VLProcessor
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    # patch 16 x merge 2: a 128x128 image is 8x8 patches -> 16 image tokens after merging.
    pixels = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    norm = {"image_mean": list(cfg.image_mean), "image_std": list(cfg.image_std)}
    image = Qwen2VLImageProcessor(size=pixels, patch_size=16, merge_size=2, temporal_patch_size=2, **norm)
    video = Qwen3VLVideoProcessor(size=pixels, patch_size=16, merge_size=2, temporal_patch_size=2, **norm)
    return Qwen3VLProcessor(
        image_processor=image, tokenizer=tokenizer, video_processor=video, chat_template=CHAT_TEMPLATE
    )


def build_model_config(cfg: TinyModelConfig, tokenizer):  # -> Qwen3VLConfig
    from transformers import Qwen3VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab = -(-len(tokenizer) // 64) * 64  # round up: embedding rows in multiples of 64
    half = cfg.head_dim // 2
    text = dict(
        vocab_size=vocab, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, max_position_embeddings=4096,
        # M-RoPE splits the rotary half-dim over (time, height, width), as Qwen3-VL's [24, 20, 20].
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_interleaved": True,
                         "mrope_section": [half // 2, half // 4, half // 4]},
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=cfg.vision_depth, hidden_size=cfg.vision_hidden_size, num_heads=cfg.vision_num_heads,
        intermediate_size=cfg.vision_intermediate_size, patch_size=16, spatial_merge_size=2,
        temporal_patch_size=2, out_hidden_size=cfg.hidden_size, num_position_embeddings=256,
        deepstack_visual_indexes=[0],
    )
    config = Qwen3VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        # Untied like Qwen3-VL-8B: vLLM 0.32's in-place weight reload leaves a tied lm_head on its old
        # weights ("ParallelLMHead: Failed to load weights"), so tied models need a re-tie after sync.
        tie_word_embeddings=False,
    )
    config.eos_token_id = ids["<|im_end|>"]
    config.pad_token_id = ids["<|endoftext|>"]
    return config


def sincos_position_table(num_positions: int, dim: int):  # -> torch.Tensor (num_positions, dim)
    """A 2-D sine-cosine position table over a square grid (ViT/MAE's fixed embedding): half the channels
    encode the row, half the column, each at dim/4 geometric frequencies; every row has norm sqrt(dim/2).

    Why: Qwen3-VL's learned position embedding starts as N(0, 0.02) noise (norm ~0.2 against patch features
    of norm ~10), so a random tower tells the language model what is in the image but hardly where."""
    import torch

    side = math.isqrt(num_positions)
    if side * side != num_positions or dim % 4:
        raise ValueError(f"need a square number of positions and dim % 4 == 0, got {num_positions}, {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")

    def axis(pos):
        angles = pos.flatten()[:, None].double() * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([axis(rows), axis(cols)], dim=1).float()


def _fingerprint(cfg: TinyModelConfig, min_pixels: int, max_pixels: int) -> str:
    payload = json.dumps([cfg.model_dump(), min_pixels, max_pixels, CHAT_TEMPLATE, _corpus()[:20], "untied",
                          "sincos"])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def build_tiny_model(out: str | Path, cfg: TinyModelConfig | None = None, *,
                     min_pixels: int = 128 * 128, max_pixels: int = 128 * 128) -> Path:
    """Build the checkpoint at `out` (skipped when a complete build of the same spec is there).

    `out` must not exist, be empty or hold an earlier tiny build (`ModelPathError` otherwise: nothing of
    the user's is replaced). Written to a temporary sibling directory and renamed, so a crash never leaves
    half a model."""
    import torch
    from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

    cfg = cfg or TinyModelConfig()
    out = Path(out)
    fingerprint = _fingerprint(cfg, min_pixels, max_pixels)
    marker = out / MARKER
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        return out
    check_tiny_target(out)
    with atomic_dir(out, publish=_publish) as tmp:
        tokenizer = build_tokenizer()
        processor = build_processor(tokenizer, min_pixels, max_pixels, cfg)
        config = build_model_config(cfg, tokenizer)
        torch.manual_seed(cfg.seed)
        model = Qwen3VLForConditionalGeneration(config).to(torch.float32)
        table = model.model.visual.pos_embed.weight
        with torch.no_grad():
            table.copy_(sincos_position_table(*table.shape))
        model.generation_config = GenerationConfig(
            eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False
        )
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        params = sum(p.numel() for p in model.parameters())
        (tmp / MARKER).write_text(json.dumps({"fingerprint": fingerprint, "parameters": params}))
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished build to `out` (replace_dir: an earlier build, empty folder or link there is
    replaced). Checked again here: the folder may have changed meanwhile."""
    check_tiny_target(out)
    replace_dir(tmp, out)


def ensure_model(model: ModelConfig) -> Path:
    """The checkpoint `model.path` names, checked; with `model.tiny` set, the tiny model built there first.

    `ModelPathError` (a ConfigError naming the path and what is wrong) when `model.tiny` is set and the
    folder holds anything but an earlier tiny build, or when `model.tiny` is null and the folder is not a
    usable Qwen3-VL / Qwen2.5-VL checkpoint (rl.core.model_path). Nothing of the user's is ever written."""
    path = Path(model.path)
    if model.tiny is None:
        check_checkpoint(path)
        return path
    # build_tiny_model rebuilds only when the spec's fingerprint changed, and only over its own build.
    return build_tiny_model(path, model.tiny, min_pixels=model.min_pixels, max_pixels=model.max_pixels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rl.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="checkpoints/tiny-qwen3vl", help="checkpoint directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build_tiny_model(args.out, TinyModelConfig(seed=args.seed))
    info = json.loads((path / MARKER).read_text())
    print(f"tiny Qwen3-VL ({info['parameters'] / 1e6:.2f} M parameters) at {path}")


if __name__ == "__main__":
    main()
