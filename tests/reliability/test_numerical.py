"""Numerical faults in the learner, with the real `LearnerGroup` (2 learners, DeepSpeed ZeRO-3, fp32,
gloo) on the tiny Qwen3-VL: a NaN / inf loss or gradient on any rank, in any micro-batch, skips that
optimizer step on every rank and leaves weights and optimizer state bit-for-bit as they were.

Each update here is one optimizer step (one mini-batch) of 8 samples: learner 0 holds samples 0-3 and
learner 1 samples 4-7, in two micro-batches of 2 each, so a fault in sample 7 is on one rank only and
after a micro-batch whose gradients were already accumulated. One group serves the module; each test
starts from the initial checkpoint it saved."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from actors.learner import LearnerGroup, TrainSample
from rl.core.config import Config

pytestmark = pytest.mark.slow

PROMPTS, GROUP = 2, 4
RESPONSE_TOKENS = 6
# lr warms up over 4 steps: a skipped step that advanced the schedule would change the next step's size.
LEARNER = {"num_learners": 2, "zero_stage": 3, "micro_batch_size": 2, "lr": 1e-4, "warmup_steps": 4}


@pytest.fixture(scope="module")
def config(tiny_config: Config) -> Config:
    data = tiny_config.to_dict()
    data["grpo"] |= {"prompts_per_step": PROMPTS, "group_size": GROUP, "num_mini_batches": 1, "kl_coef": 0.0}
    data["learner"] |= LEARNER
    data["cluster"] |= {"platform": "cpu", "call_timeout_s": 300}
    return Config.model_validate(data)


@pytest.fixture(scope="module")
def samples(config: Config, synthetic_dir: Path, tiny_model_dir: Path) -> list[TrainSample]:
    """2 prompts (chat-templated with their image) x 4 random responses, advantages +-1."""
    from transformers import AutoProcessor

    from rl.core.data import chat_messages, load_image, load_split

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    gen = torch.Generator().manual_seed(0)
    out = []
    for row in load_split(synthetic_dir / "train.jsonl").rows[:PROMPTS]:
        text = processor.apply_chat_template(chat_messages(row.prompt), add_generation_prompt=True)
        ids = processor(text=[text], images=[load_image(row.image)], size=config.model.processor_size(),
                        return_tensors="pt")["input_ids"][0].tolist()
        for g in range(GROUP):
            response = torch.randint(16, len(processor.tokenizer), (RESPONSE_TOKENS,), generator=gen).tolist()
            out.append(TrainSample(ids, response, str(row.image), advantage=1.0 if g % 2 else -1.0))
    return out


@pytest.fixture(scope="module")
def group(ray_cluster, config: Config, tiny_model_dir: Path):
    group = LearnerGroup(config, name_prefix="numerical")
    yield group
    group.shutdown()


@pytest.fixture(scope="module")
def initial(group: LearnerGroup, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("numerical") / "initial"
    group.save(path)
    return path


@pytest.fixture
def fresh(group: LearnerGroup, initial: Path) -> LearnerGroup:
    group.load(initial)
    return group


@pytest.fixture(scope="module")
def one_update(group: LearnerGroup, initial: Path, samples: list[TrainSample]) -> dict[str, torch.Tensor]:
    """The weights after one normal update from the initial checkpoint."""
    group.load(initial)
    metrics = group.update(samples)
    assert metrics["skipped_nonfinite"] == 0 and metrics["optimizer_steps"] == 1
    return group.full_state_dict()


def _with(samples: list[TrainSample], index: int, **change) -> list[TrainSample]:
    return [replace(s, **change) if i == index else s for i, s in enumerate(samples)]


def _stale_old_logprobs(group: LearnerGroup, samples: list[TrainSample]) -> list[TrainSample]:
    """Every sample with its true old log-probs, except sample 5 (learner 1, first micro-batch): one
    token 1e4 nats too low. Ratio inf, positive advantage: the loss is finite, its gradient NaN
    (tests/unit/test_learner_numerics.py), so only the gradient check can catch it."""
    old = group.compute_logprobs(samples)
    old[5] = [-1e4] + old[5][1:]
    assert samples[5].advantage > 0
    return [replace(s, old_logprobs=lp) for s, lp in zip(samples, old, strict=True)]


def _assert_skipped(group: LearnerGroup, batch: list[TrainSample]) -> None:
    before = group.full_state_dict()
    metrics = group.update(batch)
    after = group.full_state_dict()
    assert metrics["skipped_nonfinite"] == 1 and metrics["optimizer_steps"] == 0, metrics
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step changed the weights"


def test_a_nan_advantage_on_one_rank_skips_the_step(fresh, samples):
    _assert_skipped(fresh, _with(samples, 7, advantage=math.nan))  # learner 1, second micro-batch


def test_an_inf_advantage_skips_the_step(fresh, samples):
    _assert_skipped(fresh, _with(samples, 0, advantage=math.inf))  # learner 0, first micro-batch


def test_nan_gradients_under_a_finite_loss_skip_the_step(fresh, samples):
    _assert_skipped(fresh, _stale_old_logprobs(fresh, samples))


def test_skipped_steps_leave_no_trace_on_the_next_update(fresh, samples, initial, one_update):
    """After the three skipped updates, a normal one lands bit-for-bit where it lands from the initial
    state: the skips left weights, Adam state and the lr schedule untouched and no gradient behind (the
    NaN comes after a micro-batch whose gradients were accumulated, and no skip follows it that could
    clear them by chance)."""
    fresh.load(initial)
    for batch in (_stale_old_logprobs(fresh, samples), _with(samples, 7, advantage=math.nan),
                  _with(samples, 0, advantage=math.inf)):
        assert fresh.update(batch)["skipped_nonfinite"] == 1
    start = fresh.full_state_dict()
    metrics = fresh.update(samples)
    after = fresh.full_state_dict()
    assert metrics["skipped_nonfinite"] == 0 and metrics["optimizer_steps"] == 1
    assert math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
    assert all(torch.isfinite(t).all() for t in after.values())
    assert max((after[k] - start[k]).abs().max().item() for k in after) > 0, "the normal update moved nothing"
    assert all(torch.equal(after[k], one_update[k]) for k in after), "the skips left a trace"
