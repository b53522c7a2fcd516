"""Benchmarks: `python -m rl.bench NAME [options]`.

Each bench prints human-readable lines and ends with exactly one JSON line (its machine-readable
result). Benches import what they need lazily, so listing them never pulls in torch or Ray.
Add one by writing `run(argv) -> dict` in a module and registering it in BENCHES.
"""

from __future__ import annotations

import importlib
import json
import sys

# name -> (module with `run(argv: list[str]) -> dict`, one-line description)
BENCHES: dict[str, tuple[str, str]] = {
    "rewards": ("rl.tools.bench_rewards", "score_batch vs a per-sample pure-Python reward, 20,000 completions"),
    "sync": ("rl.tools.bench_sync", "weight sync into R vLLM engines vs a raw broadcast of the same bytes"),
    "rollout": ("rl.tools.bench_rollout", "RolloutWorker over Ray vs vllm.LLM.generate in-process, tokens/s"),
    "learner": ("rl.tools.bench_learner", "GRPO update through Ray learner actors (DeepSpeed) vs a plain PyTorch loop"),
    "step": ("rl.tools.bench_step", "seconds per GRPO step, ours vs TRL's GRPOTrainer, same model, data, rewards"),
    "sft": ("rl.tools.bench_sft", "SFT samples/s, length-rebalanced micro-batches vs one random batch per step"),
}


def _usage() -> str:
    lines = ["usage: python -m rl.bench NAME [options]", "benches:"]
    lines += [f"  {name:12s} {description}" for name, (_, description) in BENCHES.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHES:
        print(f"unknown bench {name!r}\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHES[name][0])
    result = module.run(rest)
    print(json.dumps(result), flush=True)
    return 0

