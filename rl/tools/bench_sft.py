"""`python -m rl.bench sft`: SFT training throughput with length-rebalanced micro-batches
(`sft.sampling=batch_rebalance`, 16 rows x 2 accumulation steps) vs one random batch of the same 32 rows per
step (`sft.sampling=random`, 32 x 1), both through rl.sft's trainer (TRL's SFTTrainer).

The two sides differ only in how a step's rows are cut into micro-batches; the gradient of a step is the same
sum over its rows (transformers normalises by the step's answer tokens). Each side trains --steps steps from
the tiny random model on the demo's synthetic data with the same seed and threads; the Trainer's own timing
(rl.sft_callbacks.Scalars: training steps only, no evaluation or checkpointing) gives samples/s. The sides
alternate for --rounds rounds; the best round of each counts.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

CACHE = Path(".cache/bench")
OURS = ["sft.sampling=batch_rebalance", "sft.micro_batch_size=16", "sft.grad_accum_steps=2"]
BASELINE = ["sft.sampling=random", "sft.micro_batch_size=32", "sft.grad_accum_steps=1"]


def _overrides(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        f"model.path={CACHE / 'tiny-qwen3vl'}", f"data.path={CACHE / 'sft-data'}", f"logging.dir={out / 'runs'}",
        f"sft.output_dir={out / 'sft'}", f"sft.state_dir={out / 'steps'}", "sft.resume=never",
        f"sft.num_steps={args.steps}", "sft.eval_every=0", "sft.grounding_eval_rows=0", f"sft.log_every={args.steps}",
        *args.set,
    ]


def _train(args: argparse.Namespace, side: list[str]) -> float:
    from rl.core.config import load_config
    from rl.sft import train_sft

    out = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    try:
        return train_sft(load_config(overrides=[*_overrides(args, out), *side])).samples_per_s
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m rl.bench sft")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of each side per round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each side counts")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of both sides")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for both sides, e.g. --set sft.micro_batch_size=8")
    args = parser.parse_args(argv)

    import torch

    from rl.core.config import load_config
    from rl.core.synthetic import ensure_dataset
    from rl.tiny import ensure_model

    torch.set_num_threads(args.threads)
    cfg = load_config(overrides=[*_overrides(args, Path(tempfile.gettempdir())), *OURS])
    ensure_model(cfg.model)
    ensure_dataset(cfg.data)
    s = cfg.sft
    ours_label = f"sampling={s.sampling}, {s.micro_batch_size} x {s.grad_accum_steps}"
    print(f"{args.steps} steps per side and round, {args.rounds} rounds, torch threads {args.threads}; "
          f"ours: {ours_label}; baseline: random batches of 32", flush=True)
    ours: list[float] = []
    base: list[float] = []
    for round_ in range(args.rounds):
        ours.append(_train(args, OURS))
        base.append(_train(args, BASELINE))
        print(f"  round {round_ + 1}: ours {ours[-1]:.1f} samples/s, baseline {base[-1]:.1f} samples/s", flush=True)
    best, best_base = max(ours), max(base)
    print(f"  ratio {best / best_base:.2f} (ours / baseline samples/s, best rounds)", flush=True)
    return {"bench": "sft", "ours": ours_label, "baseline": "sampling=random, 32 x 1", "steps": args.steps,
            "threads": args.threads, "ours_samples_per_s": round(best, 2),
            "baseline_samples_per_s": round(best_base, 2), "ratio": round(best / best_base, 3)}
