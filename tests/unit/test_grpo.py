"""rl/core/grpo.py against numbers worked by hand on small tensors (each expected value is written as the
arithmetic that gives it, so a reader can check it without running anything)."""

from __future__ import annotations

import math

import pytest
import torch

from rl.core.grpo import (
    aggregate,
    clipped_surrogate,
    dynamic_sampling_mask,
    group_advantages,
    grpo_loss,
    importance_ratio,
    kl_estimate,
    lr_factor,
    masked_mean,
    token_logprobs,
    truncated_is_weights,
)

LN2 = math.log(2.0)


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float32),
                               torch.as_tensor(expected, dtype=torch.float32), atol=tol, rtol=0)


# ---------------------------------------------------------------- advantages

REWARDS = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 2])  # two groups of G=4


def test_group_advantages_group_std():
    # group 1: mean 1/4, centred [3/4, -1/4, -1/4, -1/4], unbiased var (9/16 + 3/16) / 3 = 1/4 -> std 1/2
    # group 2: mean 1/2, centred [-1/2, -1/2, -1/2, 3/2], unbiased var (3/4 + 9/4) / 3 = 1 -> std 1
    close(group_advantages(REWARDS, 4, "group", eps=0.0), [1.5, -0.5, -0.5, -0.5, -0.5, -0.5, -0.5, 1.5])


def test_group_advantages_no_std_is_dr_grpo():
    close(group_advantages(REWARDS, 4, "none"), [0.75, -0.25, -0.25, -0.25, -0.5, -0.5, -0.5, 1.5])


def test_group_advantages_batch_std():
    # batch mean 3/8; squared deviations (5/8)^2 + 6 (3/8)^2 + (13/8)^2 = 3.875; unbiased var 3.875 / 7
    std = math.sqrt(3.875 / 7)
    centred = [0.75, -0.25, -0.25, -0.25, -0.5, -0.5, -0.5, 1.5]
    close(group_advantages(REWARDS, 4, "batch", eps=0.0), [c / std for c in centred])


def test_group_advantages_constant_group_is_zero_and_eps_guards_division():
    close(group_advantages(torch.tensor([2.0, 2.0, 2.0]), 3, "group"), [0.0, 0.0, 0.0])


def test_group_advantages_rejects_ragged_groups():
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        group_advantages(torch.zeros(6), 4)


def test_dynamic_sampling_drops_zero_variance_groups():
    rewards = torch.tensor([1.0, 1, 1, 1, 0, 1, 0, 1, 2, 2, 2, 2])
    keep, stats = dynamic_sampling_mask(rewards, 4)
    assert keep.tolist() == [False, True, False]
    close(stats["dropped_frac"], 2 / 3)
    # float noise from summing reward components is not variance
    keep, _ = dynamic_sampling_mask(torch.tensor([0.8, 0.8 + 1e-9]), 2)
    assert keep.tolist() == [False]


# ---------------------------------------------------------------- ratio, clip, KL, IS

RATIO = torch.tensor([[0.5, 0.9, 1.1, 1.5], [0.5, 0.9, 1.1, 1.5]])
ADV = torch.tensor([1.0, -1.0])


def test_importance_ratio():
    close(importance_ratio(torch.log(torch.tensor([0.3, 0.2])), torch.log(torch.tensor([0.6, 0.1]))), [0.5, 2.0])


def test_clipped_surrogate_clip_higher():
    loss, flags = clipped_surrogate(RATIO, ADV, clip_low=0.2, clip_high=0.28)
    # A=+1: -min(r, clamp(r, 0.8, 1.28)) caps 1.5 at 1.28; A=-1: max(r, clamp(r, .8, 1.28)) raises .5 to .8
    close(loss, [[-0.5, -0.9, -1.1, -1.28], [0.8, 0.9, 1.1, 1.5]])
    assert flags["clipped_high"].tolist() == [[False, False, False, True], [False] * 4]
    assert flags["clipped_low"].tolist() == [[False] * 4, [True, False, False, False]]


def test_clipped_surrogate_dual_clip_caps_negative_advantage_loss():
    loss, flags = clipped_surrogate(RATIO, ADV, clip_low=0.2, clip_high=0.28, dual_clip=1.3)
    close(loss, [[-0.5, -0.9, -1.1, -1.28], [0.8, 0.9, 1.1, 1.3]])  # -c A = 1.3 bounds the A<0 row
    assert flags["dual_clipped"].tolist() == [[False] * 4, [False, False, False, True]]


def test_kl_estimators():
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))  # d = ln 2
    close(kl_estimate(logp, ref, "k1"), [LN2])
    close(kl_estimate(logp, ref, "k2"), [0.5 * LN2**2])
    close(kl_estimate(logp, ref, "k3"), [0.5 - 1 + LN2])  # exp(-ln 2) - 1 + ln 2
    close(kl_estimate(ref, ref, "k3"), [0.0])
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(logp, ref, "k4")  # type: ignore[arg-type]


def test_truncated_is_weights_cap_and_detach():
    old = torch.log(torch.tensor([0.5, 0.5, 0.2])).requires_grad_()
    sampling = torch.log(torch.tensor([0.25, 0.5, 0.4]))
    w = truncated_is_weights(old, sampling, cap=1.5)
    close(w, [1.5, 1.0, 0.5])  # ratios 2 (capped), 1, 0.5
    assert not w.requires_grad


# ---------------------------------------------------------------- aggregation

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])


def test_aggregate_modes():
    close(aggregate(VALUES, MASK, "token_mean"), (1 + 2 + 3 + 4) / 4)
    close(aggregate(VALUES, MASK, "seq_mean_token_mean"), (6 / 3 + 4 / 1) / 2)
    close(aggregate(VALUES, MASK, "seq_mean_token_sum_norm"), (6 / 3 + 4 / 3) / 2)  # L_max = T = 3
    close(aggregate(VALUES, MASK, "seq_mean_token_sum_norm", max_len=4), (6 / 4 + 4 / 4) / 2)
    close(aggregate(VALUES, MASK, "token_mean", num_tokens=8), 10 / 8)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_aggregate_micro_batches_sum_to_the_whole_batch(mode):
    counts = {"num_tokens": MASK.sum().item(), "num_seqs": 2, "max_len": 5}
    parts = sum(aggregate(VALUES[i:i + 1], MASK[i:i + 1], mode, **counts) for i in range(2))
    close(parts, aggregate(VALUES, MASK, mode, max_len=5))


def test_masked_mean_of_nothing_is_zero():
    close(masked_mean(torch.ones(2, 2), torch.zeros(2, 2)), 0.0)


# ---------------------------------------------------------------- the loss

LOSS_MASK = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 0]])  # 7 real tokens; row 2's r=1.5 is padding


def _loss(**kwargs):
    logprobs = torch.log(RATIO).requires_grad_()
    loss, stats = grpo_loss(logprobs, torch.zeros_like(RATIO), ADV, LOSS_MASK, clip_low=0.2, clip_high=0.28, **kwargs)
    return logprobs, loss, stats


def test_grpo_loss_value_stats_and_gradient():
    logprobs, loss, stats = _loss()
    # per-token losses (see test_clipped_surrogate_clip_higher): row 1 sums to -3.78, row 2's 3 real tokens to 2.8
    close(loss, (-3.78 + 2.8) / 7)
    close(stats["clipfrac_high"], 1 / 7)
    close(stats["clipfrac_low"], 1 / 7)
    close(stats["clipfrac"], 2 / 7)
    close(stats["ratio_mean"], (0.5 + 0.9 + 1.1 + 1.5 + 0.5 + 0.9 + 1.1) / 7)
    close(stats["ratio_max"], 1.5)
    close(stats["ratio_min"], 0.5)
    # approx_kl = mean(r - 1 - ln r): r=.5 -> ln2 - .5; r=.9 -> -.1 - ln .9; r=1.1 -> .1 - ln 1.1; r=1.5 -> .5 - ln 1.5
    k = {r: r - 1 - math.log(r) for r in (0.5, 0.9, 1.1, 1.5)}
    close(stats["approx_kl"], (2 * (k[0.5] + k[0.9] + k[1.1]) + k[1.5]) / 7)
    assert all(not v.requires_grad for v in stats.values())
    loss.backward()
    # d(-A r)/d ln r = -A r where the clip is not binding, 0 where it is (and on padding)
    close(logprobs.grad, [[-0.5 / 7, -0.9 / 7, -1.1 / 7, 0.0], [0.0, 0.9 / 7, 1.1 / 7, 0.0]])


def test_grpo_loss_kl_term():
    logprobs = torch.log(RATIO)
    _, loss, stats = _loss(ref_logprobs=logprobs - LN2, kl_coef=0.1, kl_estimator="k3")
    k3 = 0.5 - 1 + LN2  # every token has log pi - log pi_ref = ln 2
    close(stats["kl"], k3)
    close(loss, (-3.78 + 2.8) / 7 + 0.1 * k3)


def test_grpo_loss_kl_needs_reference():
    with pytest.raises(ValueError, match="ref_logprobs"):
        _loss(kl_coef=0.1)


def test_grpo_loss_importance_weights_scale_the_policy_term():
    w = torch.tensor([[2.0, 1, 1, 1], [1, 1, 1, 1]])
    _, loss, stats = _loss(is_weights=w)
    close(loss, (-3.78 - 0.5 + 2.8) / 7)  # the first token's -0.5 counts twice
    close(stats["is_weight_mean"], 8 / 7)


def test_grpo_loss_seq_mean_token_mean():
    _, loss, _ = _loss(loss_agg="seq_mean_token_mean")
    close(loss, (-3.78 / 4 + 2.8 / 3) / 2)


def test_grpo_loss_on_policy_gradient_is_minus_advantage():
    # At ratio 1 the clipped objective's gradient is the policy gradient: d/d logp = -A / num_tokens.
    logprobs = torch.zeros(2, 3, requires_grad=True)
    loss, stats = grpo_loss(logprobs, torch.zeros(2, 3), torch.tensor([2.0, -1.0]), torch.ones(2, 3),
                            clip_low=0.2, clip_high=0.2)
    loss.backward()
    close(loss, -(2.0 * 3 - 1.0 * 3) / 6)
    close(logprobs.grad, [[-2 / 6] * 3, [1 / 6] * 3])
    close(stats["clipfrac"], 0.0)


# ---------------------------------------------------------------- per-token log-probs

def test_token_logprobs_worked_example():
    logits = torch.tensor([[0.0, 0.0, LN2], [0.0, 0.0, LN2]])  # softmax [1/4, 1/4, 1/2]
    logp, entropy = token_logprobs(logits, torch.tensor([2, 0]), head=lambda h: h, with_entropy=True)
    close(logp, [math.log(0.5), math.log(0.25)])
    close(entropy, [-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))] * 2)
    # temperature 2: exp(z/2) = [1, 1, sqrt 2]
    logp, none = token_logprobs(logits[:1], torch.tensor([2]), head=lambda h: h, temperature=2.0)
    close(logp, [math.log(math.sqrt(2) / (2 + math.sqrt(2)))])
    assert none is None


def test_token_logprobs_apply_the_logit_bias_before_the_temperature():
    # vLLM adds the logit bias, then divides by the temperature: log_softmax((z + b) / tau)
    logits = torch.tensor([[0.0, 0.0, LN2]])
    bias = torch.tensor([0.0, -2 * LN2, 0.0])  # exp((z + b) / 2) = [1, 1/2, sqrt 2]
    for grad in (False, True):
        hidden = logits.clone().requires_grad_(grad)
        logp, entropy = token_logprobs(hidden, torch.tensor([0]), head=lambda h: h, temperature=2.0,
                                       with_entropy=True, bias=bias)
        close(logp, [-math.log(1.5 + math.sqrt(2))])
        p = torch.tensor([1, 0.5, math.sqrt(2)]) / (1.5 + math.sqrt(2))
        close(entropy, [float(-(p * p.log()).sum())])


def test_token_logprobs_chunked_equals_log_softmax_with_gradient():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(7, 8, requires_grad=True)
    targets = torch.randint(0, 11, (7,))
    logp, _ = token_logprobs(hidden, targets, head, temperature=0.7, chunk_size=3)
    logp.sum().backward()
    grad_chunked, head_grad_chunked = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad, head.weight.grad = None, None
    full = torch.log_softmax(head(hidden) / 0.7, -1).gather(-1, targets[:, None]).squeeze(-1)
    full.sum().backward()
    close(logp, full.detach(), tol=1e-6)
    close(grad_chunked, hidden.grad, tol=1e-6)
    close(head_grad_chunked, head.weight.grad, tol=1e-6)


# ---------------------------------------------------------------- learning-rate schedule

def test_lr_factor_warmup_then_cosine():
    f = [lr_factor(s, warmup_steps=2, total_steps=10, schedule="cosine", min_ratio=0.1) for s in (0, 1, 2, 6, 10, 20)]
    # warmup 1/2, 2/2; cosine from step 2 over 8 steps: p = 0, 1/2, 1 (and clipped past the end)
    close(f, [0.5, 1.0, 1.0, 0.1 + 0.9 * 0.5, 0.1, 0.1])
    assert lr_factor(5, 0, 10, "constant") == 1.0
