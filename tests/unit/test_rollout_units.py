"""Rollout pieces that need no engine: prompt fitting against the context, chunking over workers."""

from __future__ import annotations

import pytest

from actors.rollout import PromptFitter, render_prompt
from rl.core.chunks import balanced_ranges


@pytest.mark.parametrize("count, parts, sizes", [(10, 3, [4, 3, 3]), (2, 3, [1, 1, 0]), (0, 2, [0, 0]),
                                                 (8, 1, [8])])
def test_balanced_chunks_cover_in_order(count, parts, sizes):
    chunks = balanced_ranges(count, parts)
    assert [len(c) for c in chunks] == sizes
    assert [i for c in chunks for i in c] == list(range(count))


@pytest.fixture(scope="module")
def fitter_parts(tiny_model_dir, tiny_config):
    from transformers import AutoConfig, AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir), AutoConfig.from_pretrained(tiny_model_dir)


def _fitter(parts, cfg, overflow, max_model_len):
    tokenizer, hf_config = parts
    model = cfg.model.model_copy(update={"max_model_len": max_model_len})
    return PromptFitter(tokenizer, model, hf_config, overflow), tokenizer


def test_image_tokens_follow_the_processor_limits(fitter_parts, tiny_config):
    fitter, _ = _fitter(fitter_parts, tiny_config, "reject", 512)
    # 128x128 within min=max=16384 px: 8x8 patches of 16 px, merged 2x2 -> 16 tokens; a 256 px image
    # is resized down to the same 16384-pixel budget.
    assert fitter.image_tokens(128, 128) == 16
    assert fitter.image_tokens(256, 256) == 16


def test_prompt_that_fits_is_kept(fitter_parts, tiny_config):
    fitter, _ = _fitter(fitter_parts, tiny_config, "reject", 512)
    assert fitter.fit("Find the nodule.", (128, 128), 64) == ("Find the nodule.", False)


def test_too_long_prompt_is_rejected_with_its_length(fitter_parts, tiny_config):
    fitter, tokenizer = _fitter(fitter_parts, tiny_config, "reject", 128)
    prompt = "find every nodule " * 40
    length = len(tokenizer.encode(render_prompt(tokenizer, prompt))) - 1 + 16
    with pytest.raises(ValueError, match=f"prompt of {length} tokens does not fit max_model_len 128 minus "
                                         "max_tokens 64 \\(rollout.prompt_overflow=reject\\)"):
        fitter.fit(prompt, (128, 128), 64)


def test_too_long_prompt_is_truncated_to_fit_exactly(fitter_parts, tiny_config):
    fitter, tokenizer = _fitter(fitter_parts, tiny_config, "truncate", 128)
    text, truncated = fitter.fit("find every nodule " * 40, (128, 128), 64)
    assert truncated
    assert len(tokenizer.encode(render_prompt(tokenizer, text))) - 1 + 16 <= 128 - 64
