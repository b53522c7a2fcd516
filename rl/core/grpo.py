"""The GRPO objective as plain tensor math: advantages, ratio, clipping, KL, importance sampling, losses.

Each function is one equation of the papers, named as they name it:
- GRPO (Shao et al. 2024, DeepSeekMath): group-normalised advantages, per-sequence token mean, k3 KL.
- DAPO (Yu et al. 2025): clip-higher (`clip_low` < `clip_high`), token-level mean, dynamic sampling.
- Dr. GRPO (Liu et al. 2025): no std scaling, constant length normaliser.
- Dual-clip PPO (Ye et al. 2020); KL estimators k1/k2/k3 (Schulman 2020);
  truncated importance sampling between rollout engine and learner (Yao et al. 2025, "TIS").

Shapes: B prompts, G samples per prompt, N = B*G sequences, T response tokens (right-padded; `mask`
is 1 on real response tokens). No Ray, vLLM or DeepSpeed here: the learner and the trainer call these,
and tests/unit/test_grpo.py checks each one against numbers worked by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

AdvStd = Literal["group", "batch", "none"]
LossAgg = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
KLEstimator = Literal["k1", "k2", "k3"]


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """sum(m * x) / max(sum(m), 1): the mean over real tokens (0 when there are none)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


# ---------------------------------------------------------------- advantages and dynamic sampling

def group_advantages(
    rewards: Tensor,  # [B*G], grouped contiguously: samples of prompt b at b*G .. b*G+G-1
    group_size: int,
    std: AdvStd = "group",
    eps: float = 1e-6,
) -> Tensor:  # [B*G]
    """A_i = (r_i - mean_group(r)) / (std(r) + eps).

    std="group": std over the sample's own group (GRPO); "batch": one std over the whole batch
    (more stable when some groups are nearly constant); "none": A_i = r_i - mean_group(r) (Dr. GRPO).
    std is the unbiased sample std (Bessel-corrected, as torch.std and DeepSeekMath's code)."""
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} items, "
                         f"got shape {tuple(rewards.shape)}")
    grouped = rewards.float().view(-1, group_size)  # [B, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if std == "none":
        return centred.view(-1)
    if std == "group":
        scale = grouped.std(dim=1, keepdim=True)  # [B, 1]
    elif std == "batch":
        scale = rewards.float().std()
    else:
        raise ValueError(f"unknown advantage std {std!r}; expected group, batch or none")
    return (centred / (scale + eps)).view(-1)


def dynamic_sampling_mask(
    rewards: Tensor,  # [B*G]
    group_size: int,
    atol: float = 1e-6,
) -> tuple[Tensor, dict[str, float]]:  # keep: [B] bool
    """DAPO dynamic sampling: keep group b iff max_g r_bg - min_g r_bg > atol.

    A group whose rewards are all equal has zero advantage everywhere: it adds no gradient, only
    dilutes the token mean. Returns the per-group keep mask and `dropped_frac`; refilling is the
    trainer's job."""
    grouped = rewards.view(-1, group_size)
    keep = (grouped.max(dim=1).values - grouped.min(dim=1).values) > atol
    return keep, {"dropped_frac": 1.0 - keep.float().mean().item() if keep.numel() else 0.0}


# ---------------------------------------------------------------- ratio, clipping, KL, importance sampling

def importance_ratio(
    logprobs: Tensor,  # [N, T] log pi_theta(y_t)
    old_logprobs: Tensor,  # [N, T] log pi_old(y_t), detached
) -> Tensor:  # [N, T]
    """r_t = pi_theta(y_t) / pi_old(y_t) = exp(log pi_theta - log pi_old)."""
    return torch.exp(logprobs - old_logprobs)


def clipped_surrogate(
    ratio: Tensor,  # [N, T]
    advantages: Tensor,  # [N] (one per sequence) or [N, T]
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:  # loss [N, T], indicators [N, T] bool
    """PPO-clip with clip-higher, as a loss to minimise:

        L_t = -min(r_t A, clip(r_t, 1 - clip_low, 1 + clip_high) A)
        dual clip, A < 0 only:  L_t = min(L_t, -c A)

    Indicators: `clipped_high` (A > 0, r > 1 + clip_high), `clipped_low` (A < 0, r < 1 - clip_low),
    `dual_clipped` (A < 0, r > c): the tokens whose gradient the clip removed."""
    adv = advantages.unsqueeze(-1) if advantages.ndim == 1 else advantages
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss = torch.maximum(unclipped, clipped)
    flags = {
        "clipped_high": (adv > 0) & (ratio > 1.0 + clip_high),
        "clipped_low": (adv < 0) & (ratio < 1.0 - clip_low),
    }
    if dual_clip is not None:
        floor = -adv * dual_clip  # positive where A < 0
        flags["dual_clipped"] = (adv < 0) & (loss > floor)
        loss = torch.where(adv < 0, torch.minimum(loss, floor), loss)
    return loss, flags


def kl_estimate(
    logprobs: Tensor,  # [N, T] log pi_theta
    ref_logprobs: Tensor,  # [N, T] log pi_ref
    estimator: KLEstimator = "k3",
) -> Tensor:  # [N, T]
    """Per-token estimate of KL(pi_theta || pi_ref) from samples of pi_theta, with d = log pi_theta - log pi_ref:

        k1 = d                      (unbiased, high variance, can be negative)
        k2 = d^2 / 2                (biased, low variance)
        k3 = exp(-d) - 1 + d        (unbiased, low variance, >= 0; GRPO's choice)"""
    d = logprobs - ref_logprobs
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return torch.exp(-d) - 1.0 + d
    raise ValueError(f"unknown KL estimator {estimator!r}; expected k1, k2 or k3")


def truncated_is_weights(
    old_logprobs: Tensor,  # [N, T] learner's log pi_old
    sampling_logprobs: Tensor,  # [N, T] rollout engine's log pi_sampler of the same tokens
    cap: float,
) -> Tensor:  # [N, T], detached
    """w_t = min(pi_old(y_t) / pi_sampler(y_t), C).

    The engine samples with its own kernels (and, one step off-policy, older weights), so its
    probabilities differ from the learner's; w corrects the policy gradient for that, truncated at C
    so a rare token the engine under-sampled cannot blow up the step."""
    return torch.exp(old_logprobs - sampling_logprobs).clamp(max=cap).detach()


# ---------------------------------------------------------------- aggregation and the loss

def aggregate(
    values: Tensor,  # [N, T] per-token loss
    mask: Tensor,  # [N, T] 1 on response tokens
    mode: LossAgg,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: float | None = None,
) -> Tensor:  # scalar
    """Per-token losses -> one scalar.

        token_mean               sum_i sum_t m x / sum_i sum_t m                 (DAPO)
        seq_mean_token_mean      1/N sum_i (sum_t m x / sum_t m)                 (GRPO)
        seq_mean_token_sum_norm  1/N sum_i (sum_t m x) / L_max                   (Dr. GRPO)

    `num_tokens` / `num_seqs` replace the denominators sum m / N with the counts of the whole batch,
    so that micro-batches summed together (gradient accumulation, several learners) give exactly the
    loss of the whole batch. `max_len` is Dr. GRPO's constant L_max (default: T)."""
    mask = mask.to(values.dtype)
    if mode == "token_mean":
        denom = mask.sum().clamp(min=1) if num_tokens is None else num_tokens
        return (values * mask).sum() / denom
    n = values.shape[0] if num_seqs is None else num_seqs
    per_seq = (values * mask).sum(dim=1)  # [N]
    if mode == "seq_mean_token_mean":
        return (per_seq / mask.sum(dim=1).clamp(min=1)).sum() / n
    if mode == "seq_mean_token_sum_norm":
        return (per_seq / (values.shape[1] if max_len is None else max_len)).sum() / n
    raise ValueError(f"unknown loss aggregation {mode!r}")


def grpo_loss(
    logprobs: Tensor,  # [N, T] log pi_theta, with grad
    old_logprobs: Tensor,  # [N, T] log pi_old, detached
    advantages: Tensor,  # [N]
    mask: Tensor,  # [N, T]
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
    loss_agg: LossAgg = "token_mean",
    ref_logprobs: Tensor | None = None,  # [N, T]; needed when kl_coef > 0
    kl_coef: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    is_weights: Tensor | None = None,  # [N, T] from truncated_is_weights, or None
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """J = agg_t( w_t * L^clip_t ) + beta * agg_t( KL_t ), minimised.

    Stats (detached, means over this batch's response tokens): pg_loss, kl (when used), clipfrac,
    clipfrac_low/high, dual_clipfrac, approx_kl = mean((r - 1) - log r) (KL(pi_old || pi_theta)),
    ratio_mean/max/min, is_weight_mean."""
    mask = mask.to(logprobs.dtype)
    agg = {"num_tokens": num_tokens, "num_seqs": num_seqs, "max_len": max_len}
    ratio = importance_ratio(logprobs, old_logprobs)
    pg, flags = clipped_surrogate(ratio, advantages, clip_low, clip_high, dual_clip)
    if is_weights is not None:
        pg = pg * is_weights
    pg_loss = aggregate(pg, mask, loss_agg, **agg)
    loss = pg_loss
    stats: dict[str, Tensor] = {"pg_loss": pg_loss}
    if kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs")
        kl = aggregate(kl_estimate(logprobs, ref_logprobs, kl_estimator), mask, loss_agg, **agg)
        loss = loss + kl_coef * kl
        stats["kl"] = kl
    with torch.no_grad():
        log_ratio = logprobs - old_logprobs
        real = mask.bool()
        stats["approx_kl"] = masked_mean(torch.exp(log_ratio) - 1 - log_ratio, mask)
        stats["clipfrac_low"] = masked_mean(flags["clipped_low"].to(mask.dtype), mask)
        stats["clipfrac_high"] = masked_mean(flags["clipped_high"].to(mask.dtype), mask)
        stats["clipfrac"] = stats["clipfrac_low"] + stats["clipfrac_high"]
        if dual_clip is not None:
            stats["dual_clipfrac"] = masked_mean(flags["dual_clipped"].to(mask.dtype), mask)
        stats["ratio_mean"] = masked_mean(ratio, mask)
        stats["ratio_max"] = ratio[real].max() if real.any() else ratio.new_ones(())
        stats["ratio_min"] = ratio[real].min() if real.any() else ratio.new_ones(())
        if is_weights is not None:
            stats["is_weight_mean"] = masked_mean(is_weights, mask)
    stats["loss"] = loss
    return loss, {k: v.detach() for k, v in stats.items()}


# ---------------------------------------------------------------- per-token log-probs from hidden states

def _logits(hidden: Tensor, head: Callable[[Tensor], Tensor], temperature: float, bias: Tensor | None) -> Tensor:
    logits = head(hidden).float()  # [c, V]
    return (logits if bias is None else logits + bias) / temperature


def _chunk_logprobs(hidden: Tensor, targets: Tensor, head: Callable[[Tensor], Tensor],
                    temperature: float, bias: Tensor | None = None) -> Tensor:
    logits = _logits(hidden, head, temperature, bias)
    chosen = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(logits, dim=-1)


def _entropy(logits: Tensor) -> Tensor:  # [c, V] -> [c]
    return torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)


def token_logprobs(
    hidden: Tensor,  # [M, H] hidden states at the positions that predict `targets`
    targets: Tensor,  # [M] token ids
    head: Callable[[Tensor], Tensor],  # [m, H] -> [m, V] logits (the LM head)
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
    bias: Tensor | None = None,  # [V] added to the logits before the temperature (the engine's logit bias)
) -> tuple[Tensor, Tensor | None]:  # logprobs [M], entropy [M] or None
    """log pi(y_t) = z'_{y_t} / tau - logsumexp(z' / tau), z' = z + bias, computed `chunk_size` tokens at a time.

    Only a [chunk, V] block of logits exists at once: the chosen logit is gathered and the
    log-normaliser taken with logsumexp, never a full-vocabulary log_softmax copy. With grad enabled
    each chunk is checkpointed, so backward recomputes its logits instead of keeping [M, V] alive.
    Entropy H = logsumexp(z) - sum softmax(z) z is a metric only (no grad)."""
    logps, entropies = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        h, y = hidden[start:start + chunk_size], targets[start:start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            logps.append(checkpoint(_chunk_logprobs, h, y, head, temperature, bias, use_reentrant=False))
            if with_entropy:
                with torch.no_grad():
                    entropies.append(_entropy(_logits(h.detach(), head, temperature, bias)))
        else:
            logits = _logits(h, head, temperature, bias)
            logps.append(logits.gather(-1, y.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1))
            if with_entropy:
                entropies.append(_entropy(logits))
    empty = hidden.new_zeros(0, dtype=torch.float32)
    logp = torch.cat(logps) if logps else empty
    if not with_entropy:
        return logp, None
    return logp, torch.cat(entropies) if entropies else empty


# ---------------------------------------------------------------- learning-rate schedule

def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: Literal["constant", "cosine"],
              min_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based):

        warmup (s < W):  (s + 1) / W
        constant:        1
        cosine:          m + (1 - m) * (1 + cos(pi * p)) / 2,  p = (s - W) / max(1, S - W) clipped to [0, 1]"""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
