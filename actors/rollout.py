"""Rollout side: vLLM engines that sample grounded answers from (image, prompt) rows.

`build_engine` is the one place a vLLM engine is configured, so the demo, evaluation and the
rollout workers sample from identically set-up engines: the same processor pixel limits as the
learner (a mismatch gives "image features and image tokens do not match"), the platform's dtype
and KV-cache sizing, and `trust_remote_code` only when configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rl.config import ModelConfig, RolloutConfig
from rl.data import GroundingRow, chat_messages, load_image
from rl.platform import Platform

if TYPE_CHECKING:
    from vllm import LLM, SamplingParams


def engine_kwargs(model: ModelConfig, rollout: RolloutConfig, platform: Platform) -> dict[str, Any]:
    """Keyword arguments of `vllm.LLM` for this model, rollout config and platform."""
    return dict(
        model=model.path,
        tokenizer=model.path,
        trust_remote_code=model.trust_remote_code,
        dtype=platform.dtype(model.dtype),
        max_model_len=model.max_model_len,
        tensor_parallel_size=rollout.tensor_parallel_size,
        enforce_eager=rollout.enforce_eager,
        seed=rollout.seed,
        limit_mm_per_prompt={"image": 1, "video": 0},
        mm_processor_kwargs={"size": model.processor_size()},
        **platform.vllm_memory_kwargs(rollout.kv_cache_memory_mb, rollout.gpu_memory_utilization),
    )


def build_engine(model: ModelConfig, rollout: RolloutConfig, platform: Platform) -> LLM:
    """Start a vLLM engine. Callers must run under `if __name__ == "__main__":` or in a Ray actor:
    vLLM starts its engine core with the spawn method."""
    from vllm import LLM

    return LLM(**engine_kwargs(model, rollout, platform))


def sampling_params(rollout: RolloutConfig, n: int, greedy: bool = False) -> SamplingParams:
    """n samples per prompt with the configured sampling; greedy (eval mode) ignores temperature."""
    from vllm import SamplingParams

    if greedy:
        return SamplingParams(n=1, temperature=0.0, max_tokens=rollout.max_tokens, stop=rollout.stop or None)
    return SamplingParams(
        n=n, temperature=rollout.temperature, top_p=rollout.top_p, top_k=rollout.top_k,
        max_tokens=rollout.max_tokens, stop=rollout.stop or None, seed=rollout.seed, logprobs=0,
    )


def engine_inputs(rows: Sequence[GroundingRow], tokenizer: Any) -> list[dict[str, Any]]:
    """vLLM prompt dicts: chat-templated text with the image placeholder, plus the image itself."""
    return [
        {
            "prompt": tokenizer.apply_chat_template(
                chat_messages(row.prompt), tokenize=False, add_generation_prompt=True
            ),
            "multi_modal_data": {"image": load_image(row.image)},
        }
        for row in rows
    ]
