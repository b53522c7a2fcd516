"""Which parameters of a Qwen3-VL model are which part, shared by SFT (rl/sft.py) and the GRPO learner
(actors/learner.py): the vision encoder (`visual.*` except its mergers), the mergers that project image
features into the language model, and the language model; which of them the optimizer holds. Duck-typed
(no torch import), and right for models built under DeepSpeed's ZeRO-3 `zero.Init` (partitioned
parameters report their full size and shape through `ds_numel` / `ds_shape`)."""

from __future__ import annotations

from typing import Any

from rl.core.config import ConfigError

# The logit bias that keeps vision placeholder tokens out of sampled answers. The engine adds it before the
# temperature (vLLM's logits processors run first) and reports log-probs of the biased distribution; the
# learner adds the same bias, so both mean the same distribution by a log-prob.
VISION_TOKEN_BIAS = -100.0


def vision_token_ids(hf_config: Any) -> list[int]:
    """Placeholder tokens that mark where image features go; an answer must never contain them (in a
    response they would make the learner's forward pass expect image features that do not exist)."""
    names = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
    return [getattr(hf_config, n) for n in names if getattr(hf_config, n, None) is not None]


def is_vision_encoder(name: str) -> bool:
    """A parameter of the vision tower other than a merger (`merger`, Qwen3-VL's `deepstack_merger_list`)."""
    return ".visual." in f".{name}" and "merger" not in name


def numel(param: Any) -> int:
    """Elements of a parameter, the full count for a ZeRO-3 partitioned one (whose local data is empty)."""
    return param.ds_numel if hasattr(param, "ds_numel") else param.numel()


def shape(param: Any) -> tuple[int, ...]:
    """A parameter's full shape, also for a ZeRO-3 partitioned one (whose local data is 1-D and empty)."""
    return tuple(getattr(param, "ds_shape", param.shape))


def optimizer_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: trainable parameters only (a frozen one gets no optimizer state),
    weight decay on matrices, none on norms and biases."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in trainable if len(shape(p)) >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trainable if len(shape(p)) < 2], "weight_decay": 0.0}]


def freeze_vision_encoder(model: Any, key: str) -> int:
    """Stop gradients into the vision encoder but not its merger (the projector into the language model).

    Usual for a pretrained tower (Qwen3-VL-8B), and GRPO's default; the demo's SFT trains its random tiny
    tower instead, which frozen says what is in an image but hardly where (docs/sft.md).
    Returns the number of frozen parameters. `key` is the config key that asked for it
    (`sft.freeze_vision`, `learner.freeze_vision`); a model without a `visual` tower raises naming it
    (nothing would be frozen)."""
    frozen = 0
    for name, param in model.named_parameters():
        if is_vision_encoder(name):
            param.requires_grad_(False)
            frozen += numel(param)
    if not frozen:
        raise ConfigError(f"{key}: this model has no parameters under a 'visual' module to freeze "
                          f"(set {key}=false for a model without a vision tower)")
    return frozen
