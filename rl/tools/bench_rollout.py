"""`python -m rl.bench rollout`: the same prompts (with images, G samples each) through `vllm.LLM.generate`
in this process and through `RolloutWorker` actors over Ray, at the same engine count (one), in one run.

Rounds alternate direct / Ray so the machine's noise hits both alike; the median round counts. Also
reports how close vLLM's sampling log-probs are to a transformers forward pass of the same model.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

CACHE = Path(".cache/bench")


def reference_logprobs(model, processor, image, prompt_text: str, prompt_ids: list[int],
                       response_ids: list[int]) -> torch.Tensor:
    """log p(response token | prefix) from a transformers forward over prompt + response, with the
    engine's logit bias on the vision tokens (the distribution vLLM samples and reports).  # [T]"""
    from rl.core.model_parts import VISION_TOKEN_BIAS, vision_token_ids

    inputs = processor(text=[prompt_text], images=[image], return_tensors="pt")
    if inputs["input_ids"][0].tolist() != prompt_ids:
        raise ValueError("processor prompt ids differ from the engine's: the two sides disagree on the image")
    ids = torch.tensor([prompt_ids + response_ids])
    # Response tokens are text (type 0); M-RoPE needs the type of every token.
    types = torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(response_ids), dtype=torch.long)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=inputs["pixel_values"],
                       image_grid_thw=inputs["image_grid_thw"], mm_token_type_ids=types,
                       ).logits[0, len(prompt_ids) - 1:-1]
    logits[:, vision_token_ids(model.config)] += VISION_TOKEN_BIAS
    return logits.log_softmax(-1).gather(-1, torch.tensor(response_ids)[:, None])[:, 0]


def run(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m rl.bench rollout")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import ray

    from actors.rollout import ENGINE_ENV, RolloutPool, build_engine, engine_inputs, sampling_params
    from rl.core.config import load_config
    from rl.core.data import load_configured_split
    from rl.core.platform import apply_env, get_platform
    from rl.core.synthetic import ensure_dataset
    from rl.tiny import ensure_model

    cfg = load_config(overrides=[f"model.path={CACHE / 'tiny-qwen3vl'}", f"data.path={CACHE / 'synthetic'}",
                                 "data.synthetic.num_train=8", f"data.synthetic.num_val={args.prompts}",
                                 f"rollout.max_tokens={args.max_tokens}", "rollout.num_workers=1"])
    platform = get_platform(cfg.cluster.platform)
    apply_env(platform)
    os.environ.update(ENGINE_ENV)  # the direct engine is built exactly as a RolloutWorker builds its own
    ensure_model(cfg.model)
    rows = load_configured_split(cfg, ensure_dataset(cfg.data) / f"{cfg.data.val_split}.jsonl", "raise").rows
    rows = rows[: args.prompts]
    # Long enough answers to time decoding, not start-up: no early EOS from the random model matters here.
    params = sampling_params(cfg.rollout, n=args.group_size)

    direct = build_engine(cfg.model, cfg.rollout, platform)
    inputs = engine_inputs(rows, direct.get_tokenizer())
    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(Path.cwd())}})
    pool = RolloutPool(cfg)

    def direct_round() -> tuple[int, float]:
        start = time.perf_counter()
        outs = direct.generate(inputs, params, use_tqdm=False)
        return sum(len(o.token_ids) for out in outs for o in out.outputs), time.perf_counter() - start

    def ray_round() -> tuple[int, float]:
        start = time.perf_counter()
        results = pool.generate(rows, n=args.group_size)
        return sum(len(s.response_ids) for r in results for s in r.samples), time.perf_counter() - start

    direct_round(), ray_round()  # warm-up: first generate compiles kernels
    direct_tps, ray_tps = [], []
    for i in range(args.rounds):
        for fn, sink in ((direct_round, direct_tps), (ray_round, ray_tps)):
            tokens, seconds = fn()
            sink.append(tokens / seconds)
        print(f"round {i}: direct {direct_tps[-1]:.0f} tok/s, ray {ray_tps[-1]:.0f} tok/s")

    diff = _logprob_agreement(cfg, pool, rows[:2])
    pool.shutdown()
    ray.shutdown()
    d, r = statistics.median(direct_tps), statistics.median(ray_tps)
    print(f"direct vllm.LLM: {d:.0f} tok/s; RolloutWorker over Ray: {r:.0f} tok/s (1 engine each)")
    print(f"log-prob vs transformers: max abs diff {diff.max():.2e}, mean {diff.mean():.2e}")
    return {"bench": "rollout", "ratio": round(r / d, 3), "direct_tokens_per_s": round(d, 1),
            "ray_tokens_per_s": round(r, 1), "engines": 1, "prompts": len(rows), "group_size": args.group_size,
            "logprob_max_abs_diff": float(diff.max()), "logprob_mean_abs_diff": float(diff.mean())}


def _logprob_agreement(cfg, pool, rows) -> torch.Tensor:
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from actors.rollout import render_prompt
    from rl.core.data import load_image

    processor = AutoProcessor.from_pretrained(cfg.model.path)
    model = Qwen3VLForConditionalGeneration.from_pretrained(cfg.model.path).eval()
    diffs = []
    for row, result in zip(rows, pool.generate(rows, n=4), strict=True):
        text = render_prompt(processor.tokenizer, row.prompt)
        for sample in result.samples:
            ref = reference_logprobs(model, processor, load_image(row.image), text, result.prompt_ids,
                                     sample.response_ids)
            diffs.append((ref - torch.tensor(sample.logprobs)).abs())
    return torch.cat(diffs)
