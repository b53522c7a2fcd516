"""What the learner eats and how it computes log-probs: `TrainSample`, the multimodal collation into
model inputs, the module DeepSpeed wraps (`PolicyLogprobs`), the split of a global batch over
learners / mini-batches / micro-batches, metric reduction across ranks and the finite-weights check.

Kept apart from actors/learner.py so the Ray/DeepSpeed wrapper stays short; nothing here starts a
process group or an engine (the reduction takes the process group's all_reduce as an argument).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rl.core.chunks import balanced_sizes
from rl.core.config import GRPOConfig
from rl.core.data import load_image
from rl.core.grpo import grpo_loss, token_logprobs, truncated_is_weights
from rl.core.model_parts import VISION_TOKEN_BIAS, vision_token_ids


@dataclass
class TrainSample:
    """One sampled response, as the learner needs it. Token ids are exactly what the rollout engine
    saw and produced: the prompt is chat-templated with the image placeholder already expanded to
    one `<|image_pad|>` per merged image patch."""

    prompt_ids: list[int]
    response_ids: list[int]
    image: str  # path of the prompt's image
    advantage: float = 0.0
    sampling_logprobs: list[float] | None = None  # the engine's, one per response token (for TIS)
    old_logprobs: list[float] | None = None  # the learner's pi_old; computed by `update` when None
    ref_logprobs: list[float] | None = None  # the reference model's; computed when None and kl_coef > 0


@dataclass
class MicroBatch:
    """Model inputs of one micro-batch, right-padded. `weight` 0 marks a padding micro-batch that only
    keeps this rank's collectives in step with the others (its loss is multiplied by 0)."""

    inputs: dict[str, Tensor]  # input_ids / attention_mask / mm_token_type_ids [b, S], pixel_values, image_grid_thw
    positions: Tensor  # [M] flat index into [b * S] of the hidden state that predicts each response token
    targets: Tensor  # [M] the response tokens
    lengths: list[int]  # response length of each row (M = sum)
    mask: Tensor  # [b, T] 1 on response tokens
    advantages: Tensor  # [b]
    old_logprobs: Tensor | None  # [b, T]
    ref_logprobs: Tensor | None  # [b, T]
    sampling_logprobs: Tensor | None  # [b, T]
    weight: float = 1.0

    def to(self, device: torch.device) -> MicroBatch:
        move = {k: v.to(device) for k, v in self.inputs.items()}
        opt = [None if t is None else t.to(device) for t in (self.old_logprobs, self.ref_logprobs,
                                                            self.sampling_logprobs)]
        return MicroBatch(move, self.positions.to(device), self.targets.to(device), self.lengths,
                          self.mask.to(device), self.advantages.to(device), *opt, weight=self.weight)

    @property
    def num_tokens(self) -> int:
        return int(self.inputs["attention_mask"].sum())


class PolicyLogprobs(nn.Module):
    """The DeepSpeed-wrapped module: Qwen3-VL trunk -> hidden states at response positions -> per-token
    log-probs via the LM head, chunk by chunk (rl.core.grpo.token_logprobs). Wrapping it as one module lets
    ZeRO-3's start/end-of-forward hooks see the whole pass, including the LM head calls."""

    def __init__(self, policy: nn.Module, temperature: float, chunk_size: int):
        super().__init__()
        self.policy = policy
        self.temperature = temperature
        self.chunk_size = chunk_size
        self._vision_types: Tensor | None = None
        # The rollout engine's logit bias on vision placeholder tokens (actors/rollout.py), so a log-prob
        # here means what the engine's sampling log-prob means: the distribution tokens were drawn from.
        bias = torch.zeros(policy.lm_head.out_features)  # [V]
        bias[vision_token_ids(policy.config)] = VISION_TOKEN_BIAS
        self.register_buffer("logit_bias", bias, persistent=False)
        # Image slots are the prompt's image tokens only. A sampled response may contain <|image_pad|>
        # as plain text (vLLM embeds generated tokens as text); the stock id-based mask would count it
        # as an image slot. The collator's mm_token_type_ids mark the prompt's slots alone.
        policy.model.get_placeholder_mask = self._placeholder_mask

    def _placeholder_mask(self, input_ids: Tensor, inputs_embeds: Tensor, image_features: Tensor | None = None,
                          video_features: Tensor | None = None) -> tuple[Tensor, Tensor]:  # [b, S, 1] each
        types = self._vision_types.to(inputs_embeds.device)
        return (types == 1).unsqueeze(-1), (types == 2).unsqueeze(-1)

    def forward(self, inputs: dict[str, Tensor], positions: Tensor, targets: Tensor,
                with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:  # [M], [M] | None
        self._vision_types = inputs["mm_token_type_ids"]
        if "segments" in inputs:
            inputs = self._shared_prompt_inputs(dict(inputs))
        hidden = self.policy.model(**inputs, use_cache=False).last_hidden_state  # [b, S, H]
        hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)  # [M, H]
        return token_logprobs(hidden, targets, self.policy.lm_head, self.temperature, self.chunk_size, with_entropy,
                              self.logit_bias)

    def _shared_prompt_inputs(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """Rows packed by `Collator(share_prompts=True)`: M-RoPE positions of the row as one sequence
        (the model's own `get_rope_index`), each response moved back to start right after the prompt,
        and the 4D `shared_prefix_mask` in place of the padding mask (transformers passes a 4D mask
        through as is: boolean for SDPA, additive for eager attention)."""
        segments, shift = inputs.pop("segments"), inputs.pop("position_shift")  # [b, S] each
        positions, _ = self.policy.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], inputs.get("image_grid_thw"),
            attention_mask=inputs["attention_mask"])  # [3, b, S]
        mask = shared_prefix_mask(segments)  # [b, 1, S, S]
        if self.policy.config.get_text_config()._attn_implementation == "eager":
            dtype = self.policy.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        return inputs | {"position_ids": positions - shift[None], "attention_mask": mask}


def micro_batch_loss(batch: MicroBatch, logp_flat: Tensor, entropy: Tensor | None, g: GRPOConfig, max_len: int,
                     num_tokens: float, num_seqs: float) -> tuple[Tensor, dict[str, Any]]:
    """GRPO loss of one micro-batch from its flat log-probs (`PolicyLogprobs`), normalised by the whole
    global mini-batch's token / sequence counts, and its stats (with the mean `entropy`)."""
    logp = pad_rows(logp_flat, batch.lengths, batch.mask.shape[1])
    old = batch.old_logprobs if batch.old_logprobs is not None else logp.detach()
    is_weights = None
    if batch.sampling_logprobs is not None:
        is_weights = truncated_is_weights(old, batch.sampling_logprobs, g.tis_cap)
    loss, stats = grpo_loss(
        logp, old, batch.advantages, batch.mask, clip_low=g.clip_low, clip_high=g.clip_high, dual_clip=g.dual_clip,
        loss_agg=g.loss_agg, ref_logprobs=batch.ref_logprobs, kl_coef=g.kl_coef, kl_estimator=g.kl_estimator,
        is_weights=is_weights, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len,
    )
    stats["entropy"] = entropy.mean() if entropy is not None and entropy.numel() else 0.0
    return loss, stats


def pad_rows(flat: Tensor, lengths: list[int], width: int) -> Tensor:  # [M] -> [b, width], zero-padded
    """Per-token values of all rows, concatenated, back into right-padded rows (keeps the graph)."""
    return torch.stack([nn.functional.pad(r, (0, width - r.numel())) for r in flat.split(lengths)])


def padded(rows: Sequence[Sequence[float]], width: int, fill: float = 0.0) -> Tensor:  # [len(rows), width]
    out = torch.full((len(rows), width), fill, dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.as_tensor(row, dtype=torch.float32)
    return out


class Collator:
    """TrainSamples -> MicroBatch. The image goes through the model's own image processor with the
    configured pixel limits (`ModelConfig.processor_size()`, the same the rollout engine used), so
    `pixel_values` / `image_grid_thw` give exactly as many image features as the prompt has image
    tokens; a mismatch is an error naming the sample, not a silent shape failure inside the model.

    With `share_prompts`, the samples of one prompt (a GRPO group: same prompt ids, same image) share
    one row: the prompt once, then each response after it, `[prompt | resp_1 | resp_2 | ...]`. Each
    response attends to the prompt and to itself only (`shared_prefix_mask`) and keeps the positions
    it has alone (`position_shift`), so every log-prob equals the unshared one while the prompt and
    its image go through the model once per group instead of G times (the "shared-prefix forward" of
    Prefix Grouper, arXiv 2506.05433). For G=4 answers of 32 tokens after a ~120-token prompt that is
    253 tokens per group instead of 608."""

    def __init__(self, model_path: str, processor_size: dict[str, int], hf_config: Any,
                 trust_remote_code: bool = False, share_prompts: bool = False):
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(model_path, trust_remote_code=trust_remote_code)
        self.image_processor = processor.image_processor
        self.size = processor_size
        self.image_token_id = hf_config.image_token_id
        self.video_token_id = hf_config.video_token_id
        self.merge = hf_config.vision_config.spatial_merge_size
        self.share_prompts = share_prompts
        pad = getattr(processor.tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else 0  # padded positions are masked out; any id works

    def images(self, paths: Sequence[str]) -> dict[str, Tensor]:
        images = [load_image(Path(p)) for p in paths]
        out = self.image_processor(images=images, size=self.size, return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def rows(self, samples: Sequence[TrainSample]) -> list[list[int]]:
        """Indices of the samples each model row holds: one row per sample, or, sharing prompts, one per
        distinct (prompt, image) in order of first appearance."""
        if not self.share_prompts:
            return [[i] for i in range(len(samples))]
        rows: dict[tuple, list[int]] = {}
        for i, s in enumerate(samples):
            rows.setdefault((tuple(s.prompt_ids), s.image), []).append(i)
        return list(rows.values())

    def __call__(self, samples: Sequence[TrainSample], weight: float = 1.0) -> MicroBatch:
        rows = self.rows(samples)
        vision = self.images([samples[row[0]].image for row in rows])
        features = (vision["image_grid_thw"].prod(dim=-1) // self.merge**2).tolist()
        for row, n in zip(rows, features, strict=True):
            tokens = samples[row[0]].prompt_ids.count(self.image_token_id)
            if tokens != n:
                raise ValueError(f"sample {row[0]} ({samples[row[0]].image}): prompt has {tokens} image tokens but "
                                 f"the processor gives {n} image features; rollout and learner must use the same "
                                 "model.min/max_pixels")
        for i, s in enumerate(samples):
            if not s.response_ids:
                raise ValueError(f"sample {i} ({s.image}): empty response")
        prompts = [samples[row[0]].prompt_ids for row in rows]
        width = max(len(p) + sum(len(samples[i].response_ids) for i in row)
                    for p, row in zip(prompts, rows, strict=True))
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)  # 1 image slot, 2 video slot, 0 text
        segments = torch.full((len(rows), width), -1, dtype=torch.long)  # 0 prompt, k response k, -1 padding
        shift = torch.zeros((len(rows), width), dtype=torch.long)  # response k: its start - the prompt's end
        where = [torch.empty(0, dtype=torch.long)] * len(samples)  # per sample: flat indices predicting it
        for r, (prompt, row) in enumerate(zip(prompts, rows, strict=True)):
            p = torch.as_tensor(prompt)
            input_ids[r, :len(p)] = p
            segments[r, :len(p)] = 0
            # Slots are in the prompt only: a vision token the policy sampled is text to it, as to vLLM.
            types[r, :len(p)] = (p == self.image_token_id).long() + 2 * (p == self.video_token_id).long()
            start = len(p)
            for k, i in enumerate(row, start=1):
                response = samples[i].response_ids
                end = start + len(response)
                input_ids[r, start:end] = torch.as_tensor(response)
                segments[r, start:end] = k
                shift[r, start:end] = start - len(p)
                # The hidden state at t-1 predicts token t; a response's first token, the prompt's last.
                where[i] = r * width + torch.cat([torch.tensor([len(p) - 1]), torch.arange(start, end - 1)])
                start = end
            attention[r, :start] = 1
        lengths = [len(s.response_ids) for s in samples]
        t = max(lengths)

        def optional(name: str) -> Tensor | None:
            values = [getattr(s, name) for s in samples]
            if all(v is None for v in values):
                return None
            for i, (v, n) in enumerate(zip(values, lengths, strict=True)):
                if v is None or len(v) != n:
                    raise ValueError(f"sample {i}: {name} has {None if v is None else len(v)} values for {n} "
                                     f"response tokens (give it for every sample of the batch or for none)")
            return padded(values, t)

        inputs = {"input_ids": input_ids, "attention_mask": attention, "mm_token_type_ids": types, **vision}
        if self.share_prompts:
            inputs |= {"segments": segments, "position_shift": shift}
        return MicroBatch(
            inputs=inputs, positions=torch.cat(where), targets=torch.as_tensor(
                [tok for s in samples for tok in s.response_ids], dtype=torch.long), lengths=lengths,
            mask=padded([[1.0] * n for n in lengths], t), advantages=torch.tensor([s.advantage for s in samples]),
            old_logprobs=optional("old_logprobs"), ref_logprobs=optional("ref_logprobs"),
            sampling_logprobs=optional("sampling_logprobs"), weight=weight,
        )


def check_shared_prompt_attention(policy: nn.Module) -> None:
    """Shared-prompt rows need an attention that takes a custom 4D mask: SDPA or eager, not
    flash-attention's varlen kernels. An error naming the key, at start-up, not mid-step."""
    impl = policy.config.get_text_config()._attn_implementation
    if impl not in ("sdpa", "eager"):
        raise ValueError(f"learner.share_prompts needs sdpa or eager attention, but the model uses {impl!r}: "
                         "set learner.share_prompts=false, or load the model with sdpa")


def shared_prefix_mask(segments: Tensor) -> Tensor:  # [b, S] -> [b, 1, S, S] bool, True = may attend
    """Attention mask of rows `[prompt | resp_1 | resp_2 | ...]` (`segments`: 0 prompt, k response k,
    -1 padding): query i sees key j iff j <= i and j is in the prompt or in i's own response,

        M[i, j] = (j <= i) & (seg[j] == 0 | seg[j] == seg[i]) & (seg[i] >= 0) & (seg[j] >= 0).

    A padding query sees itself only (a row with no key would give NaN softmax; its output is unused)."""
    seg_q, seg_k = segments[:, :, None], segments[:, None, :]  # [b, S, 1], [b, 1, S]
    n = segments.shape[1]
    causal = torch.ones(n, n, dtype=torch.bool, device=segments.device).tril()  # [S, S]
    visible = causal & ((seg_k == 0) | (seg_k == seg_q)) & (seg_k >= 0) & (seg_q >= 0)  # [b, S, S]
    visible |= torch.eye(n, dtype=torch.bool, device=segments.device) & (seg_q < 0)
    return visible[:, None]


# ---------------------------------------------------------------- splitting a batch

def shard_for_learners(count: int, num_learners: int, num_mini_batches: int) -> list[tuple[list[int], list[int]]]:
    """Per learner: (indices into the global batch, its share of each mini-batch).

    The global batch is cut into `num_mini_batches` contiguous mini-batches (one optimizer step each)
    and each mini-batch into one piece per learner; learner r gets piece r of every mini-batch, in
    order. So L learners take the same optimizer steps on the same samples as one learner would."""
    shards: list[tuple[list[int], list[int]]] = [([], []) for _ in range(num_learners)]
    start = 0
    for mini in balanced_sizes(count, num_mini_batches):
        for rank, piece in enumerate(balanced_sizes(mini, num_learners)):
            shards[rank][0].extend(range(start, start + piece))
            shards[rank][1].append(piece)
            start += piece
    for rank, (indices, _) in enumerate(shards):
        if not indices:
            raise ValueError(f"{count} samples in {num_mini_batches} mini-batches leave learner {rank} of "
                             f"{num_learners} without samples; give at least one per learner")
    return shards


def micro_batches(count: int, micro_size: int, num_micro: int) -> list[tuple[list[int], float]]:
    """`count` local samples as `num_micro` micro-batches of at most `micro_size`: (indices, weight).

    `num_micro` is the maximum over ranks: every rank runs the same number of forward/backward
    passes, or ZeRO-3's per-layer collectives would wait forever. A rank with fewer samples pads with
    weight-0 micro-batches that reuse its first sample."""
    chunks = [list(range(i, min(i + micro_size, count))) for i in range(0, count, micro_size)]
    return [(c, 1.0) for c in chunks] + [([0], 0.0)] * (num_micro - len(chunks))


def num_micro_batches(count: int, micro_size: int) -> int:
    return math.ceil(count / micro_size)


# ---------------------------------------------------------------- metrics across micro-batches and ranks

class MetricSum:
    """Accumulates per-micro-batch stats of `grpo_loss`: token-weighted means for the per-token stats,
    plain sums for the loss terms (already normalised by the whole mini-batch's counts), max / min for
    the ratio extremes. `reduce` combines ranks with one all-reduce per kind."""

    SUMMED = ("loss", "pg_loss", "kl")

    def __init__(self) -> None:
        self.weighted: dict[str, float] = {}
        self.summed: dict[str, float] = {}
        self.maxed: dict[str, float] = {}
        self.tokens = 0.0

    def add(self, stats: dict[str, Tensor | float], tokens: float) -> None:
        self.tokens += tokens
        for key, value in stats.items():
            v = float(value)
            if key in self.SUMMED:
                self.summed[key] = self.summed.get(key, 0.0) + v
            elif key.endswith("_max"):
                self.maxed[key] = max(self.maxed.get(key, -math.inf), v if tokens else -math.inf)
            elif key.endswith("_min"):  # kept as a max of negatives so one MAX all-reduce serves both
                self.maxed[key] = max(self.maxed.get(key, -math.inf), -v if tokens else -math.inf)
            else:
                self.weighted[key] = self.weighted.get(key, 0.0) + v * tokens

    def reduce(self, all_reduce: Callable[[Tensor, str], None], steps: int) -> dict[str, float]:
        """`all_reduce(tensor, "sum" | "max")` in place across ranks (identity with one rank)."""
        w_keys, s_keys, m_keys = sorted(self.weighted), sorted(self.summed), sorted(self.maxed)
        sums = torch.tensor([self.weighted[k] for k in w_keys] + [self.summed[k] for k in s_keys] + [self.tokens],
                            dtype=torch.float64)
        maxes = torch.tensor([self.maxed[k] for k in m_keys], dtype=torch.float64)
        all_reduce(sums, "sum")
        if m_keys:
            all_reduce(maxes, "max")
        tokens = max(float(sums[-1]), 1.0)
        out = {k: float(sums[i]) / tokens for i, k in enumerate(w_keys)}
        out |= {k: float(sums[len(w_keys) + i]) / max(steps, 1) for i, k in enumerate(s_keys)}
        out |= {k: float(maxes[i]) * (-1 if k.endswith("_min") else 1) for i, k in enumerate(m_keys)}
        return out


def nonfinite_names(named: Iterable[tuple[str, Tensor]]) -> list[str]:
    """Names of the tensors that hold a NaN or an inf (the learner runs it on its weight partitions)."""
    return [name for name, t in named if not bool(torch.isfinite(t).all())]
