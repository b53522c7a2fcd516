"""`python -m rl.bench step`: seconds per GRPO step of ours (rl.trainer.GRPOTrainer: vLLM engines, reward
service, DeepSpeed learner, weight sync, all Ray actors) vs TRL's `GRPOTrainer` (transformers generate
in-process) on the same tiny Qwen3-VL, the same prompts in the same order, the same reward (our
`rewards.score_batch`, called from TRL), group size, completion length, loss settings and optimizer,
the same number of steps, in one run.

Steps alternate: TRL's training loop runs, and after each of its optimizer steps a callback runs one of
ours, so the machine's noise hits both alike. The first `--warmup` steps of each are dropped; the median
of the rest counts (`ratio` = TRL seconds / ours). Both reward curves and our phase breakdown are reported.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

CACHE = Path(".cache/bench")
OUR_PHASES = ("rollout", "reward", "update", "sync")


class _OursStepError(RuntimeError):
    """Our step failed while TRL's loop was running it: not TRL's failure."""


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _overrides(args: argparse.Namespace, run_dir: Path) -> list[str]:
    sequences = args.prompts * args.group_size
    # The offline tiny model by default (built if absent); --model: any HF Qwen3-VL checkpoint, e.g. an SFT output.
    model = [f"model.path={args.model}", "model.tiny=null"] if args.model else [f"model.path={CACHE / 'tiny-qwen3vl'}"]
    return [
        "pipeline=[grpo]", *model, f"data.path={CACHE / 'step-data'}",
        f"data.synthetic.num_train={max(64, args.steps * args.prompts)}", "data.synthetic.num_val=8",
        "data.synthetic.num_test=8", f"grpo.prompts_per_step={args.prompts}", f"grpo.group_size={args.group_size}",
        # One step more than run: off-policy, every timed step then samples the next one ahead, as all but the
        # last step of a real run do (on-policy this changes nothing).
        f"grpo.num_steps={args.steps + 1}", f"grpo.dynamic_sampling={str(args.dynamic_sampling).lower()}",
        f"rollout.max_tokens={args.max_tokens}", f"learner.lr={args.lr}", "learner.warmup_steps=0",  # as TRL
        f"learner.micro_batch_size={min(args.micro_batch, sequences)}", f"learner.cpus_per_learner={args.threads}",
        f"checkpoint.dir={run_dir / 'ckpt'}", "checkpoint.resume=never", f"logging.dir={run_dir / 'runs'}",
        *args.set,
    ]


class Ours:
    """Our trainer driven step by step; records each step's seconds, phases and reward."""

    def __init__(self, cfg: Any):
        from rl.trainer import GRPOTrainer

        start = time.perf_counter()
        self.trainer = GRPOTrainer(cfg)
        self.startup_s = time.perf_counter() - start
        self.metrics: list[dict[str, float]] = []

    def old_logprob_pass_s(self, repeats: int = 3) -> float:
        """Seconds of one no-grad log-prob pass over the last step's batch: the pi_old pass inside our update
        (TRL's transformers mode skips it when one generation batch feeds one optimizer step)."""
        trained = self.trainer.state.trained
        samples = trained.samples if trained is not None else []
        times: list[float] = []
        for _ in range(repeats if samples else 0):
            start = time.perf_counter()
            self.trainer.learners.compute_logprobs(samples)
            times.append(time.perf_counter() - start)
        return _median(times)

    def step(self) -> dict[str, float]:
        start = time.perf_counter()
        m = self.trainer.train_step()
        m["bench/wall"] = time.perf_counter() - start
        self.metrics.append(m)
        print(f"ours step {len(self.metrics)}: {m['bench/wall']:.2f} s (rollout {m['time/rollout']:.2f}, reward "
              f"{m['time/reward']:.3f}, update {m['time/update']:.2f}, sync {m['time/sync']:.2f}) reward "
              f"{m['reward/total/mean']:.3f} len {m['response/length_mean']:.1f}", flush=True)
        return m

    def summary(self, warmup: int) -> dict[str, Any]:
        kept = self.metrics[warmup:]
        phases = {k: _median([m.get(f"time/{k}", 0.0) for m in kept]) for k in OUR_PHASES}
        # Driver-side rest: advantages, batching, metrics, the trainer's own bookkeeping. Off-policy, the
        # next step's rollout and reward run during the update, so the longer of the two counts.
        overlap = self.trainer.cfg.grpo.off_policy_lag
        phases["other"] = _median([m["bench/wall"] - m["time/sync"] - (
            max(m["time/update"], m["time/rollout"] + m["time/reward"]) if overlap
            else m["time/update"] + m["time/rollout"] + m["time/reward"]) for m in kept])
        step = _median([m["bench/wall"] for m in kept])
        phases["update_in_learner"] = _median([m.get("learner/seconds", float("nan")) for m in kept])
        return {"s_per_step": step, "mean_s_per_step": statistics.mean([m["bench/wall"] for m in kept]),
                "phases_s": phases, "startup_s": self.startup_s,
                "step_s": [m["bench/wall"] for m in self.metrics],
                "reward_curve": [m["reward/total/mean"] for m in self.metrics],
                "completion_len": [m["response/length_mean"] for m in self.metrics]}


def _trl_dataset(rows: list[Any]) -> Any:
    """Conversational prompts with the image in an "image" column (TRL inserts the image part in front
    of the text: the same [image, text] user turn as rl.core.data.chat_messages) and the reference answer."""
    from datasets import Dataset, Features, Image, Value

    from rl.core.data import load_image

    features = Features({"prompt": [{"role": Value("string"), "content": Value("string")}],
                         "image": Image(), "answer": Value("string")})
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": r.prompt}] for r in rows],
                              "image": [load_image(r.image) for r in rows],
                              "answer": [r.answer for r in rows]}, features=features)


def _run_trl(cfg: Any, args: argparse.Namespace, rows: list[Any], run_dir: Path, after_step: Any) -> dict[str, Any]:
    """TRL's GRPOTrainer for `args.steps` optimizer steps; `after_step()` runs after each (outside TRL's timing)."""
    import numpy as np
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rewards import score_batch
    from rl.core.model_parts import freeze_vision_encoder

    timing: dict[str, list[float]] = {"loop": [], "compute": [], "generate_score": [], "reward": []}
    history: list[dict[str, float]] = []

    def grounding(completions: list[Any], answer: list[str], completion_ids: list[list[int]],
                  **_: Any) -> list[float]:
        start = time.perf_counter()
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        total = score_batch(texts, answer, cfg.rewards, [len(ids) for ids in completion_ids])["total"]
        timing["reward"].append(time.perf_counter() - start)
        return np.asarray(total, dtype=float).tolist()

    class Alternate(TrainerCallback):
        def on_train_begin(self, *_: Any, **__: Any) -> None:
            self.mark = time.perf_counter()

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.begin = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            now = time.perf_counter()
            timing["compute"].append(now - self.begin)
            # From the end of the previous step's callback: also the previous step's logging and this
            # step's data loading, i.e. everything TRL's loop spends per step.
            timing["loop"].append(now - self.mark)
            gen = timing["generate_score"][-1] if timing["generate_score"] else float("nan")
            print(f"trl  step {len(timing['loop'])}: {timing['loop'][-1]:.2f} s (in-step {timing['compute'][-1]:.2f},"
                  f" generate+score {gen:.2f})", flush=True)
            after_step()
            self.mark = time.perf_counter()

        def on_log(self, _args: Any, _state: Any, _control: Any, logs: dict[str, float] | None = None,
                   **__: Any) -> None:
            if logs and "reward" in logs:
                history.append(dict(logs))

    sequences = args.prompts * args.group_size
    micro = min(args.micro_batch, sequences)
    accumulation = sequences // micro  # one optimizer step = one generation batch = prompts x G
    config = GRPOConfig(
        output_dir=str(run_dir / "trl"), report_to="none", use_cpu=True, bf16=False, seed=cfg.seed,
        max_steps=args.steps, logging_steps=1, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
        per_device_train_batch_size=micro, gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation, num_generations=args.group_size, num_iterations=1,
        max_completion_length=args.max_tokens, use_vllm=False, shuffle_dataset=False, remove_unused_columns=False,
        temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, top_k=max(cfg.rollout.top_k, 0),
        # The same objective and optimizer as ours: token-mean (DAPO) loss, clip 0.2 / 0.28, no KL,
        # group-normalised advantages, AdamW, constant lr, grad clip.
        learning_rate=cfg.learner.lr, lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        adam_beta1=cfg.learner.adam_beta1, adam_beta2=cfg.learner.adam_beta2, adam_epsilon=cfg.learner.adam_eps,
        weight_decay=cfg.learner.weight_decay, max_grad_norm=cfg.learner.grad_clip, beta=cfg.grpo.kl_coef,
        epsilon=cfg.grpo.clip_low, epsilon_high=cfg.grpo.clip_high, loss_type="dapo", scale_rewards="group",
        log_completions=False,
    )
    processor = AutoProcessor.from_pretrained(cfg.model.path)
    processor.image_processor.size = cfg.model.processor_size()  # the pixel limits our engines and learner use
    start = time.perf_counter()
    model = AutoModelForImageTextToText.from_pretrained(cfg.model.path, dtype=torch.float32)
    if cfg.learner.freeze_vision:  # as our learner: no gradients into the vision encoder, no Adam state for it
        freeze_vision_encoder(model, "learner.freeze_vision")
    trainer = GRPOTrainer(model=model, reward_funcs=grounding, args=config,
                          train_dataset=_trl_dataset(rows), processing_class=processor,
                          callbacks=[Alternate()])
    startup = time.perf_counter() - start
    inner = trainer._generate_and_score_completions

    def timed(*a: Any, **k: Any) -> Any:
        mark = time.perf_counter()
        out = inner(*a, **k)
        timing["generate_score"].append(time.perf_counter() - mark)
        return out

    trainer._generate_and_score_completions = timed
    trainer.train()
    return {"startup_s": startup, "timing": timing, "logs": history}


def run(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m rl.bench step")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=4, help="G samples per prompt (TRL's num_generations)")
    parser.add_argument("--max-tokens", type=int, default=32, help="max completion tokens")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps of each trainer")
    parser.add_argument("--warmup", type=int, default=1, help="first steps of each left out of the timing")
    parser.add_argument("--model", help="HF checkpoint to start both from (default: the tiny random Qwen3-VL)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--micro-batch", type=int, default=8, help="sequences per forward/backward, both sides")
    # 1: on a shared 2-core machine two OpenMP threads per process stall each other (TRL took 10-30 s/step).
    parser.add_argument("--threads", type=int, default=1, help="torch threads of TRL's process and of our learner")
    parser.add_argument("--dynamic-sampling", action="store_true",
                        help="ours drops zero-variance groups and refills (more rollouts than TRL; off by default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override (ours; TRL follows the shared lr/optimizer/sampling keys)")
    parser.add_argument("--only", choices=("both", "ours", "trl"), default="both")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error("--steps must exceed --warmup")

    import ray
    import torch

    from rl.cluster import connect
    from rl.core.config import load_config
    from rl.core.data import PromptOrder, load_configured_split
    from rl.core.platform import apply_env, get_platform
    from rl.core.synthetic import ensure_dataset
    from rl.tiny import ensure_model

    torch.set_num_threads(args.threads)  # TRL trains and generates in this process
    run_dir = Path(tempfile.mkdtemp(prefix="bench-step-"))
    cfg = load_config(overrides=_overrides(args, run_dir))
    platform = get_platform(cfg.cluster.platform)
    apply_env(platform)
    ensure_model(cfg.model)
    root = ensure_dataset(cfg.data)
    train = load_configured_split(cfg, root / f"{cfg.data.split}.jsonl", "raise").rows
    # TRL (shuffle off) gets exactly the prompts ours draws, in the same order.
    order = PromptOrder(len(train), cfg.seed).take(args.steps * args.prompts)
    rows = [train[i] for i in order]
    print(f"{args.prompts} prompts x {args.group_size} samples, <= {args.max_tokens} tokens, {args.steps} steps each "
          f"(first {args.warmup} left out), lr {args.lr}, micro-batch {args.micro_batch}, torch threads {args.threads}",
          flush=True)

    ours: Ours | None = None
    old_pass = float("nan")
    started = False
    trl: dict[str, Any] | None = None
    trl_error: str | None = None
    def ours_step() -> None:
        if ours is None:
            return
        try:
            ours.step()
        except Exception as exc:
            raise _OursStepError("our train_step failed (run between TRL steps)") from exc

    try:
        if args.only in ("both", "ours"):
            started = connect(cfg, platform)
            ours = Ours(cfg)
            print(f"ours: start-up {ours.startup_s:.1f} s (Ray actors, vLLM engine, DeepSpeed learner)", flush=True)
        if args.only in ("both", "trl"):
            try:
                trl = _run_trl(cfg, args, rows, run_dir, ours_step)
            except _OursStepError:
                raise
            except Exception as exc:  # reported, never faked: the JSON carries the reason
                trl_error = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
        while ours is not None and len(ours.metrics) < args.steps:  # TRL failed or was not run
            ours.step()
        if ours is not None:
            old_pass = ours.old_logprob_pass_s()
    finally:
        if ours is not None:
            ours.trainer.shutdown()
        if started:
            ray.shutdown()
        shutil.rmtree(run_dir, ignore_errors=True)

    micro = min(args.micro_batch, args.prompts * args.group_size)
    result: dict[str, Any] = {"bench": "step", "ratio": None, "prompts": args.prompts, "group_size": args.group_size,
                              "max_tokens": args.max_tokens, "steps": args.steps, "warmup": args.warmup,
                              "lr": args.lr, "micro_batch": micro, "threads": args.threads,
                              "dynamic_sampling": args.dynamic_sampling, "off_policy_lag": cfg.grpo.off_policy_lag,
                              "freeze_vision": cfg.learner.freeze_vision, "share_prompts": cfg.learner.share_prompts,
                              "trl_error": trl_error}
    if ours is not None:
        result |= _report_ours(ours.summary(args.warmup) | {"old_logprob_pass_s": old_pass}, args)
    if trl is not None:
        result |= _report_trl(trl, args)
        ran = len(trl["timing"]["loop"])
        if ours is not None and ran == args.steps:
            result["ratio"] = round(result["trl_s_per_step"] / result["ours_s_per_step"], 3)
            print(f"TRL s/step / ours s/step = {result['ratio']}")
        elif ran != args.steps:
            result["trl_error"] = f"TRL ran {ran} of {args.steps} steps"
    return result


def _report_ours(o: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    p = o["phases_s"]
    print(f"ours: {o['s_per_step']:.2f} s/step (median of {args.steps - args.warmup}); rollout {p['rollout']:.2f}, "
          f"reward {p['reward']:.3f}, update {p['update']:.2f} (in the learner {p['update_in_learner']:.2f}, of which "
          f"the pi_old pass ~{o['old_logprob_pass_s']:.2f}), sync {p['sync']:.2f}, other {p['other']:.2f}; "
          f"start-up {o['startup_s']:.1f} s")
    print(f"ours reward curve: {_rounded(o['reward_curve'])}")
    return {"ours_s_per_step": round(o["s_per_step"], 3), "ours_mean_s_per_step": round(o["mean_s_per_step"], 3),
            "ours_phases_s": _rounded(p), "ours_old_logprob_pass_s": _rounded(o["old_logprob_pass_s"]),
            "ours_startup_s": round(o["startup_s"], 1),
            "ours_step_s": _rounded(o["step_s"]), "ours_reward_curve": _rounded(o["reward_curve"]),
            "ours_completion_len": _rounded(o["completion_len"])}


def _report_trl(trl: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    t, logs, k = trl["timing"], trl["logs"], args.warmup
    loop, gen, reward = t["loop"][k:], t["generate_score"][k:], t["reward"][k:]
    step = _median(loop)
    phases = {"generate": _median([g - r for g, r in zip(gen, reward, strict=False)]), "reward": _median(reward),
              "update_and_rest": _median([s - g for s, g in zip(loop, gen, strict=False)])}
    curve = [x["reward"] for x in logs]
    print(f"trl: {step:.2f} s/step (median of {len(loop)}); generate {phases['generate']:.2f}, reward "
          f"{phases['reward']:.3f}, update and rest {phases['update_and_rest']:.2f}; start-up {trl['startup_s']:.1f} s")
    print(f"trl reward curve: {_rounded(curve)}")
    return {"trl_s_per_step": round(step, 3), "trl_mean_s_per_step": round(statistics.mean(loop), 3) if loop else None,
            "trl_in_step_s": round(_median(t["compute"][k:]), 3), "trl_phases_s": _rounded(phases),
            "trl_startup_s": round(trl["startup_s"], 1), "trl_step_s": _rounded(t["loop"]),
            "trl_reward_curve": _rounded(curve),
            "trl_completion_len": _rounded([x.get("completions/mean_length", float("nan")) for x in logs])}


def _rounded(value: Any) -> Any:
    """4 decimals; NaN (a phase that was not measured) as null, so the line stays valid JSON."""
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    value = float(value)
    return round(value, 4) if math.isfinite(value) else None
