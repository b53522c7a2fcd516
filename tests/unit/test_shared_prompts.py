"""Shared-prompt rows (`Collator(share_prompts=True)`): the mask worked by hand, and the same log-probs,
entropies and gradients as one row per sample on the real tiny Qwen3-VL (SDPA and eager attention)."""

from __future__ import annotations

import random

import pytest
import torch

from actors.learner_batch import Collator, PolicyLogprobs, TrainSample, shared_prefix_mask
from rl.core.data import chat_messages, load_image, load_split


def test_shared_prefix_mask_worked_by_hand():
    # [p p r1 r1 r2 r2 r2 pad]: the prompt is causal, each response sees the prompt and its own past.
    mask = shared_prefix_mask(torch.tensor([[0, 0, 1, 1, 2, 2, 2, -1]]))
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 0, 0, 0],
        [1, 1, 0, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 1, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 1],  # padding sees itself only
    ], dtype=torch.bool)
    assert mask.shape == (1, 1, 8, 8) and torch.equal(mask[0, 0], expected)


@pytest.fixture(scope="module")
def tiny(tiny_config, tiny_model_dir, synthetic_dir):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    mc = tiny_config.model
    hf_config = AutoConfig.from_pretrained(tiny_model_dir)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    rows = load_split(synthetic_dir / "train.jsonl").rows[:3]
    rng = random.Random(0)
    samples = []
    for row in rows:  # a prompt as the engine sees it: chat template, the image's pads expanded
        text = processor.apply_chat_template(chat_messages(row.prompt), add_generation_prompt=True)
        prompt = processor(text=[text], images=[load_image(row.image)], size=mc.processor_size(),
                           return_tensors="pt")["input_ids"][0].tolist()
        for _ in range(3):  # responses of different lengths
            response = [rng.randrange(16, len(processor.tokenizer)) for _ in range(rng.randint(3, 9))]
            samples.append(TrainSample(prompt, response, str(row.image)))
    samples[4].response_ids[1] = hf_config.image_token_id  # sampled as plain text
    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    collate = {share: Collator(str(tiny_model_dir), mc.processor_size(), hf_config, share_prompts=share)
               for share in (False, True)}
    return model, collate, samples, hf_config.image_token_id


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_rows_give_the_same_logprobs_entropy_and_gradients(tiny, attention):
    model, collate, samples, _ = tiny
    model.set_attn_implementation(attention)
    module = PolicyLogprobs(model, temperature=1.0, chunk_size=7).train()
    out = {}
    for share, c in collate.items():
        batch = c(samples)
        model.zero_grad()
        logp, entropy = module(dict(batch.inputs), batch.positions, batch.targets, with_entropy=True)
        logp.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        out[share] = (batch, logp.detach(), entropy.detach(), grads)
    (plain, logp0, ent0, grads0), (shared, logp1, ent1, grads1) = out[False], out[True]
    # 3 prompts x 3 responses: 9 rows alone, 3 shared, the prompt and its image once per row.
    assert plain.inputs["input_ids"].shape[0] == 9 and shared.inputs["input_ids"].shape[0] == 3
    assert shared.inputs["pixel_values"].shape[0] * 3 == plain.inputs["pixel_values"].shape[0]
    prompt = len(samples[0].prompt_ids)
    assert plain.num_tokens - shared.num_tokens == 2 * 3 * prompt
    assert shared.lengths == plain.lengths and torch.equal(shared.targets, plain.targets)
    assert logp0.shape == (sum(plain.lengths),)
    torch.testing.assert_close(logp1, logp0, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ent1, ent0, atol=2e-5, rtol=1e-5)
    assert grads0.keys() == grads1.keys() and len(grads0) > 10
    for name, g in grads0.items():
        torch.testing.assert_close(grads1[name], g, atol=1e-4, rtol=1e-3, msg=name)


def test_a_sampled_image_pad_stays_text_in_a_shared_row(tiny):
    _, collate, samples, image_token = tiny
    batch = collate[True](samples)
    types, ids, segments = (batch.inputs[k] for k in ("mm_token_type_ids", "input_ids", "segments"))
    assert ((ids == image_token) & (segments > 0)).sum() == 1  # the sampled one, in a response
    assert ((types == 1) == ((ids == image_token) & (segments == 0))).all()  # slots: the prompt's pads only
