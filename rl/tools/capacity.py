"""Capacity plan on paper: memory per GPU and seconds per GRPO step for a config on a stated model and
hardware. docs/scaling.md quotes `python -m rl.tools.capacity CONFIG...`; a test keeps the two equal.

Every figure is arithmetic on the config (layout, batch, lengths, pixels) and on the stated
assumptions below (model shape, MI210 datasheet, efficiencies, link speeds). The efficiencies are
assumptions, not measurements; change them here and the doc's numbers follow.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from rl.core.config import Config, load_config

GB = 1e9


@dataclass(frozen=True)
class ModelSpec:
    """Qwen3-VL-8B (MedMO-8B's base), from its config.json; `MODELS` holds the other sizes."""

    hidden: int = 4096
    layers: int = 36
    heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    intermediate: int = 12288
    vocab: int = 151936
    tied: bool = False  # lm_head shares the input embedding (the small Qwen3-VL models)
    vision_hidden: int = 1152
    vision_layers: int = 27
    vision_intermediate: int = 4304
    patch: int = 16
    merge: int = 2  # 2 x 2 patches merge into one LLM token: one visual token per 32 x 32 pixels
    deepstack: int = 3  # extra mergers feeding vision features into LLM layers

    @property
    def llm_params(self) -> float:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        attention = 2 * h * self.heads * self.head_dim + 2 * h * kv  # q, o + k, v
        return self.layers * (attention + 3 * h * self.intermediate) + (1 if self.tied else 2) * self.vocab * h

    @property
    def vision_params(self) -> float:
        v, merged = self.vision_hidden, self.vision_hidden * self.merge**2
        blocks = self.vision_layers * (4 * v * v + 2 * v * self.vision_intermediate)
        mergers = (1 + self.deepstack) * (merged * merged + merged * self.hidden)
        return blocks + mergers + 3 * 2 * self.patch**2 * v  # + the (temporal 2) patch embedding

    @property
    def params(self) -> float:
        return self.llm_params + self.vision_params

    def kv_bytes_per_token(self) -> float:
        return 2 * self.layers * self.kv_heads * self.head_dim * 2  # K and V, bf16

    def image_tokens(self, pixels: int) -> int:
        return pixels // (self.patch * self.merge) ** 2


@dataclass(frozen=True)
class Hardware:
    """AMD Instinct MI210 (datasheet: 64 GB HBM2e, 1.6 TB/s, 181 TFLOPs dense bf16; no FP8) in 8-GPU
    nodes, and the efficiencies and links this plan assumes."""

    hbm_gb: float = 64
    hbm_tb_s: float = 1.6
    bf16_tflops: float = 181
    train_mfu: float = 0.35  # ZeRO-3 training with activation checkpointing
    prefill_mfu: float = 0.40  # vLLM prefill (compute-bound)
    decode_bw_eff: float = 0.60  # share of HBM bandwidth a memory-bound decode step reaches
    intra_node_gb_s: float = 25  # RCCL ring bandwidth per GPU in a node (two xGMI hives joined by PCIe 4)
    nic_gb_s: float = 25  # one 200 Gb/s NIC (HDR InfiniBand / RoCE) ...
    nics_per_node: int = 2  # ... two per node: 50 GB/s leave a node, 6.25 GB/s per GPU when all 8 send
    runtime_gb: float = 3  # HIP context, RCCL buffers, allocator slack per process
    sync_efficiency: float = 0.58  # our weight sync vs a raw broadcast (measured, README: bench sync)


# `--model`: Qwen3-VL-2B from its config.json (Qwen3-1.7B language model, tied embeddings; 24 x 1024 tower).
MODELS = {
    "qwen3vl-8b": ModelSpec(),
    "qwen3vl-2b": ModelSpec(hidden=2048, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=6144,
                            tied=True, vision_hidden=1024, vision_layers=24, vision_intermediate=4096),
}
# `--gpu`: the MI210 plan's card, and an 80 GB NVIDIA H100 SXM (datasheet: 3.35 TB/s HBM3, 989 TFLOPs dense
# bf16; NVLink ring ~150 GB/s per GPU reached; 8 x 400 Gb/s NICs per node), same efficiencies assumed.
GPUS = {
    "mi210": Hardware(),
    "h100": Hardware(hbm_gb=80, hbm_tb_s=3.35, bf16_tflops=989, intra_node_gb_s=150, nic_gb_s=50, nics_per_node=8),
}


@dataclass(frozen=True)
class Workload:
    """What the data does, which the config cannot say."""

    text_prompt_tokens: int = 100  # instruction + label vocabulary around the image
    mean_response_tokens: int = 128  # "Label <box>[[x1, y1, x2, y2], ...]</box>" answers are short
    refill_factor: float = 1.25  # dynamic sampling: extra rollout for groups with identical rewards
    dataset_prompts: int = 300_000  # the GRPO stage


def _bandwidth(cfg: Config, hw: Hardware, ranks: int) -> float:
    """GB/s per GPU for a collective over `ranks` GPUs packed by node: the NICs bound it once it spans nodes."""
    per_node = cfg.cluster.gpus_per_node or 8
    if ranks <= per_node:
        return hw.intra_node_gb_s
    return min(hw.intra_node_gb_s, hw.nic_gb_s * hw.nics_per_node / per_node)


def _zero3_memory(cfg: Config, m: ModelSpec, hw: Hardware, ranks: int, micro_batch: int,
                  logits_gb: float) -> dict[str, float]:
    """GB per training GPU. ZeRO-3 shards bf16 params (2 B), bf16 grads (2 B) and fp32 master + Adam m, v
    (12 B) over `ranks`; activations are the micro-batch at max_model_len with per-layer checkpointing."""
    lc, n = cfg.learner, m.params
    tokens = micro_batch * cfg.model.max_model_len
    patches = micro_batch * m.image_tokens(cfg.model.max_pixels) * m.merge**2
    offload = 12 if lc.offload_optimizer else 0  # bytes/param moved to host memory
    out = {
        "params": 2 * n / ranks / GB,
        "grads": 2 * n / ranks / GB,
        "optimizer": (12 - offload) * n / ranks / GB,
        # checkpointing keeps each layer's input (2 B x hidden per token) and recomputes one layer at a
        # time, ~34 x hidden bytes per token with flash attention (Korthikanti et al. 2022)
        "activations": (tokens * m.layers * m.hidden * 2 + 34 * m.hidden * tokens
                        + patches * m.vision_layers * m.vision_hidden * 2 + 34 * m.vision_hidden * patches) / GB,
        "logits": logits_gb,
        "zero3_buffers": (2 * 1e9 + 2 * 5e8) / GB,  # DeepSpeed defaults: 1e9 live params, 5e8 reduce bucket
        "runtime": hw.runtime_gb,
    }
    out["total"] = sum(out.values())
    return out


def learner_memory(cfg: Config, m: ModelSpec, hw: Hardware) -> dict[str, float]:
    """GB per GRPO learner GPU: ZeRO-3 over the learners, a log-prob chunk at a time, the KL reference."""
    lc = cfg.learner
    logits = 2 * lc.logprob_chunk_size * m.vocab * 4 / GB  # fp32 chunk + its gradient
    out = _zero3_memory(cfg, m, hw, lc.num_learners, lc.micro_batch_size, logits)
    total = out.pop("total")
    out["reference"] = 2 * m.params / lc.num_learners / GB if cfg.grpo.kl_coef > 0 else 0.0
    out["total"] = total + out["reference"]
    return out


def sft_memory(cfg: Config, m: ModelSpec, hw: Hardware) -> dict[str, float]:
    """GB per SFT GPU: ZeRO-3 over sft.num_processes (the learner's DeepSpeed setup, rl/sft.py). The loss
    sees the whole micro-batch's logits: bf16, their fp32 copy and its gradient = 10 B per token x vocab."""
    s = cfg.sft
    logits = s.micro_batch_size * cfg.model.max_model_len * m.vocab * 10 / GB
    return _zero3_memory(cfg, m, hw, s.num_processes, s.micro_batch_size, logits)


def engine_memory(cfg: Config, m: ModelSpec, hw: Hardware) -> dict[str, float]:
    """GB per rollout GPU: its 1/TP of the bf16 weights, the KV cache vLLM gets from the rest of
    gpu_memory_utilization, and how many full-length sequences that cache holds."""
    tp, r = cfg.rollout.tensor_parallel_size, cfg.rollout
    budget = hw.hbm_gb * r.gpu_memory_utilization
    weights = 2 * m.params / tp / GB
    kv = budget - weights - hw.runtime_gb
    kv_tokens = kv * GB / (m.kv_bytes_per_token() / tp)
    seqs = cfg.grpo.prompts_per_step * cfg.grpo.group_size / r.num_workers
    return {"budget": budget, "weights": weights, "kv_cache": kv, "kv_tokens": kv_tokens,
            "full_length_seqs": kv_tokens / cfg.model.max_model_len, "seqs_per_step": seqs}


def memory_problems(cfg: Config, m: ModelSpec, hw: Hardware) -> list[str]:
    """What does not fit one GPU of `hw`, by stage; empty when everything does. An engine must hold its
    weights and at least one full-length sequence; a colocated learner gets what its engine leaves."""
    problems, hbm, em = [], hw.hbm_gb, engine_memory(cfg, m, hw)
    if "sft" in cfg.pipeline and (sft := sft_memory(cfg, m, hw)["total"]) > hbm:
        problems.append(f"sft: {sft:.1f} GB per GPU > {hbm:g} GB")
    if "grpo" in cfg.pipeline:
        learner = learner_memory(cfg, m, hw)["total"]
        room = hbm - em["budget"] if cfg.cluster.colocate else hbm
        if learner > room:
            share = f" (what rollout.gpu_memory_utilization leaves of {hbm:g} GB)" if cfg.cluster.colocate else ""
            problems.append(f"grpo learner: {learner:.1f} GB per GPU > {room:.1f} GB{share}")
        if em["full_length_seqs"] < 1:
            problems.append(f"grpo engine: {em['budget']:.1f} GB holds the weights ({em['weights']:.1f} GB) but "
                            f"not one {cfg.model.max_model_len}-token sequence: raise rollout.gpu_memory_utilization")
    return problems


def step_time(cfg: Config, m: ModelSpec, hw: Hardware, w: Workload) -> dict[str, float]:
    """Seconds per GRPO step: rollout, then learner update, then weight sync (they run one after another)."""
    g, lc, r = cfg.grpo, cfg.learner, cfg.rollout
    prompts, seqs, ranks = g.prompts_per_step, g.prompts_per_step * g.group_size, lc.num_learners
    image = m.image_tokens(cfg.model.max_pixels)
    prompt_tokens, patches = image + w.text_prompt_tokens, image * m.merge**2
    peak = hw.bf16_tflops * 1e12
    # Rollout. Prefill once per prompt (the G samples share it), compute-bound. Decode is memory-bound:
    # every step reads the engine's weights and its sequences' KV; the longest answer (max_tokens) ends it.
    prefill_flops = prompts * 2 * (m.llm_params * prompt_tokens + m.vision_params * patches)
    prefill = prefill_flops / (r.num_workers * r.tensor_parallel_size * peak * hw.prefill_mfu)
    context = prompt_tokens + w.mean_response_tokens / 2
    kv_read = seqs / r.num_workers * context * m.kv_bytes_per_token()
    per_gpu_bytes = (2 * m.llm_params + kv_read) / r.tensor_parallel_size
    decode = r.max_tokens * per_gpu_bytes / (hw.hbm_tb_s * 1e12 * hw.decode_bw_eff)
    rollout = (prefill + decode) * w.refill_factor
    # Learner: 6 flops/param/token to train, +2 to recompute checkpointed layers, +2 for the pi_old
    # forward when the policy moves within a step (several mini-batches or epochs).
    extra_pass = g.num_mini_batches > 1 or g.ppo_epochs > 1
    factor = 8 + (2 if extra_pass else 0)
    # learner.share_prompts: a group's prompt and image go through once, then its G answers (one row);
    # otherwise every sequence carries its own copy of both.
    if lc.share_prompts:
        llm_tokens = prompts * (prompt_tokens + g.group_size * w.mean_response_tokens)
        vision_patches = prompts * patches
    else:
        llm_tokens, vision_patches = seqs * (prompt_tokens + w.mean_response_tokens), seqs * patches
    train_flops = g.ppo_epochs * factor * (m.llm_params * llm_tokens + m.vision_params * vision_patches)
    compute = train_flops / (ranks * peak * hw.train_mfu)
    # ZeRO-3 traffic per GPU per micro-batch: gather for forward, gather for backward, reduce-scatter
    # grads, each ~2 B x params x (L-1)/L; one more gather per micro-batch of the pi_old forward.
    micro = seqs / (ranks * lc.micro_batch_size)
    transfers = g.ppo_epochs * micro * 3 + (micro if extra_pass else 0)
    shard = 2 * m.params * (ranks - 1) / ranks / GB
    comm = transfers * shard / _bandwidth(cfg, hw, ranks)
    train = max(compute, comm)  # DeepSpeed prefetches the next layer's gather during compute
    # Sync: rank 0 gathers full weights from the shards, then broadcasts them to every engine.
    gather = shard / _bandwidth(cfg, hw, ranks)
    crosses = cfg.layout.gpus_needed() > (cfg.cluster.gpus_per_node or 8)
    link = hw.nic_gb_s if crosses else hw.intra_node_gb_s
    broadcast = 2 * m.params / GB / link / hw.sync_efficiency
    sync = gather + broadcast
    step = rollout + train + sync
    return {"prefill": prefill, "decode": decode, "rollout": rollout, "train_compute": compute, "train_comm": comm,
            "train": train, "sync_bytes_gb": 2 * m.params / GB, "sync": sync, "step": step,
            "prompts_per_hour": prompts * 3600 / step, "stage_hours": w.dataset_prompts / prompts * step / 3600,
            "steps_per_stage": math.ceil(w.dataset_prompts / prompts)}


def summary_row(name: str, cfg: Config, m: ModelSpec | None = None, hw: Hardware | None = None,
                w: Workload | None = None) -> str:
    """One Markdown table row: what docs/scaling.md's summary table quotes. A colocated learner's memory
    is shown with its engine's share of the GPU beside it; SFT's only when the pipeline runs it."""
    m, hw, w = m or ModelSpec(), hw or Hardware(), w or Workload()
    lm, em, t = learner_memory(cfg, m, hw), engine_memory(cfg, m, hw), step_time(cfg, m, hw, w)
    learners, engines, tp = cfg.learner.num_learners, cfg.rollout.num_workers, cfg.rollout.tensor_parallel_size
    layout = f"{learners} + {engines}x{tp}" + (" shared" if cfg.cluster.colocate else "")
    learner = f"{lm['total']:.1f}" + (f" + {em['budget']:.1f}" if cfg.cluster.colocate else "")
    sft = f"{sft_memory(cfg, m, hw)['total']:.1f}" if "sft" in cfg.pipeline else "-"
    return (f"| {name} | {cfg.layout.gpus_needed()} | {layout} | {sft} | {learner}"
            f" | {em['kv_cache']:.1f} | {t['rollout']:.1f} | {t['train']:.1f} | {t['sync']:.1f}"
            f" | {t['step']:.1f} | {t['prompts_per_hour']:,.0f} | {t['stage_hours']:.0f} |")


HEADER = ("| config | GPUs | learners + engines x TP | SFT GB/GPU | learner GB/GPU | engine KV GB | rollout s | train s"
          " | sync s | step s | prompts/h | 300K h |\n|---|---|---|---|---|---|---|---|---|---|---|---|")


def _groups(args: list[str]) -> list[tuple[Path, list[str]]]:
    """`CONFIG.yaml [key=value ...] CONFIG.yaml ...`: each config with the overrides after it."""
    groups: list[tuple[Path, list[str]]] = []
    for arg in args:
        if "=" in arg and groups:
            groups[-1][1].append(arg)
        else:
            groups.append((Path(arg), []))
    return groups


def rows(args: list[str], model: str = "qwen3vl-8b", gpu: str = "mi210") -> list[str]:
    """One row per config of `args` (see `_groups`), for the `MODELS` and `GPUS` entries named."""
    return [summary_row(" ".join([path.stem, *overrides]), load_config(path, overrides), MODELS[model], GPUS[gpu])
            for path, overrides in _groups(args)]


def problems(args: list[str], model: str = "qwen3vl-8b", gpu: str = "mi210") -> list[str]:
    """`memory_problems` of every config of `args`, each prefixed with the config's name."""
    return [f"{' '.join([path.stem, *overrides])}: {problem}" for path, overrides in _groups(args)
            for problem in memory_problems(load_config(path, overrides), MODELS[model], GPUS[gpu])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rl.tools.capacity", description=__doc__.splitlines()[0],
                                     epilog="Exits 1, naming each, when a stage's memory does not fit one GPU.")
    parser.add_argument("configs", nargs="+", metavar="CONFIG.yaml [key=value ...]")
    parser.add_argument("--model", choices=sorted(MODELS), default="qwen3vl-8b",
                        help="model shape (default %(default)s)")
    parser.add_argument("--gpu", choices=sorted(GPUS), default="mi210", help="accelerator (default %(default)s)")
    args = parser.parse_args(argv)
    print("\n".join([HEADER, *rows(args.configs, args.model, args.gpu)]))
    bad = problems(args.configs, args.model, args.gpu)
    for line in bad:
        print(f"does not fit: {line}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
