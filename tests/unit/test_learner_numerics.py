"""The learner's pure numerical helpers (actors/learner_batch.py), without engines: the finite-weights
check and the micro-batch loss in the non-finite cases `Learner._step` must skip (the end-to-end skips
are in tests/reliability/test_numerical.py)."""

from __future__ import annotations

import math

import torch

from actors.learner_batch import MicroBatch, micro_batch_loss, nonfinite_names, padded
from rl.core.config import GRPOConfig


def test_nonfinite_names_lists_the_tensors_with_a_nan_or_an_inf():
    named = [("ok", torch.ones(3)), ("nan", torch.tensor([1.0, math.nan])), ("empty", torch.empty(0)),
             ("inf", torch.tensor([[-math.inf]])), ("bf16", torch.full((2,), 3e38).to(torch.bfloat16)),
             ("big", torch.tensor([3e38], dtype=torch.float32))]
    assert nonfinite_names(named) == ["nan", "inf"]
    assert nonfinite_names([]) == []


def _batch(advantages: list[float], old: list[list[float]]) -> MicroBatch:
    lengths = [len(row) for row in old]
    n, width = sum(lengths), max(lengths)
    return MicroBatch(inputs={}, positions=torch.arange(n), targets=torch.zeros(n, dtype=torch.long), lengths=lengths,
                      mask=padded([[1.0] * k for k in lengths], width), advantages=torch.tensor(advantages),
                      old_logprobs=padded(old, width), ref_logprobs=None, sampling_logprobs=None)


def _loss_and_grad(batch: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.full((sum(batch.lengths),), -1.0, requires_grad=True)
    loss, _ = micro_batch_loss(batch, logp, None, GRPOConfig(), max_len=8, num_tokens=sum(batch.lengths),
                               num_seqs=len(batch.lengths))
    loss.backward()
    return loss.detach(), logp.grad


def test_micro_batch_loss_and_gradient_are_finite_on_sane_inputs():
    loss, grad = _loss_and_grad(_batch([1.0, -1.0], [[-1.1, -0.9, -1.0], [-1.0, -1.2]]))
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_a_nan_or_inf_advantage_makes_the_loss_non_finite():
    for bad in (math.nan, math.inf, -math.inf):
        loss, _ = _loss_and_grad(_batch([1.0, bad], [[-1.0] * 3, [-1.0] * 2]))
        assert not torch.isfinite(loss), bad


def test_a_wildly_stale_old_logprob_gives_a_finite_loss_but_nan_gradients():
    # ratio exp(-1 + 1e4) = inf; for A > 0 the clipped term wins the max, so the loss stays finite, but
    # the unclipped branch's zero gradient times the ratio's inf is NaN: only the gradient check sees it.
    loss, grad = _loss_and_grad(_batch([1.0, -1.0], [[-1e4, -1.0, -1.0], [-1.0, -1.0]]))
    assert torch.isfinite(loss)
    assert torch.isnan(grad[0]) and torch.isfinite(grad[1:]).all()
