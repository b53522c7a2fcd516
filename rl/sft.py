"""Supervised fine-tuning: the grounding checkpoint GRPO starts from.

    python -m rl.sft [--config conf/X.yaml] key.path=value ...     # or `pipeline: [sft, ...]` in rl.launch

TRL's `SFTTrainer` does the training (its vision prompt-completion collator: image + chat-templated
prompt, loss on the completion only); this module feeds it our rows, our chat layout and our config, and
adds what grounding needs: greedy answers on val scored by the rewards package before and after,
TensorBoard scalars, resumable checkpoints keyed by the run's config, and an atomically published HF
checkpoint in `sft.output_dir` that transformers, vLLM and `rl.launch model.path=...` load as-is.
docs/sft.md says why TRL and how the pieces fit.

Multi-GPU: `sft.num_processes > 1` runs this module in that many processes on the node (torchrun's
environment, the rendezvous on 127.0.0.1: `_launch_workers`); DeepSpeed ZeRO (same config family as the GRPO
learner) is on by default on accelerators. Multi-node: start `python -m rl.sft` under torchrun/srun on each
node; the Trainer reads the usual torch.distributed environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rl.core.atomic import atomic_dir
from rl.core.config import Config, ConfigError, LearnerConfig, ModelConfig
from rl.core.data import DatasetError
from rl.core.model_parts import freeze_vision_encoder
from rl.core.platform import Platform, apply_env, get_platform
from rl.core.progress import quiet_library_bars
from rl.sft_data import (
    RUN_MARKER,
    SFTSplit,
    data_root,
    load_sft_split,
    make_collator,
    report_skipped,
    sft_split_path,
    to_dataset,
)

SUMMARY = "sft_summary.json"  # beside the published weights: steps, throughput, val metrics before/after
TRAINER_STATE = "trainer_state.json"
# What the Trainer's resume reads with torch.load (weights-only, numpy arrays allowed for the RNG states),
# and DeepSpeed's state when it runs on DeepSpeed (weights-only too: actors/ds_checkpoint.py).
TORCH_STATE_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth")
DEEPSPEED_STATE_FILES = "global_step*/*.pt"
# Knobs that change nothing about the weights a run produces: a checkpoint stays resumable across them.
_NOT_FINGERPRINTED = {"output_dir", "state_dir", "resume", "eval_every", "grounding_eval_rows", "eval_batch_size",
                      "save_every", "keep_last", "log_every", "dataloader_workers"}


@dataclass
class SFTResult:
    output_dir: str
    steps: int
    samples_per_s: float  # training throughput, evaluation and checkpointing excluded
    before: dict[str, float]  # grounding metrics on val for the weights this run started from
    after: dict[str, float]
    eval_loss: float | None
    train_rows: int
    val_rows: int


# ---------------------------------------------------------------- config -> trainer

def deepspeed_config(learner: LearnerConfig) -> dict[str, Any]:
    """The GRPO learner's DeepSpeed setup (actors/learner.py: ZeRO stage, offload, clipping, bf16, torch
    AdamW allowed), with the batch sizes, clipping and precision left "auto": the Trainer fills them from
    its own arguments, which come from `sft.*`."""
    zero: dict[str, Any] = {"stage": learner.zero_stage}
    if learner.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if learner.offload_params and learner.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu"}
    if learner.zero_stage == 3:
        # Gather the 16-bit weights when saving: the checkpoint is plain safetensors that vLLM loads.
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
        "zero_optimization": zero, "bf16": {"enabled": "auto"},
        "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 2**62, "wall_clock_breakdown": False,
    }


def uses_deepspeed(cfg: Config, platform: Platform) -> bool:
    # auto: on accelerators only; on CPU one plain torch process is simpler and faster for the tiny model.
    return platform.has_accelerator if cfg.sft.deepspeed == "auto" else bool(cfg.sft.deepspeed)


def training_args(cfg: Config, platform: Platform, run_dir: Path) -> Any:
    """TRL `SFTConfig` (a transformers `TrainingArguments`) from our config tree; every value explicit,
    because TRL's own defaults (bf16, gradient checkpointing on) are not ours."""
    from torch.distributed import is_torchelastic_launched
    from trl import SFTConfig as TRLConfig

    sft = cfg.sft
    bf16 = platform.dtype(cfg.model.dtype) == "bfloat16"
    return TRLConfig(
        output_dir=str(run_dir),
        max_steps=sft.num_steps,
        per_device_train_batch_size=sft.micro_batch_size,
        per_device_eval_batch_size=sft.eval_batch_size,
        gradient_accumulation_steps=sft.grad_accum_steps,
        learning_rate=sft.lr,
        lr_scheduler_type="cosine" if sft.lr_schedule == "cosine" else "constant_with_warmup",
        warmup_steps=sft.warmup_steps,
        weight_decay=sft.weight_decay,
        max_grad_norm=sft.grad_clip,
        train_sampling_strategy=sft.sampling,
        length_column_name="length",
        eval_strategy="steps" if sft.eval_every else "no",
        eval_steps=sft.eval_every or None,
        prediction_loss_only=True,
        save_strategy="steps",
        save_steps=sft.save_every or sft.num_steps,  # the last step is always saved (sft_callbacks.Finish)
        save_total_limit=sft.keep_last,
        logging_steps=sft.log_every,
        logging_first_step=True,
        report_to="none",  # our own TensorBoard writer: fixed tags, val grounding metrics, samples/s
        disable_tqdm=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=bf16,
        use_cpu=not platform.has_accelerator,
        ddp_backend=platform.dist_backend if is_torchelastic_launched() else None,  # a single process: none
        dataloader_num_workers=sft.dataloader_workers,
        gradient_checkpointing=cfg.learner.gradient_checkpointing,
        deepspeed=deepspeed_config(cfg.learner) if uses_deepspeed(cfg, platform) else None,
        max_length=None,  # no truncation: it could cut image tokens; rows are length-checked instead
        completion_only_loss=True,
        packing=False,  # TRL does not pack image rows; length-grouped batches cut the padding instead
    )


def load_processor(model: ModelConfig) -> Any:
    """The checkpoint's processor with the configured pixel limits (the same as rollout and learner)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model.path, trust_remote_code=model.trust_remote_code)
    processor.image_processor.size = model.processor_size()
    return processor


def load_model(model: ModelConfig, platform: Platform, deepspeed: bool) -> Any:
    import torch
    from transformers import AutoModelForImageTextToText

    # DeepSpeed keeps fp32 master weights itself; without it, fp32 weights + autocast (bf16 flag) on GPUs.
    dtype = platform.dtype(model.dtype) if deepspeed else "float32"
    return AutoModelForImageTextToText.from_pretrained(
        model.path, dtype=getattr(torch, dtype), trust_remote_code=model.trust_remote_code
    )


# ---------------------------------------------------------------- resumable runs

def run_fingerprint(cfg: Config) -> str:
    """What determines the weights: base model, data, pixels, seed and the training knobs."""
    def stamp(path: Path) -> list[Any]:
        st = path.stat() if path.exists() else None
        return [str(path.resolve()), st.st_size if st else None, st.st_mtime_ns if st else None]

    payload = {
        "model": stamp(Path(cfg.model.path) / "config.json"),
        "train": stamp(data_root(cfg) / f"{cfg.data.split}.jsonl"),
        "pixels": [cfg.model.min_pixels, cfg.model.max_pixels],
        "frame": cfg.data.coord_frame, "on_error": cfg.data.on_error, "seed": cfg.seed,
        "sft": {k: v for k, v in cfg.sft.model_dump().items() if k not in _NOT_FINGERPRINTED},
        "zero": [cfg.learner.zero_stage, cfg.learner.offload_optimizer, cfg.learner.offload_params],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def run_dir(cfg: Config) -> Path:
    """Checkpoints of one run live in their own folder, so runs with other settings never mix."""
    return Path(cfg.sft.state_dir) / f"run-{run_fingerprint(cfg)}"


def _step(path: Path) -> int:
    tail = path.name.rpartition("-")[2]
    return int(tail) if tail.isdigit() else -1


def is_complete(checkpoint: Path) -> bool:
    return (checkpoint / RUN_MARKER).is_file() and (checkpoint / TRAINER_STATE).is_file()


def find_resume(cfg: Config) -> Path | None:
    """The checkpoint to resume from: sft.resume=never -> None, a path -> it, auto -> the newest complete
    checkpoint of this run's folder (None when there is none)."""
    if cfg.sft.resume == "never":
        return None
    if cfg.sft.resume != "auto":
        path = Path(cfg.sft.resume)
        if not (path / TRAINER_STATE).is_file():
            raise ConfigError(f"sft.resume={cfg.sft.resume}: not a resumable SFT checkpoint (no {TRAINER_STATE})")
    else:
        folder = run_dir(cfg)
        complete = [p for p in folder.glob("checkpoint-*") if p.is_dir() and is_complete(p)] if folder.is_dir() else []
        path = max(complete, key=_step, default=None)
    if path is not None:
        check_state_files(path, f"sft.resume={cfg.sft.resume}")
    return path


def check_state_files(checkpoint: Path, key: str) -> None:
    """A ConfigError naming the state file of `checkpoint` that pickles more than tensors, numpy arrays and
    DeepSpeed's data types: the weights-only loads would refuse it too, but without naming it."""
    import numpy as np

    from actors.checkpoint_files import UnsafeCheckpointError, refuse_unsafe

    # What numpy's RNG state pickles (transformers allows the same): arrays and dtypes, rebuilt by the
    # function an array's __reduce__ names (its module moved in numpy 2).
    allowed: tuple[object, ...] = (np.ndarray, np.dtype, type(np.dtype(np.uint32)), np.empty(0).__reduce__()[0])
    files = [f for pattern in TORCH_STATE_FILES for f in sorted(checkpoint.glob(pattern))]
    deepspeed_files = sorted(checkpoint.glob(DEEPSPEED_STATE_FILES))
    if deepspeed_files:  # imports deepspeed: only where its state is there
        from actors.ds_checkpoint import DEEPSPEED_TYPES

        allowed += DEEPSPEED_TYPES
    for file in files + deepspeed_files:
        try:
            refuse_unsafe(file, allowed)
        except UnsafeCheckpointError as exc:
            raise ConfigError(f"{key}: {exc}") from exc


def drop_incomplete(folder: Path) -> None:
    """Remove checkpoint folders a crash left half written; the Trainer would otherwise save into them."""
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        if path.is_dir() and not is_complete(path):
            shutil.rmtree(path)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # same filesystem: publishing an 8B checkpoint costs no space and no time
    except OSError:
        shutil.copy2(src, dst)


def publish(checkpoint: Path, output_dir: Path, summary: dict[str, Any]) -> Path:
    """Copy `checkpoint` (hard links where possible) to a temporary sibling of `output_dir`, then rename it
    into place: readers see the old checkpoint or the new one, never half of one."""
    with atomic_dir(output_dir) as tmp:
        shutil.copytree(checkpoint, tmp, copy_function=_link_or_copy, dirs_exist_ok=True)
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return output_dir


# ---------------------------------------------------------------- the run

@dataclass
class SFTRun:
    """A configured trainer and what the run needs around it (built by `build_run`, run by `train_sft`)."""

    trainer: Any
    grounding: Any  # GroundingEval callback: before/after metrics
    scalars: Any  # Scalars callback: TensorBoard writer, throughput
    train: SFTSplit
    val: SFTSplit
    folder: Path  # this run's checkpoint folder in sft.state_dir
    resume: Path | None


def build_run(cfg: Config) -> SFTRun:
    """Load and check the data, the processor and the model; set up TRL's trainer with our callbacks."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from rl.sft_callbacks import Finish, GroundingEval, GroundingSFTTrainer, Scalars

    platform = get_platform(cfg.cluster.platform)
    apply_env(platform)
    processor = load_processor(cfg.model)
    train = load_sft_split(cfg, "train", processor)
    val = load_sft_split(cfg, "val", processor)
    report_skipped(train.skipped, cfg.data.split)
    report_skipped(val.skipped, cfg.data.val_split)
    if not train.rows:
        raise DatasetError(f"{sft_split_path(cfg, 'train')}: no usable train rows (data.split={cfg.data.split})")
    folder = run_dir(cfg)
    args = training_args(cfg, platform, folder)  # before the model: under ZeRO-3 it then loads partitioned
    if args.deepspeed is not None:  # the Trainer's DeepSpeed engine resumes weights-only (docs/security.md)
        from actors.ds_checkpoint import use_weights_only_loads

        use_weights_only_loads()
    resume = find_resume(cfg)
    if args.should_save:
        folder.mkdir(parents=True, exist_ok=True)
        drop_incomplete(folder)
    scalars = Scalars(Path(cfg.logging.dir) / "sft", main=args.process_index == 0)
    grounding = GroundingEval(cfg, val.rows[:cfg.sft.grounding_eval_rows], scalars)
    model = load_model(cfg.model, platform, args.deepspeed is not None)
    if cfg.sft.freeze_vision:
        freeze_vision_encoder(model, "sft.freeze_vision")
    trainer = GroundingSFTTrainer(
        model=model, args=args,
        train_dataset=to_dataset(train, processor.tokenizer, cfg.sft.sampling),
        eval_dataset=to_dataset(val, processor.tokenizer, cfg.sft.sampling) if val.rows else None,
        processing_class=processor, data_collator=make_collator(processor),
        callbacks=[grounding, scalars, Finish(run_fingerprint(cfg), bool(val.rows))],
    )
    for noisy in (PrinterCallback, ProgressCallback):  # Scalars prints one compact line per log step
        trainer.remove_callback(noisy)
    grounding.trainer = trainer
    return SFTRun(trainer, grounding, scalars, train, val, folder, resume)


def train_sft(cfg: Config) -> SFTResult:
    """Fine-tune `cfg.model.path` on the train split; publish the result to `cfg.sft.output_dir`."""
    quiet_library_bars()  # also under torchrun, where this process did not `prepare`
    run = build_run(cfg)
    trainer, args = run.trainer, run.trainer.args
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    engine = f"DeepSpeed ZeRO-{cfg.learner.zero_stage}" if args.deepspeed else "plain torch"
    print(f"sft: {cfg.model.path} on {len(run.train.rows)} train / {len(run.val.rows)} val rows, "
          f"{cfg.sft.num_steps} steps x {batch} samples, {engine}, {args.world_size} process(es)"
          + (f", resuming from {run.resume}" if run.resume else ""), flush=True)
    # A run resumed at its last step is finished. Not calling the Trainer: resumed mid-epoch at max_steps,
    # transformers' loop trains one step more before it checks the limit.
    done = json.loads((run.resume / TRAINER_STATE).read_text()) if run.resume else None
    finished = done is not None and done["global_step"] >= cfg.sft.num_steps
    try:
        if not finished:
            trainer.train(resume_from_checkpoint=str(run.resume) if run.resume else None)
    finally:
        run.scalars.close()
    step, history = (done["global_step"], done["log_history"]) if finished else (
        trainer.state.global_step, trainer.state.log_history)
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    result = SFTResult(output_dir=cfg.sft.output_dir, steps=step, samples_per_s=run.scalars.samples_per_s,
                       before=run.grounding.before, after=run.grounding.after,
                       eval_loss=evals[-1] if evals else None, train_rows=len(run.train.rows),
                       val_rows=len(run.val.rows))
    if args.should_save:
        final = run.folder / f"checkpoint-{step}"
        source = final if is_complete(final) else run.resume  # nothing left to train: republish the resumed one
        if source is None:
            raise RuntimeError(f"sft: no checkpoint for step {step} in {run.folder}")
        publish(source, Path(cfg.sft.output_dir), {**asdict(result), "base_model": cfg.model.path,
                                                   "checkpoint": str(source), "fingerprint": run_fingerprint(cfg)})
        print(f"sft: {step} steps, {result.samples_per_s:.1f} samples/s; checkpoint {cfg.sft.output_dir}", flush=True)
    trainer.accelerator.wait_for_everyone()
    return result


def continue_from_sft(cfg: Config) -> Config:
    """The config for the stages after sft: the model is the published SFT checkpoint (built, not tiny)."""
    model = cfg.model.model_copy(update={"path": cfg.sft.output_dir, "tiny": None})
    return cfg.model_copy(update={"model": model})


def _sigterm_as_exit(signum: int, _frame: object) -> None:
    sys.exit(128 + signum)


def _launch_workers(cfg: Config) -> None:
    """Run this module in `sft.num_processes` processes on this machine, on the same resolved config, in
    torchrun's worker environment, and supervise them as torchrun does: one fails, the others are stopped.

    Not torchrun itself: its rendezvous TCPStore listens on every interface whatever host it is given
    (pytorch#173909), and a local run listens on loopback only (docs/security.md). So this process hosts
    the store, on a socket it bound to 127.0.0.1 (`master_listen_fd`), and the workers join it as clients,
    as torchrun's join its agent's store (TORCHELASTIC_USE_AGENT_STORE); their gloo and NCCL listen on the
    loopback interface (`loopback_collectives_env`)."""
    import signal
    import socket
    import threading
    import time

    from torch.distributed import TCPStore

    from rl.cluster import loopback_collectives_env

    n = cfg.sft.num_processes
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # The store owns the descriptor from here on (it closes it when it goes). It lives until the workers end.
    store = TCPStore("127.0.0.1", port, n, is_master=True, wait_for_workers=False, master_listen_fd=listener.detach())
    env = {**os.environ, **get_platform(cfg.cluster.platform).actor_env(),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(n), "LOCAL_WORLD_SIZE": str(n),
           "GROUP_RANK": "0", "TORCHELASTIC_USE_AGENT_STORE": str(True),
           "TORCHELASTIC_RUN_ID": f"rl-sft-{os.getpid()}",  # is_torchelastic_launched(): the workers train
           **loopback_collectives_env()}
    if n > 1:
        env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default: n processes of all-core threads thrash
    folder = Path(cfg.sft.state_dir)
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"workers-{os.getpid()}.yaml"
    config.write_text(cfg.to_yaml(), encoding="utf-8")
    cmd = [sys.executable, "-m", "rl.sft", "--config", str(config)]
    # SIGTERM (a scheduler, `kill`) would end this process alone and leave the workers training: make it
    # unwind through the `finally` that stops them, as torchrun does. Signal handlers: main thread only.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _sigterm_as_exit) if main_thread else None
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for rank in range(n):
            rank_env = {**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            workers.append(subprocess.Popen(cmd, env=rank_env))  # noqa: S603 (our own interpreter)
        while True:
            codes = [w.poll() for w in workers]
            if any(codes) or None not in codes:  # one failed, or all are done
                break
            time.sleep(0.2)
        failed = next(((rank, code) for rank, code in enumerate(codes) if code), None)
        if failed:
            raise RuntimeError(f"sft: rank {failed[0]} of {n} processes exited with code {failed[1]}")
    finally:
        for w in workers:
            if w.poll() is None:
                w.terminate()
        for w in workers:
            try:
                w.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        config.unlink(missing_ok=True)
        del store


def run_sft(cfg: Config) -> Config:
    """The `sft` stage: train (in this process, or in worker processes for several or for DeepSpeed); return
    the config of the stages after it."""
    from torch.distributed import is_torchelastic_launched

    platform = get_platform(cfg.cluster.platform)
    # DeepSpeed needs a launcher's environment even for one process (else it looks for MPI).
    if (cfg.sft.num_processes > 1 or uses_deepspeed(cfg, platform)) and not is_torchelastic_launched():
        _launch_workers(cfg)
    else:
        train_sft(cfg)
    return continue_from_sft(cfg)


def main(argv: list[str] | None = None) -> int:
    # The same front door as rl.launch (config loading, validation, preparation, errors), one stage.
    from rl.launch import main as launch_main

    return launch_main(argv, stages=["sft"], prog="python -m rl.sft")


if __name__ == "__main__":
    sys.exit(main())
