"""`python -m rl.bench learner`: one GRPO update through the Ray learner actors (DeepSpeed ZeRO-3) vs a
plain single-process PyTorch loop doing the same forward / backward / step on the same batch.

Both sides collate the same `TrainSample`s (prompts of the configured data, chat-templated with their
image; random response tokens; advantages from random rewards), compute per-token log-probs the same
way (rl.core.grpo.token_logprobs), the same GRPO loss over the same micro-batches, clip gradients and take
AdamW steps, with the same number of CPU threads and the same process priority. Old log-probs are
given, so neither side spends a pass on them. Timing is wall clock around a whole update, as the
driver sees it; best of --repeat after one warm-up update, the sides interleaved round by round. The
same batch also goes through 2 learners (ZeRO-3 across 2 processes, the same threads each) for scaling.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _samples(cfg: Any, prompts: int, group: int, response_tokens: int, seed: int) -> list[Any]:
    import torch
    from transformers import AutoProcessor

    from actors.learner import TrainSample
    from rl.core.data import chat_messages, load_configured_split, load_image
    from rl.core.grpo import group_advantages

    rows = load_configured_split(cfg, Path(cfg.data.path) / f"{cfg.data.split}.jsonl", "raise").rows[:prompts]
    if len(rows) < prompts:
        raise SystemExit(f"{cfg.data.path}/{cfg.data.split}.jsonl has {len(rows)} rows, need {prompts}")
    processor = AutoProcessor.from_pretrained(cfg.model.path, trust_remote_code=cfg.model.trust_remote_code)
    gen = torch.Generator().manual_seed(seed)
    vocab = len(processor.tokenizer)
    rewards = torch.rand(prompts * group, generator=gen)
    advantages = group_advantages(rewards, group).tolist()
    out = []
    for p, row in enumerate(rows):
        text = processor.apply_chat_template(chat_messages(row.prompt), add_generation_prompt=True)
        ids = processor(text=[text], images=[load_image(row.image)], size=cfg.model.processor_size(),
                        return_tensors="pt")["input_ids"][0].tolist()
        for g in range(group):
            # Ordinary text tokens (ids past the special tokens) of a fixed length: a fixed amount of work.
            response = torch.randint(16, vocab, (response_tokens,), generator=gen).tolist()
            out.append(TrainSample(ids, response, str(row.image), advantage=advantages[p * group + g]))
    return out


def _fill_old_logprobs(group: Any, samples: list[Any]) -> None:
    for s, lp in zip(samples, group.compute_logprobs(samples), strict=True):
        s.old_logprobs = lp


class PlainLoop:
    """The same update with no Ray and no DeepSpeed: model, AdamW, micro-batches, clip, step."""

    def __init__(self, cfg: Any, threads: int):
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText

        from actors.learner_batch import Collator, PolicyLogprobs
        from rl.core.model_parts import freeze_vision_encoder, optimizer_groups

        torch.set_num_threads(threads)
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        mc, lc = cfg.model, cfg.learner
        # The same rows as the learner's (learner.share_prompts): the bench measures the plumbing.
        self.collate = Collator(mc.path, mc.processor_size(), AutoConfig.from_pretrained(mc.path),
                                mc.trust_remote_code, share_prompts=lc.share_prompts)
        policy = AutoModelForImageTextToText.from_pretrained(mc.path, dtype=torch.float32)
        self.model = PolicyLogprobs(policy, cfg.rollout.temperature or 1.0, lc.logprob_chunk_size).train()
        if lc.freeze_vision:  # the learner's own choice of trainable weights and optimizer groups
            freeze_vision_encoder(policy, "learner.freeze_vision")
        self.opt = torch.optim.AdamW(optimizer_groups(self.model, lc.weight_decay),
                                     lr=lc.lr, betas=(lc.adam_beta1, lc.adam_beta2), eps=lc.adam_eps)

    def update(self, samples: list[Any]) -> float:
        import torch

        from rl.core.chunks import balanced_sizes
        from rl.core.grpo import grpo_loss

        lc, g = self.cfg.learner, self.cfg.grpo
        loss_sum, start = 0.0, 0
        for size in balanced_sizes(len(samples), g.num_mini_batches):
            mini = samples[start:start + size]
            start += size
            tokens = float(sum(len(s.response_ids) for s in mini))
            for i in range(0, len(mini), lc.micro_batch_size):
                b = self.collate(mini[i:i + lc.micro_batch_size])
                flat, _ = self.model(b.inputs, b.positions, b.targets, with_entropy=True)
                logp = torch.nn.utils.rnn.pad_sequence(list(flat.split(b.lengths)), batch_first=True)
                loss, _ = grpo_loss(logp, b.old_logprobs, b.advantages, b.mask, clip_low=g.clip_low,
                                    clip_high=g.clip_high, dual_clip=g.dual_clip, loss_agg=g.loss_agg,
                                    num_tokens=tokens, num_seqs=len(mini), max_len=self.cfg.rollout.max_tokens)
                loss.backward()
                loss_sum += loss.item()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), lc.grad_clip)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return loss_sum


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(argv: list[str]) -> dict:
    import ray

    from actors.learner import LearnerGroup
    from rl.core.config import load_config
    from rl.core.platform import apply_env, get_platform
    from rl.core.synthetic import ensure_dataset
    from rl.tiny import ensure_model

    parser = argparse.ArgumentParser(prog="python -m rl.bench learner")
    parser.add_argument("--config", default=None, help="YAML config (default conf/default.yaml)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8, help="samples per prompt")
    parser.add_argument("--response-tokens", type=int, default=64)
    parser.add_argument("--micro", type=int, default=8, help="micro-batch size")
    # One thread per learner by default: on a small shared machine, 2 OpenMP threads per process slow
    # down by 10x whenever a neighbour takes a core (threads wait on each other at every barrier).
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per learner and for the plain loop")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many timed updates per side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args(argv)

    sequences = args.prompts * args.group
    cfg = load_config(args.config, [*args.overrides, f"grpo.prompts_per_step={args.prompts}",
                                    f"grpo.group_size={args.group}", f"learner.micro_batch_size={args.micro}",
                                    f"learner.cpus_per_learner={args.threads}", "learner.num_learners=1",
                                    "grpo.kl_coef=0.0"])
    platform = get_platform(cfg.cluster.platform)
    apply_env(platform)
    ensure_model(cfg.model)
    ensure_dataset(cfg.data)
    samples = _samples(cfg, args.prompts, args.group, args.response_tokens, args.seed)
    tokens = sum(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    print(f"learner: {sequences} sequences ({args.prompts} prompts x {args.group}), {tokens} tokens "
          f"({args.response_tokens} response tokens each), micro-batch {args.micro}, {args.threads} threads, "
          f"ZeRO-{cfg.learner.zero_stage}, {platform.dtype(cfg.model.dtype)}")

    started_ray = not ray.is_initialized()
    if started_ray:
        # A private local Ray on loopback: a measurement must not land on someone else's cluster. Ray
        # starts workers at niceness 15; the plain loop runs here, in the driver. Same niceness for both,
        # or on a shared machine the neighbours take the actors' CPU and not the plain loop's.
        ray.init(address="local", num_cpus=3 * args.threads, include_dashboard=False, logging_level="WARNING",
                 _node_ip_address="127.0.0.1", _system_config={"worker_niceness": os.nice(0)},
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    one = two = None
    try:
        one = LearnerGroup(cfg, name_prefix="bench-learner1")
        two = LearnerGroup(cfg.model_copy(update={"learner": cfg.learner.model_copy(update={"num_learners": 2})}),
                           name_prefix="bench-learner2")
        plain = PlainLoop(cfg, args.threads)
        _fill_old_logprobs(one, samples)  # given to every side: the update alone is timed
        sides: dict[str, Callable[[], Any]] = {
            "ours": lambda: one.update(samples), "plain": lambda: plain.update(samples),
            "two": lambda: two.update(samples)}
        for fn in sides.values():
            fn()  # warm-up: first-call allocations, DeepSpeed's lazy set-up
        # Rounds interleave the sides, so a busy neighbour on a shared machine slows all of them alike.
        best = {name: float("inf") for name in sides}
        for _ in range(args.repeat):
            for name, fn in sides.items():
                best[name] = min(best[name], _timed(fn))
        metrics = one.update(samples)
    finally:
        for group in (one, two):
            if group is not None:
                group.shutdown()
        if started_ray:
            ray.shutdown()
    ours_s, base_s, two_s = best["ours"], best["plain"], best["two"]
    ours, base, two = tokens / ours_s, tokens / base_s, tokens / two_s
    print(f"  learner actor (Ray + DeepSpeed, 1 learner): {ours_s * 1e3:8.0f} ms  {ours:9,.0f} tokens/s  "
          f"(loss {metrics['loss']:.4f}, grad norm {metrics['grad_norm']:.3f})")
    print(f"  plain PyTorch loop (1 process)            : {base_s * 1e3:8.0f} ms  {base:9,.0f} tokens/s")
    print(f"  learner actors, 2 learners x {args.threads} thread(s)    : {two_s * 1e3:8.0f} ms  "
          f"{two:9,.0f} tokens/s")
    print(f"  ratio {ours / base:.2f} (target >= 0.8 at one learner); 2-learner scaling {two / ours:.2f}x "
          f"on {os.cpu_count()} cores")
    return {
        "bench": "learner",
        "ratio": round(ours / base, 3),
        "ours_tokens_per_s": round(ours, 1),
        "baseline_tokens_per_s": round(base, 1),
        "two_learners_tokens_per_s": round(two, 1),
        "scaling_2_learners": round(two / ours, 3),
        "tokens": tokens,
        "sequences": sequences,
        "threads": args.threads,
        "cores": os.cpu_count(),
    }

