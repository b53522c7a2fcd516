"""Learner side: L Ray actors, one per accelerator (one process each on CPU), one torch.distributed
group, each running a DeepSpeed engine (ZeRO-3 by default) on the policy.

`Learner` is the actor: a thin wrapper that turns `TrainSample`s into Qwen3-VL inputs
(actors/learner_batch.py), computes per-token log-probs (old and reference), and runs the GRPO
objective of rl/core/grpo.py through DeepSpeed's backward/step. `LearnerGroup` is a plain class held by the
driver: it starts the actors, wires their process group (rank 0 publishes address and port through
Ray), splits batches over them and gathers answers, naming the actor and the phase on failure.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from actors.checkpoint_files import manifest_entry
from actors.learner_batch import (
    Collator,
    MetricSum,
    MicroBatch,
    PolicyLogprobs,
    TrainSample,
    check_shared_prompt_attention,
    micro_batch_loss,
    micro_batches,
    nonfinite_names,
    num_micro_batches,
    shard_for_learners,
)
from actors.pool import ActorPool
from actors.remote import ActorCallError, Locatable, bind_host, gather, listening_store
from actors.sync_plan import TensorMeta
from actors.weight_sync import WeightSource
from rl.core.atomic import replace_dir
from rl.core.config import Config
from rl.core.grpo import lr_factor
from rl.core.model_parts import freeze_vision_encoder, numel, optimizer_groups, shape
from rl.core.platform import apply_env, get_platform

__all__ = ["Learner", "LearnerError", "LearnerGroup", "PolicyLogprobs", "TrainSample"]

# Tokenizer / processor files a checkpoint needs besides weights and config, copied from the source model.
PROCESSOR_FILES = ("tokenizer*", "processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json",
                   "chat_template*", "special_tokens_map.json", "vocab*", "merges.txt", "added_tokens.json")

logger = logging.getLogger(__name__)


class Learner(WeightSource, Locatable):
    """One rank of the learner group (a Ray actor). Call order: `master_address` (rank 0), `setup`,
    then any of compute_logprobs / update / save / load / full_state_dict."""

    def __init__(self, cfg: Config, rank: int, world_size: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.platform = get_platform(cfg.cluster.platform)
        apply_env(self.platform)  # before torch first touches the device: ROCm's visible-device variables
        torch.set_num_threads(cfg.learner.cpus_per_learner)  # Ray caps OMP threads at 1 otherwise
        torch.manual_seed(cfg.seed)
        self.engine: Any = None
        self.store: Any = None  # the process group's TCP store (rank 0 hosts it)
        self.ref_engine: Any = None  # stays None when kl_coef == 0: the reference is never loaded

    def ping(self) -> int:
        return self.rank

    def master_address(self) -> tuple[str, int]:
        """Rank 0: opens the process group's TCP store on a free port and returns its address. The store
        stays open until `setup` joins it: picking a free port and binding it later would race other
        processes for the port (EADDRINUSE)."""
        host = bind_host(self.cfg.cluster.host)
        self.store = listening_store(host, self.world_size, timedelta(seconds=self.cfg.cluster.call_timeout_s))
        return host, self.store.port

    def setup(self, master_addr: str, master_port: int) -> dict[str, Any]:
        """Join the process group and build the DeepSpeed engine(s)."""
        import deepspeed
        import deepspeed.comm.torch as ds_comm
        import torch.distributed as dist
        from torch.distributed import TCPStore
        from transformers import AutoConfig

        from actors.ds_checkpoint import use_weights_only_loads

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        use_weights_only_loads()  # resume runs no code from a checkpoint folder (docs/security.md)
        # ZeRO-3 calls torch's deprecated reduce_scatter_tensor on every step: one line per call, no news.
        warnings.filterwarnings("ignore", message=".*reduce_scatter_tensor.* is deprecated", category=FutureWarning)
        # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce at start-up that only its
        # inference path uses. Training never calls it; skipping it needs no compiler on the node, and
        # no build killed midway can leave the lock file that hangs every later start.
        ds_comm.build_shm_op = lambda: None
        # DeepSpeed reads these in places (device choice, checkpoint naming). LOCAL_RANK is 0: Ray shows
        # each learner exactly one accelerator.
        os.environ.update({"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": "0",
                           "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)})
        timeout = timedelta(seconds=self.cfg.cluster.call_timeout_s)
        if self.rank:
            self.store = TCPStore(master_addr, master_port, self.world_size, is_master=False, timeout=timeout)
        dist.init_process_group(self.platform.dist_backend, store=self.store, rank=self.rank,
                                world_size=self.world_size, timeout=timeout)
        # DeepSpeed adopts the process group already there.
        deepspeed.init_distributed(dist_backend=self.platform.dist_backend, auto_mpi_discovery=False,
                                   timeout=timeout, verbose=False)
        self.device = torch.device(self.platform.device_type)
        self.dtype = getattr(torch, self.platform.dtype(self.cfg.model.dtype))
        mc = self.cfg.model
        self.hf_config = AutoConfig.from_pretrained(mc.path, trust_remote_code=mc.trust_remote_code)
        self.collate = Collator(mc.path, mc.processor_size(), self.hf_config, mc.trust_remote_code,
                                share_prompts=self.cfg.learner.share_prompts)
        self.ds_config = self._ds_config()
        self.engine = self._engine(train=True)
        if self.cfg.grpo.kl_coef > 0:
            self.ref_engine = self._engine(train=False)
        return {"rank": self.rank, "parameters": sum(numel(p) for p in self.policy.parameters()),
                "trainable_parameters": sum(numel(p) for p in self.policy.parameters() if p.requires_grad),
                "reference_loaded": self.ref_engine is not None}

    @property
    def policy(self) -> nn.Module:
        return self.engine.module.policy

    def _ds_config(self) -> dict[str, Any]:
        lc, g = self.cfg.learner, self.cfg.grpo
        sequences = g.prompts_per_step * g.group_size
        # DeepSpeed insists on a consistent batch triple; the real boundaries are set per mini-batch
        # in `update` (set_gradient_accumulation_boundary), so batches of any size work.
        gas = max(1, sequences // (g.num_mini_batches * self.world_size * lc.micro_batch_size))
        zero: dict[str, Any] = {"stage": lc.zero_stage}
        if lc.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu"}
        if lc.offload_params and lc.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu"}
        return {
            "train_micro_batch_size_per_gpu": lc.micro_batch_size,
            "gradient_accumulation_steps": gas,
            "gradient_clipping": lc.grad_clip,
            "zero_optimization": zero,
            "bf16": {"enabled": self.dtype == torch.bfloat16},
            "zero_allow_untested_optimizer": True,
            "zero_force_ds_cpu_optimizer": False,  # a torch AdamW is fine where the optimizer is not offloaded
            "steps_per_print": 2**62,
            "wall_clock_breakdown": False,
        }

    def _engine(self, train: bool) -> Any:
        import deepspeed
        from transformers import AutoModelForImageTextToText
        from transformers.integrations import HfDeepSpeedConfig

        mc, lc, g = self.cfg.model, self.cfg.learner, self.cfg.grpo
        # Alive during from_pretrained, this makes transformers build the model under zero.Init
        # (ZeRO-3): each rank materialises only its shard, which is what lets an 8B model load.
        ds_hf = HfDeepSpeedConfig(self.ds_config) if lc.zero_stage == 3 else None
        policy = AutoModelForImageTextToText.from_pretrained(mc.path, dtype=self.dtype,
                                                             trust_remote_code=mc.trust_remote_code)
        del ds_hf
        if lc.share_prompts:
            check_shared_prompt_attention(policy)
        temperature = self.cfg.rollout.temperature or 1.0  # the distribution the engine sampled from
        module = PolicyLogprobs(policy, temperature, lc.logprob_chunk_size)
        if not train:
            policy.eval().requires_grad_(False)
            engine, *_ = deepspeed.initialize(model=module, config=self.ds_config)
            return engine
        if lc.gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lc.freeze_vision:  # before the optimizer exists: frozen weights get no gradient and no Adam state
            freeze_vision_encoder(policy, "learner.freeze_vision")
        groups = optimizer_groups(module, lc.weight_decay)  # trainable weights only
        betas = (lc.adam_beta1, lc.adam_beta2)
        if lc.offload_optimizer:  # DeepSpeed's CPU Adam steps the offloaded fp32 states in place
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            optimizer = DeepSpeedCPUAdam(groups, lr=lc.lr, betas=betas, eps=lc.adam_eps, adamw_mode=True)
        else:
            optimizer = torch.optim.AdamW(groups, lr=lc.lr, betas=betas, eps=lc.adam_eps)
        total = g.num_steps * g.ppo_epochs * g.num_mini_batches

        def schedule(opt: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
            # Built on DeepSpeed's wrapped optimizer (a callable), whose param groups are what it steps.
            return torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: lr_factor(s, lc.warmup_steps, total, lc.lr_schedule, lc.min_lr_ratio))

        engine, *_ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=schedule,
                                          config=self.ds_config)
        return engine

    # ---------------------------------------------------------------- collectives

    def _all_reduce(self, tensor: Tensor, op: str) -> None:
        import torch.distributed as dist

        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)

    def _max_over_ranks(self, value: int) -> int:
        t = torch.tensor([float(value)], dtype=torch.float64)
        self._all_reduce(t, "max")
        return int(t.item())

    def _sum_over_ranks(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        self._all_reduce(t, "sum")
        return t.tolist()

    def _ranks_where(self, flag: bool) -> list[int]:
        """The ranks on which `flag` holds, known to every rank (one all-reduce)."""
        t = torch.zeros(self.world_size, dtype=torch.float64)
        t[self.rank] = float(flag)
        self._all_reduce(t, "sum")
        return [rank for rank, v in enumerate(t.tolist()) if v]

    def _batches(self, samples: Sequence[TrainSample], filler: TrainSample | None = None) -> list[MicroBatch]:
        """Collated micro-batches, padded to the same count on every rank (weight-0 passes reuse the
        first sample, or `filler` when this rank has none here)."""
        micro = self.cfg.learner.micro_batch_size
        count = self._max_over_ranks(num_micro_batches(len(samples), micro))
        pool = list(samples) or [filler]
        return [self.collate([pool[i] for i in idx], weight).to(self.device)
                for idx, weight in micro_batches(len(samples), micro, count)]

    # ---------------------------------------------------------------- steps

    @torch.no_grad()
    def compute_logprobs(self, samples: Sequence[TrainSample], reference: bool = False,
                         filler: TrainSample | None = None) -> list[list[float]]:
        """Per-token log-probs of each sample's response under the current policy (pi_old) or the
        frozen reference. Every rank must call this together (ZeRO-3 gathers weights collectively)."""
        engine = self.ref_engine if reference else self.engine
        if engine is None:
            raise RuntimeError("compute_logprobs(reference=True) with grpo.kl_coef == 0: no reference is loaded")
        engine.module.eval()
        out: list[list[float]] = []
        for batch in self._batches(samples, filler):
            logp, _ = engine(batch.inputs, batch.positions, batch.targets)
            if batch.weight:
                out.extend(t.tolist() for t in logp.float().cpu().split(batch.lengths))
        return out

    def update(self, samples: Sequence[TrainSample], mini_batch_sizes: Sequence[int] | None = None) -> dict[str, float]:
        """GRPO on this rank's share: `grpo.ppo_epochs` passes, one optimizer step per mini-batch
        (`mini_batch_sizes` split `samples` into this rank's piece of each global mini-batch).
        Missing old / reference log-probs are computed first. Returns metrics reduced over ranks."""
        g = self.cfg.grpo
        started = time.perf_counter()
        samples = list(samples)
        sizes = list(mini_batch_sizes) if mini_batch_sizes is not None else [len(samples)]
        if sum(sizes) != len(samples):
            raise ValueError(f"mini_batch_sizes {sizes} do not add up to {len(samples)} samples")
        # One optimizer step on fresh samples: pi_old is the policy this very forward computes, so
        # its log-probs are the forward's own, detached (ratio 1, gradient intact): no extra pass.
        # With several epochs or mini-batches pi_old must be frozen first.
        if g.ppo_epochs > 1 or len(sizes) > 1:
            self._fill(samples, "old_logprobs", reference=False)
        if g.kl_coef > 0:
            self._fill(samples, "ref_logprobs", reference=True)
        # TIS needs the engine's log-probs of every sample; the choice must agree across ranks (the
        # metrics they all-reduce depend on it).
        has_sampling = all(s.sampling_logprobs is not None for s in samples)
        use_tis = g.tis_cap is not None and not self._max_over_ranks(int(not has_sampling))
        if not use_tis:
            samples = [replace(s, sampling_logprobs=None) for s in samples]
        bounds = [sum(sizes[:k]) for k in range(len(sizes) + 1)]
        minis = [self._batches(samples[bounds[k]:bounds[k + 1]], filler=samples[0]) for k in range(len(sizes))]
        self.engine.module.train()
        metrics = MetricSum()
        norms = [self._step(batches, metrics) for _ in range(g.ppo_epochs) for batches in minis]
        grad_norms = [n for n in norms if n is not None]  # None: a step skipped for a NaN / inf
        out = metrics.reduce(self._all_reduce, len(grad_norms))
        tokens, response_tokens = self._sum_over_ranks(
            sum(b.num_tokens for mb in minis for b in mb if b.weight),
            sum(sum(b.lengths) for mb in minis for b in mb if b.weight))
        seconds = time.perf_counter() - started
        out |= {"grad_norm": sum(grad_norms) / len(grad_norms) if grad_norms else math.nan,
                "lr": self.engine.get_lr()[0], "optimizer_steps": float(len(grad_norms)),
                "skipped_nonfinite": float(norms.count(None)), "tokens": tokens * g.ppo_epochs,
                "response_tokens": response_tokens * g.ppo_epochs, "seconds": seconds,
                "tokens_per_s": tokens * g.ppo_epochs / seconds, "use_tis": float(use_tis)}
        return out

    def _step(self, batches: list[MicroBatch], metrics: MetricSum) -> float | None:
        """One optimizer step over one mini-batch (its micro-batches accumulated): the gradient norm, or
        None when a NaN / inf in a loss (any rank, any micro-batch) or in the gradients skipped it.

        Skips take DeepSpeed's own overflow path: given a NaN / inf global gradient norm, the ZeRO
        optimizer's step() drops the accumulated gradients without touching weights or Adam state, and
        the engine counts a skipped step (no lr-schedule step, was_step_applied() False). All ranks learn
        of a non-finite loss before its backward and then backpropagate NaN at the boundary to get there
        (dropping earlier micro-batches' partial sums by hand would reach into each ZeRO stage's buffers)."""
        # Denominators of the whole global mini-batch, so that summing micro-batch losses over
        # accumulation steps and ranks gives exactly the loss of the whole mini-batch.
        tokens, seqs = self._sum_over_ranks(sum(sum(b.lengths) for b in batches if b.weight),
                                            sum(len(b.lengths) for b in batches if b.weight))
        if not seqs:  # an empty global mini-batch (fewer samples than mini-batches): no step at all
            return float("nan")
        step = self.engine.global_steps + 1  # DeepSpeed's count of optimizer steps, skipped ones included
        kept: list[tuple[dict[str, Any], float]] = []  # the stats go into `metrics` only if the step applies
        for i, batch in enumerate(batches):
            logp_flat, entropy = self.engine(batch.inputs, batch.positions, batch.targets, with_entropy=True)
            loss, stats = micro_batch_loss(batch, logp_flat, entropy, self.cfg.grpo, self.cfg.rollout.max_tokens,
                                           tokens, seqs)
            bad = self._ranks_where(not bool(torch.isfinite(loss)))
            self.engine.set_gradient_accumulation_boundary(bool(bad) or i == len(batches) - 1)
            if bad:  # on every rank: NaN gradients make step() skip (see above)
                self.engine.backward(logp_flat.sum() * math.nan, scale_wrt_gas=False)
                break
            # DeepSpeed averages gradients over ranks; the loss is already normalised by global counts.
            self.engine.backward(loss * (self.world_size * batch.weight), scale_wrt_gas=False)
            kept.append(({k: (v if batch.weight else 0.0) for k, v in stats.items()},
                         float(batch.mask.sum()) * batch.weight))
        self.engine.step()
        if not self.engine.was_step_applied():
            if self.rank == 0:
                where = f"loss in micro-batch {i + 1} of {len(batches)} on rank(s) {bad}" if bad else "gradients"
                logger.warning("learner rank 0: optimizer step %d skipped on every rank: non-finite %s",
                               step, where)
            return None
        norm = self.engine.get_global_grad_norm()
        self._check_finite(step, norm)
        for stats, n in kept:
            metrics.add(stats, n)
        return float(norm) if norm is not None else float("nan")

    def _check_finite(self, step: int, grad_norm: Any) -> None:
        """After an applied step: the gradient norm was finite and every rank's own weight partitions are
        (no gathering). Never fails while DeepSpeed skips non-finite steps as `_step` relies on."""
        if grad_norm is not None and not math.isfinite(float(grad_norm)):
            raise FloatingPointError(f"learner rank {self.rank}: DeepSpeed applied optimizer step {step} with "
                                     f"gradient norm {float(grad_norm)} instead of skipping it")
        local = nonfinite_names((n, getattr(p, "ds_tensor", p)) for n, p in self.policy.named_parameters())
        ranks = self._ranks_where(bool(local))
        if ranks:
            raise FloatingPointError(f"learner rank {self.rank}: optimizer step {step} left NaN/inf weights on "
                                     f"rank(s) {ranks} (here: {local[:5] or 'none'}); resume from a checkpoint")

    def _fill(self, samples: list[TrainSample], field: str, reference: bool) -> None:
        # Collective: a rank that has nothing missing still runs the passes other ranks need.
        missing = [i for i, s in enumerate(samples) if getattr(s, field) is None]
        if not self._max_over_ranks(len(missing)):
            return
        todo = [samples[i] for i in missing]
        values = self.compute_logprobs(todo, reference=reference, filler=samples[0])
        for i, v in zip(missing, values, strict=True):
            samples[i] = replace(samples[i], **{field: v})

    # ---------------------------------------------------------------- weights out and in

    def named_parameters_for_sync(self, bucket_mb: int) -> Iterator[list[tuple[str, Tensor]]]:
        """Full (gathered) weights under their HF names, bucket by bucket of about `bucket_mb` MiB.

        Collective under ZeRO-3: every rank iterates; the tensors are valid until the next bucket is
        requested (the weight-sync transport sends or copies them before asking for more)."""
        import deepspeed

        named = list(self.policy.named_parameters())
        bucket: list[tuple[str, nn.Parameter]] = []
        size = 0
        for i, (name, p) in enumerate(named):
            bucket.append((name, p))
            size += numel(p) * p.element_size()
            if size >= bucket_mb * 1024**2 or i == len(named) - 1:
                with deepspeed.zero.GatheredParameters([q for _, q in bucket], modifier_rank=None,
                                                       enabled=self.cfg.learner.zero_stage == 3):
                    yield [(n, q.data) for n, q in bucket]
                bucket, size = [], 0

    def weight_metas(self) -> list[TensorMeta]:
        """WeightSource: names, full (unpartitioned) shapes and dtypes of the policy's parameters."""
        return [TensorMeta(n, shape(p), str(p.dtype).removeprefix("torch.")) for n, p in self.policy.named_parameters()]

    def iter_weights(self) -> Iterator[tuple[str, Tensor]]:
        """WeightSource: full weights one by one, gathered bucket by bucket (collective on all ranks)."""
        for bucket in self.named_parameters_for_sync(self.cfg.weight_sync.bucket_mb):
            yield from bucket

    def full_state_dict(self) -> dict[str, Tensor] | None:
        """The policy's full weights on rank 0 (None on the others); collective."""
        out: dict[str, Tensor] = {}
        for bucket in self.named_parameters_for_sync(self.cfg.weight_sync.bucket_mb):
            if self.rank == 0:
                out.update((n, t.detach().to("cpu", copy=True)) for n, t in bucket)
        return out if self.rank == 0 else None

    def save(self, path: str) -> dict[str, dict[str, Any]]:
        """HF weights (safetensors, loadable by transformers and vLLM) + processor files at `path`,
        DeepSpeed's optimizer / scheduler / fp32 shards under `path`/deepspeed. Written to a temporary
        sibling, then renamed: a crash never leaves a half checkpoint at `path`. Returns the manifest
        entries (bytes, sha256) of the files this rank wrote, by path under `path`."""
        import torch.distributed as dist

        from actors.ds_checkpoint import save_state

        final = Path(path)
        tmp = final.with_name(f".{final.name}.tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        state = self.full_state_dict()
        written = {}
        if self.rank == 0:
            self.policy.save_pretrained(tmp, state_dict=state)
            for pattern in PROCESSOR_FILES:
                for src in Path(self.cfg.model.path).glob(pattern):
                    shutil.copy2(src, tmp / src.name)
            written = {f.name: manifest_entry(f) for f in tmp.iterdir() if f.is_file()}
        written |= save_state(self.engine, tmp)
        dist.barrier()
        if self.rank == 0:
            replace_dir(tmp, final)
        dist.barrier()
        return written

    def load(self, path: str, digests: dict[str, str] | None = None) -> None:
        """Weights, optimizer and scheduler state from `save(path)` (same number of learners), weights-only,
        each file checked against `digests` (the manifest's, by path under `path`) if given."""
        from actors.ds_checkpoint import load_state

        load_state(self.engine, Path(path), digests)


class LearnerError(ActorCallError):
    """A learner died, hung past the timeout, or failed; the message names it and the phase."""


class LearnerGroup(ActorPool):
    """L `Learner` actors forming one process group. Plain class held by the driver: handles only.

    Batches are split so that every learner takes its piece of every global mini-batch
    (`shard_for_learners`); answers come back in the caller's sample order."""

    def __init__(self, cfg: Config, name_prefix: str = "learner", placement: Any = None):
        """`learner.num_learners` learners on `cluster.platform`; every call (and start) waits at most
        `cluster.call_timeout_s`. `placement`: an `actors.placement.Placement`; rank r goes to its bundle r
        (ranks ordered by node)."""
        import ray

        self.cfg = cfg
        self.num_learners = cfg.learner.num_learners
        self.timeout_s = cfg.cluster.call_timeout_s
        platform = get_platform(cfg.cluster.platform)
        options = {"num_cpus": cfg.learner.cpus_per_learner, "num_gpus": 1 if platform.has_accelerator else 0,
                   "runtime_env": {"env_vars": platform.actor_env()}}
        names = [f"{name_prefix}-{rank}" for rank in range(self.num_learners)]
        pinned = placement.learner_options if placement is not None else lambda rank: {}
        # The placement's options win: they carry the bundle and the actor's share of its GPU.
        actor = ray.remote(Learner)

        def start(rank: int) -> Any:
            return actor.options(name=names[rank], **{**options, **pinned(rank)}).remote(cfg, rank, self.num_learners)

        try:
            super().__init__(names, start, self.timeout_s, LearnerError)
            addr, port = self._call("master_address", [self.actors[0].master_address.remote()], self.labels[:1])[0]
            self.info = self._call("setup", [a.setup.remote(addr, port) for a in self.actors])
        except BaseException:
            self.shutdown()
            raise

    def compute_logprobs(self, samples: Sequence[TrainSample], reference: bool = False,
                         filler: TrainSample | None = None) -> list[list[float]]:
        shards = shard_for_learners(len(samples), self.num_learners, 1)
        parts = self._call("compute_logprobs", [a.compute_logprobs.remote([samples[i] for i in idx], reference)
                                                for a, (idx, _) in zip(self.actors, shards, strict=True)])
        out: list[list[float]] = [[] for _ in samples]
        for (idx, _), values in zip(shards, parts, strict=True):
            for i, v in zip(idx, values, strict=True):
                out[i] = v
        return out

    def update(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        """One GRPO update on the whole batch; metrics (identical on every rank) from rank 0."""
        shards = shard_for_learners(len(samples), self.num_learners, self.cfg.grpo.num_mini_batches)
        return self._call("update", [a.update.remote([samples[i] for i in idx], sizes)
                                     for a, (idx, sizes) in zip(self.actors, shards, strict=True)])[0]

    def full_state_dict(self) -> dict[str, Tensor]:
        return self._call("full_state_dict", [a.full_state_dict.remote() for a in self.actors])[0]

    def save(self, path: str | Path) -> dict[str, dict[str, Any]]:
        """`Learner.save` on every rank; the manifest entries of the files they wrote, by path under `path`."""
        return {rel: entry for written in self._call("save", [a.save.remote(str(path)) for a in self.actors])
                for rel, entry in written.items()}

    def load(self, path: str | Path, digests: dict[str, str] | None = None) -> None:
        self._call("load", [a.load.remote(str(path), digests) for a in self.actors])

    def _call(self, phase: str, refs: list[Any], names: list[str] | None = None) -> list[Any]:
        """ray.get with the configured timeout; the first learner to die, hang or fail is named (its
        peers are then stuck in a collective: shut the group down)."""
        return gather(refs, names or self.labels, phase, self.timeout_s, LearnerError)
