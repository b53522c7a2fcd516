"""One config tree for the whole pipeline: pydantic models, loaded from YAML + dotlist overrides.

`load_config("conf/default.yaml", ["grpo.group_size=8"])` merges the YAML and the overrides with
omegaconf, then validates with pydantic. Unknown keys and wrong types fail here, before anything
starts, with the full key path (`grpo.no_such_key`) and what was expected. Resource and
divisibility assumptions are checked here too, not mid-run.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    field_validator,
    model_validator,
)

from rewards import RewardConfig
from rl.core.frames import FRAME_HELP, QWEN25_PIXELS, CoordFrame, parse_frame
from rl.core.layout import Layout

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "default.yaml"


class ConfigError(ValueError):
    """A config that cannot run; the message names every offending key path."""


def _split_name(name: str) -> str:
    # A split is the stem of a file in the data folder: no folders, so a name never reads outside it.
    if name.endswith(".jsonl"):
        raise ValueError(f"{name!r}: name the split without .jsonl (the file is <data folder>/<split>.jsonl)")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name):
        raise ValueError(f"{name!r}: a split is a file stem (letters, digits, _ . -; no path separators), "
                         "read as <data folder>/<split>.jsonl")
    return name


SplitName = Annotated[str, AfterValidator(_split_name)]  # e.g. train, val, test_external


def _frame_setting(value: Any) -> int | str:
    try:
        frame = parse_frame(value)
    except ValueError:
        raise ValueError(f"expected {FRAME_HELP}") from None
    return frame.relative or QWEN25_PIXELS


FrameSetting = Annotated[int | Literal["qwen25_pixels"], BeforeValidator(_frame_setting)]


class Section(BaseModel):
    # extra="forbid" turns a typo in a key into an error naming it.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TinyModelConfig(Section):
    """Sizes of the offline random Qwen3-VL (`rl.tiny`); ~4.6 M parameters learn the synthetic task."""

    seed: int = 0
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64  # vLLM's CPU attention kernels reject head_dim 16; 64 works
    intermediate_size: int = 768
    vision_depth: int = 2
    vision_hidden_size: int = 128
    vision_num_heads: int = 2
    vision_intermediate_size: int = 384
    # The processor's per-channel normalisation: the synthetic images' pixel mean and std (a unit test checks
    # them against the generator), as for any vision tower trained from scratch. With the usual 0.5/0.5 the
    # dark background is a large constant in every patch, the random patch embedding answers every image
    # with nearly the same features, and training amplifies that constant until the model stops looking.
    image_mean: tuple[float, float, float] = (0.153, 0.150, 0.149)
    image_std: tuple[PositiveFloat, PositiveFloat, PositiveFloat] = (0.134, 0.112, 0.121)


S = TypeVar("S", bound=Section)


def _ordered(section: S, low: str, high: str) -> S:
    """The section if its field `low` <= its field `high`, else an error naming both."""
    if getattr(section, low) > getattr(section, high):
        raise ValueError(f"{low} ({getattr(section, low)}) > {high} ({getattr(section, high)})")
    return section


class ModelConfig(Section):
    # A local HF checkpoint folder (Qwen3-VL or Qwen2.5-VL), checked at start-up (rl/core/model_path.py).
    path: str = "checkpoints/tiny-qwen3vl"
    # Set: build the offline tiny model at `path`, only if that folder is absent, empty or an earlier tiny
    # build (any other folder is an error, never overwritten). null: `path` is a checkpoint to load.
    tiny: TinyModelConfig | None = Field(default_factory=TinyModelConfig)
    trust_remote_code: bool = False
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on accelerators, fp32 on CPU
    # One processor setting for rollout and learner, so image features always match image tokens.
    min_pixels: int = Field(default=128 * 128, gt=0)
    max_pixels: int = Field(default=128 * 128, gt=0)
    max_model_len: int = Field(default=512, gt=0)

    def processor_size(self) -> dict[str, int]:
        """Image processor resize limits (in pixels), the same for rollout, learner and SFT."""
        return {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels}

    @model_validator(mode="after")
    def _pixels(self) -> ModelConfig:
        return _ordered(self, "min_pixels", "max_pixels")


class SyntheticDataConfig(Section):
    num_train: int = Field(default=8000, ge=0)
    num_val: int = Field(default=64, ge=0)
    num_test: int = Field(default=64, ge=0)
    image_size: int = Field(default=128, ge=32)
    min_objects: int = Field(default=0, ge=0)  # objects per image: uniform in [min_objects, max_objects]
    max_objects: int = Field(default=3, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _object_range(self) -> SyntheticDataConfig:
        return _ordered(self, "min_objects", "max_objects")


class DataConfig(Section):
    path: str = "data/synthetic"  # folder holding the splits, one <split>.jsonl each
    synthetic: SyntheticDataConfig | None = Field(default_factory=SyntheticDataConfig)  # generate if absent
    # SFT and GRPO train on `split` (`rl.evaluate` answers it) and hold out `val_split`: SFT's val loss and
    # greedy answers, GRPO's before/after metrics, the preview. Any file stem in the folder.
    split: SplitName = "train"
    val_split: SplitName = "val"
    # What box numbers mean, in the data and in the model's answers (docs/data.md, "Coordinates"): N, relative
    # 0..N on both axes (Qwen3-VL: 1000), or qwen25_pixels, absolute pixels of the image as the Qwen2.5-VL
    # processor resizes it with model.min_pixels / model.max_pixels (Config.frame()).
    coord_frame: FrameSetting = 1000
    on_error: Literal["raise", "skip"] = "raise"
    # Folders besides `path` that image paths may resolve into (absolute paths allowed there); a row whose
    # image resolves anywhere else (`..`, an absolute path, a symlink) is a bad row (docs/data.md).
    image_roots: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _synthetic_frame(self) -> DataConfig:
        if self.synthetic is not None and self.coord_frame == QWEN25_PIXELS:
            raise ValueError("data.coord_frame=qwen25_pixels: the synthetic generator (data.synthetic) writes a "
                             "relative frame; set data.synthetic=null and convert your data into this frame "
                             "(python -m rl.data convert ... --frame qwen25_pixels), or use a relative frame")
        return self


class RolloutConfig(Section):
    num_workers: int = Field(default=1, ge=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    # Nucleus / top-k truncation stay off: the learner's log-probs are those of the full softmax (with the
    # engine's temperature and vision-token bias), and with truncation the engine's sampling log-probs
    # would come from another distribution, biasing the importance weights (see _full_distribution).
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = -1  # -1 (or 0): off
    max_tokens: int = Field(default=96, gt=0)  # the longest synthetic answer is 82 tokens
    stop: list[str] = Field(default_factory=list)
    seed: int = 0  # the engines' sampling (rl.core.seeds.rollout_seed)
    kv_cache_memory_mb: int = Field(default=256, gt=0)  # CPU engines: explicit KV cache size
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1)  # accelerator engines
    enforce_eager: bool = True
    prompt_overflow: Literal["truncate", "reject"] = "reject"

    @field_validator("top_p", "top_k")
    @classmethod
    def _full_distribution(cls, value: float, info: Any) -> float:
        """Truncated sampling is refused: matching it in the learner would mean re-deriving the engine's
        top-p/top-k set per token (a sort over the vocabulary for every response token), and the set
        depends on the weights being trained, so the ratio pi_new/pi_old of two truncated policies is
        not the policy-gradient ratio GRPO assumes. Shape the distribution with `rollout.temperature`."""
        off = value == 1.0 if info.field_name == "top_p" else value in (-1, 0)
        if not off:
            raise ValueError(f"truncated sampling is not supported (the "
                             f"learner's log-probs are the full softmax's, so the engine's truncated sampling "
                             f"log-probs would bias the importance weights); use "
                             f"rollout.{info.field_name}={'1.0' if info.field_name == 'top_p' else -1} and "
                             f"rollout.temperature to shape sampling")
        return value


class GRPOConfig(Section):
    num_steps: int = Field(default=60, ge=0)
    prompts_per_step: int = Field(default=8, ge=1)
    group_size: int = Field(default=8, ge=2)  # G samples per prompt; advantages need >= 2
    clip_low: float = Field(default=0.2, ge=0)
    clip_high: float = Field(default=0.28, ge=0)  # DAPO clip-higher
    dual_clip: float | None = Field(default=None, gt=1)
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    adv_std: Literal["group", "batch", "none"] = "group"  # none: Dr. GRPO
    kl_coef: float = Field(default=0.0, ge=0)  # 0: no reference model is loaded at all
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    tis_cap: float | None = Field(default=2.0, gt=0)  # truncated importance sampling cap; None: off
    dynamic_sampling: bool = True
    max_refill_rounds: int = Field(default=2, ge=0)
    # 1: rollouts for step t+1 run while the learner trains step t (one policy version behind, corrected
    # by the truncated importance weights); 0: on-policy, every sample from the learner's current weights.
    off_policy_lag: Literal[0, 1] = 0
    ppo_epochs: int = Field(default=1, ge=1)  # passes over each rollout batch
    num_mini_batches: int = Field(default=1, ge=1)  # optimizer steps per epoch (the batch split evenly)
    # Held-out metrics before the first and after the last step: greedy answers and group_size samples on
    # the first eval_rows rows of data.val_split (0: off, and no prediction images), sampled with eval_seed, so
    # both see the same draws.
    eval_rows: int = Field(default=64, ge=0)
    eval_seed: int = 987_654_321


class LearnerConfig(Section):
    num_learners: int = Field(default=1, ge=1)
    zero_stage: Literal[2, 3] = 3
    offload_optimizer: bool = False
    offload_params: bool = False
    micro_batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=3e-5, gt=0)
    warmup_steps: int = Field(default=5, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    gradient_checkpointing: bool = False
    # The vision encoder stays fixed (no gradients, no Adam state); its merger (projector) and the language
    # model train (docs/learning.md: GRPO training the encoder too gained less). With it off, the engines
    # encode images with each synced tower: their encoder and prefix caches are reset on every sync.
    freeze_vision: bool = True
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)  # cosine decays to lr x this
    adam_beta1: float = Field(default=0.9, ge=0, lt=1)
    adam_beta2: float = Field(default=0.999, ge=0, lt=1)
    adam_eps: float = Field(default=1e-8, gt=0)
    cpus_per_learner: int = Field(default=1, ge=1)  # Ray CPU reservation and torch threads per learner
    # A GRPO group's G samples share one row: prompt and image once, each response after it, a 4D
    # mask keeping responses apart (actors.learner_batch.Collator). Same log-probs, fewer tokens; needs
    # SDPA or eager attention (a custom mask), checked when the learner loads the model.
    share_prompts: bool = True
    logprob_chunk_size: int = Field(default=1024, ge=1)  # tokens per [chunk, vocab] logits block


class WeightSyncConfig(Section):
    bucket_mb: int = Field(default=256, gt=0)
    # auto: shared memory when every engine worker sees the learner's shm_dir (one node), else the
    # collective broadcast; shared_memory: that or an error naming the engines that cannot.
    transport: Literal["auto", "collective", "shared_memory"] = "auto"
    shm_dir: str = "/dev/shm"  # tmpfs for the two bucket slots (2 x bucket_mb)
    timeout_s: float = Field(default=120, gt=0)


class ClusterConfig(Section):
    address: str | None = None  # None: RAY_ADDRESS if set (ray job submit), else start a local Ray
    platform: Literal["auto", "cuda", "rocm", "cpu"] = "auto"
    # Where the run's own stores listen (the learners' process group, the weight-sync rendezvous) and what
    # peers dial. auto: the node's address as Ray knows it: loopback for a local Ray (no address), the
    # node's address on the cluster network otherwise. An IP address pins it (one node). Never a wildcard.
    host: str = "auto"
    num_cpus: int | None = None  # local Ray only
    reward_workers: int = Field(default=1, ge=1)
    call_timeout_s: float = Field(default=600, gt=0)  # every remote call; names actor and phase on expiry
    start_timeout_s: float = Field(default=1800, gt=0)  # an actor's start-up: an engine loading its model
    # The cluster this config is written for, checked against what Ray reports before any actor starts.
    # null: take whatever Ray has (a laptop, CI); set them for a real deployment so a missing node or a
    # wrong GPU is an error naming it, not a hang in a placement group.
    nodes: int | None = Field(default=None, ge=1)
    gpus_per_node: int | None = Field(default=None, ge=1)
    accelerator_type: str | None = None  # as Ray names it, e.g. AMD-Instinct-MI210 (resource accelerator_type:X)
    # true: rollout engine i shares learner i's GPU (half a GPU each in Ray's accounting, one bundle holding
    # both), so L learners and L engines x TP 1 take L GPUs. The engine's rollout.gpu_memory_utilization is
    # then its share of that GPU; the learner must fit the rest (`python -m rl.tools.capacity` checks the sum).
    colocate: bool = False

    @field_validator("host")
    @classmethod
    def _one_interface(cls, value: str) -> str:
        if value.strip() in ("", "0.0.0.0", "::", "*"):
            raise ValueError("a wildcard would open the unauthenticated weight-sync and learner stores on every "
                             "network of the node; use auto (the node's address on the cluster network, found "
                             "from Ray) or one address")
        return value


class LoggingConfig(Section):
    dir: str = "runs/default"
    log_every: int = Field(default=1, ge=1)
    image_every: int = Field(default=10, ge=0)  # 0: no prediction image grids


class CheckpointConfig(Section):
    dir: str = "checkpoints/run"
    every: int = Field(default=10, ge=0)  # 0: only at the end
    keep_last: int = Field(default=2, ge=1)
    resume: str = "auto"  # auto | never | path to a checkpoint


class ReliabilityConfig(Section):
    """What a fault may cost before the run stops (docs/reliability.md)."""

    # A rollout or reward worker that dies or hangs is replaced and its lost work re-run; more than
    # max_restarts replacements within restart_window_s end the run with a message naming the worker.
    max_restarts: int = Field(default=5, ge=0)
    restart_window_s: float = Field(default=3600, gt=0)
    # An update whose rewards, advantages, loss or gradients hold a NaN/inf is skipped (warning, counter);
    # this many skipped in a row stop the run.
    max_nonfinite_steps: int = Field(default=3, ge=1)


class ChaosConfig(Section):
    """Fault injection for drills: SIGKILL a random rollout or reward worker every `kill_every` steps."""

    kill_every: int = Field(default=0, ge=0)  # 0: off
    targets: list[Literal["rollout", "reward"]] = Field(default_factory=lambda: ["rollout", "reward"], min_length=1)
    seed: int = 0


class EvaluationConfig(Section):
    """`python -m rl.evaluate` (and the final evaluation of `rl.sweep`): greedy answers on `data.split`."""

    output_dir: str = "runs/eval"  # metrics.json, metrics.md, gallery.png, predictions.jsonl
    max_rows: int = Field(default=0, ge=0)  # first N rows of the split; 0: all of them
    gallery_rows: int = Field(default=16, ge=0)  # images drawn in gallery.png; 0: none
    # Also `samples` answers per row at the rollout temperature (seeded by `sample_seed`), scored together as
    # `sampled/<metric>`: the policy GRPO trains, where greedy answers can move the other way. 0: greedy only.
    samples: int = Field(default=0, ge=0)
    sample_seed: int = 987654321


class SFTConfig(Section):
    """Supervised fine-tuning (`python -m rl.sft`, the `sft` stage): (image, prompt) -> answer, loss on the
    answer tokens only. Later stages of the same pipeline start from `output_dir`."""

    data_path: str | None = None  # folder holding data.split and data.val_split (.jsonl); None: data.path
    output_dir: str = "checkpoints/sft"  # final HF checkpoint, published by rename when training ends
    state_dir: str = "checkpoints/sft-steps"  # resumable checkpoint-N folders (weights + optimizer + state)
    resume: str = "auto"  # auto (newest matching checkpoint in state_dir) | never | path to a checkpoint
    num_steps: int = Field(default=1200, ge=1)  # optimizer steps
    # Rows per optimizer step = micro x accumulation x processes (32 in the demo). With sampling=batch_rebalance
    # a micro-batch holds micro rows on average: short answers go together, long ones together.
    micro_batch_size: int = Field(default=16, ge=1)
    grad_accum_steps: int = Field(default=2, ge=1)
    num_processes: int = Field(default=1, ge=1)  # > 1: this many processes on this node (rl/sft.py)
    lr: float = Field(default=1e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # after warmup; short runs learn faster constant
    warmup_steps: int = Field(default=10, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    # true: the vision encoder stays fixed and only the merger (projector) and the language model train, as
    # usual when fine-tuning a pretrained Qwen-VL. The demo's tiny tower is random: frozen, it tells the
    # language model what is in the image but not where, so its coordinates never depend on the image
    # (docs/sft.md); it must train.
    freeze_vision: bool = False
    # How rows form batches (transformers' train_sampling_strategy; TRL packs no image rows). batch_rebalance:
    # each optimizer step's rows are drawn at random, then split by total length into its accumulation steps
    # (and processes), so a short answer is not padded to the longest of the step: the same gradient as one
    # random batch, less padding. group_by_length: batches of similar prompt+image length across the epoch
    # (images of many sizes; grouping by answer length instead would give steps of one answer shape, whose
    # gradient stops depending on the image). random: batches as drawn.
    sampling: Literal["batch_rebalance", "group_by_length", "random"] = "batch_rebalance"
    eval_every: int = Field(default=50, ge=0)  # val loss every N steps; 0: only at the end
    grounding_eval_rows: int = Field(default=64, ge=0)  # data.val_split rows answered greedily before/after; 0: off
    eval_batch_size: int = Field(default=32, ge=1)
    save_every: int = Field(default=0, ge=0)  # resumable checkpoint every N steps; 0: only at the end
    keep_last: int = Field(default=2, ge=1)
    log_every: int = Field(default=10, ge=1)
    dataloader_workers: int = Field(default=0, ge=0)
    # auto: DeepSpeed on accelerators, plain torch on CPU; true/false force it. ZeRO stage, offload and
    # gradient checkpointing are the learner's (learner.*): one DeepSpeed setup per cluster config.
    deepspeed: Literal["auto"] | bool = "auto"


class Config(Section):
    # Stages run in order by rl.launch: "sft" fine-tunes model.path (later stages then start from
    # sft.output_dir); "grpo" trains with the grounding rewards (rl/trainer.py); "preview" samples a
    # few grounded answers with vLLM.
    pipeline: list[Literal["preview", "sft", "grpo"]] = Field(default_factory=lambda: ["sft", "grpo"])
    seed: int = 0  # the run; rl/core/seeds.py says what each of the five seed keys drives
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    rewards: RewardConfig = Field(default_factory=RewardConfig)
    grpo: GRPOConfig = Field(default_factory=GRPOConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    weight_sync: WeightSyncConfig = Field(default_factory=WeightSyncConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    reliability: ReliabilityConfig = Field(default_factory=ReliabilityConfig)
    chaos: ChaosConfig = Field(default_factory=ChaosConfig)

    @field_validator("rewards", mode="before")
    @classmethod
    def _rewards(cls, value: Any) -> RewardConfig:
        # RewardConfig is a plain dataclass (rewards/ stays free of pydantic); it checks its own keys.
        if isinstance(value, RewardConfig):
            return value
        known = {f.name for f in dataclasses.fields(RewardConfig)}
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise ValueError(f"rewards.{unknown[0]}: unknown key (expected one of: {', '.join(sorted(known))})")
        return RewardConfig.from_dict(dict(value))

    @model_validator(mode="after")
    def _arithmetic(self) -> Config:
        # e.g. 8 prompts x 8 samples = 64 sequences per step, split over L learners in micro-batches.
        sequences = self.grpo.prompts_per_step * self.grpo.group_size
        per_step = self.grpo.num_mini_batches * self.learner.num_learners * self.learner.micro_batch_size
        if sequences % per_step:
            raise ValueError(
                f"grpo.prompts_per_step x grpo.group_size = {sequences} sequences per step is not divisible "
                f"by grpo.num_mini_batches x learner.num_learners x learner.micro_batch_size = {per_step}"
            )
        self.layout.check(self.cluster.nodes, self.cluster.gpus_per_node)
        if self.grpo.clip_high < self.grpo.clip_low:
            raise ValueError(f"grpo.clip_high ({self.grpo.clip_high}) < grpo.clip_low ({self.grpo.clip_low})")
        if self.grpo.off_policy_lag and self.grpo.tis_cap is None:
            raise ValueError("grpo.off_policy_lag=1 needs grpo.tis_cap: the importance weights pi_old / pi_sampler "
                             "are what corrects samples drawn one policy version behind")
        return self

    @property
    def layout(self) -> Layout:
        """The actors this config starts: learners, engines, their TP size, colocation (rl/core/layout.py)."""
        return Layout(self.learner.num_learners, self.rollout.num_workers, self.rollout.tensor_parallel_size,
                      self.cluster.colocate)

    def frame(self) -> CoordFrame:
        """The coordinate frame of `data.coord_frame`; qwen25_pixels resizes as the model's processor does."""
        return parse_frame(self.data.coord_frame, self.model.min_pixels, self.model.max_pixels)

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"rewards"})
        data["rewards"] = dataclasses.asdict(self.rewards)
        return data

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.create(self.to_dict()))


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            section = _section_at(e["loc"][:-1])
            known = ", ".join(section.model_fields) if section else "?"
            lines.append(f"{path}: unknown key (expected one of: {known})")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            if path == "<root>" or msg.startswith(f"{path}."):
                lines.append(msg)  # the message already names the key
            elif isinstance(e.get("input"), dict):
                lines.append(f"{path}: {msg}")  # a section's own check: its keys are named in the message
            else:
                lines.append(f"{path}: {msg} (got {e.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> Any:
    """One YAML file; a top-level `base: other.yaml` (relative to the file) is merged under it first, so
    a variant (e.g. the 2-node MedMO config) states only what differs from the config it derives from."""
    node = OmegaConf.load(path)
    base = node.pop("base", None) if isinstance(node, DictConfig) else None
    if base is None:
        return node
    parent = (path.parent / str(base)).resolve()
    if parent in seen or parent == path.resolve():
        raise ConfigError(f"{path}: base: {base} loops back to a file already loaded")
    if not parent.is_file():
        raise ConfigError(f"{path}: base: {base}: file not found ({parent})")
    return OmegaConf.merge(_load_yaml(parent, (*seen, path.resolve())), node)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """YAML (default conf/default.yaml) + omegaconf dotlist overrides -> validated `Config`."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        merged = OmegaConf.merge(_load_yaml(path), OmegaConf.from_dotlist(list(overrides or [])))
        raw = OmegaConf.to_container(merged, resolve=True)
    except (OmegaConfBaseException, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc)) from None
