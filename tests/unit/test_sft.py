"""SFT pieces without training: config, data -> labels (loss on the answer and EOS only), lengths, bad rows,
trainer arguments, resumable-run bookkeeping, atomic publishing and the launch/CLI wiring."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum

from rl.core.config import Config, ConfigError, load_config
from rl.core.data import DatasetError
from rl.core.platform import get_platform
from rl.sft import (
    SUMMARY,
    continue_from_sft,
    deepspeed_config,
    drop_incomplete,
    find_resume,
    is_complete,
    load_processor,
    publish,
    run_dir,
    run_fingerprint,
    training_args,
    uses_deepspeed,
)
from rl.sft_data import (
    RUN_MARKER,
    load_sft_split,
    make_collator,
    prompt_text,
    to_dataset,
)
from tests.payload import plant


@pytest.fixture(scope="module")
def processor(tiny_config: Config, tiny_model_dir: Path):
    return load_processor(tiny_config.model)


def _cfg(base: Config, **sft) -> Config:
    return base.model_copy(update={"sft": base.sft.model_copy(update=sft)})


def _images_from(cfg: Config, folder: Path) -> Config:
    """cfg with `folder` as a data.image_roots entry: the rows below name the synthetic set's images."""
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_roots": [str(folder)]})})


def _write_split(folder: Path, name: str, rows: list[dict | str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_config_section_validates_and_pipeline_accepts_sft():
    cfg = load_config(overrides=["pipeline=[sft,preview]", "sft.lr=3e-4", "sft.lr_schedule=constant"])
    assert cfg.pipeline == ["sft", "preview"] and cfg.sft.lr == 3e-4
    with pytest.raises(ConfigError, match=r"sft.lr_schedule: Input should be 'constant' or 'cosine'"):
        load_config(overrides=["sft.lr_schedule=linear"])
    with pytest.raises(ConfigError, match=r"sft.nope: unknown key \(expected one of: data_path, output_dir"):
        load_config(overrides=["sft.nope=1"])


def test_labels_cover_the_answer_and_eos_only(tiny_config, synthetic_dir, processor):
    split = load_sft_split(tiny_config, "train", processor)
    rows = split.rows[:4]
    sub = type(split)(rows=rows, lengths=split.lengths[:4], prompt_lengths=split.prompt_lengths[:4])
    dataset = to_dataset(sub, processor.tokenizer, "batch_rebalance")
    batch = make_collator(processor)([dataset[i] for i in range(len(rows))])
    tok = processor.tokenizer
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for i, row in enumerate(rows):
        labels = batch["labels"][i]
        trained = labels[labels != -100].tolist()
        assert tok.decode(trained) == row.answer + "<|im_end|>"  # nothing of the prompt, image or padding
        ids = batch["input_ids"][i][batch["attention_mask"][i] == 1].tolist()
        assert ids.count(image_token) == 16  # 128 px, patch 16, merge 2: the configured resolution
        assert ids[-len(trained):] == trained  # the answer ends the sequence (padding on the right)
        assert int(batch["attention_mask"][i].sum()) == split.lengths[i]  # exact token counts
        assert split.prompt_lengths[i] == split.lengths[i] - len(trained)


def test_prompt_is_what_rollout_sends_to_vllm(tiny_config, synthetic_dir, processor):
    from actors.rollout import engine_inputs

    row = load_sft_split(tiny_config, "val", processor).rows[0]
    assert prompt_text(processor.tokenizer, row.prompt) == engine_inputs([row], processor.tokenizer)[0]["prompt"]


def test_processor_takes_the_configured_pixel_limits(tiny_config, tiny_model_dir):
    model = tiny_config.model.model_copy(update={"min_pixels": 64 * 64, "max_pixels": 64 * 64})
    assert load_processor(model).image_processor.size == {"shortest_edge": 64 * 64, "longest_edge": 64 * 64}


def test_bad_rows_are_named_with_line_numbers(tiny_config, synthetic_dir, processor, tmp_path):
    good = json.loads((synthetic_dir / "train.jsonl").read_text().splitlines()[0])
    good["image"] = str(synthetic_dir / good["image"])
    bad_box = {**good, "answer": "Nodule <box>[[1, 2]]</box>"}
    folder = _write_split(tmp_path / "d", "train", [good, "{not json", bad_box])
    cfg = _cfg(tiny_config, data_path=str(folder))
    with pytest.raises(DatasetError, match=r"train.jsonl:1: image path escapes the dataset folder: /"):
        load_sft_split(cfg, "train", processor)
    cfg = _images_from(cfg, synthetic_dir)
    with pytest.raises(DatasetError, match=r"train.jsonl:2: invalid JSON"):
        load_sft_split(cfg, "train", processor)
    skip = cfg.model_copy(update={"data": cfg.data.model_copy(update={"on_error": "skip"})})
    split = load_sft_split(skip, "train", processor)
    assert len(split.rows) == 1 and [s.split(": ")[0].rsplit(":", 1)[1] for s in split.skipped] == ["2", "3"]


def test_missing_image_is_named_and_long_rows_are_caught(tiny_config, synthetic_dir, processor, tmp_path):
    good = json.loads((synthetic_dir / "train.jsonl").read_text().splitlines()[0])
    folder = _write_split(tmp_path / "d", "train", [{**good, "image": "nowhere.png"}])
    with pytest.raises(DatasetError, match=r"train.jsonl:1: image not found: .*nowhere.png"):
        load_sft_split(_cfg(tiny_config, data_path=str(folder)), "train", processor)
    good["image"] = str(synthetic_dir / good["image"])
    folder = _write_split(tmp_path / "e", "train", [good])
    short = _images_from(_cfg(tiny_config, data_path=str(folder)), synthetic_dir)
    short = short.model_copy(update={"model": short.model.model_copy(update={"max_model_len": 40})})
    with pytest.raises(DatasetError, match=r"train.jsonl:1: \d+ tokens > model.max_model_len \(40\)"):
        load_sft_split(short, "train", processor)
    with pytest.raises(DatasetError, match=r"nothing/train.jsonl: dataset split not found \(data.split=train;"):
        load_sft_split(_cfg(tiny_config, data_path=str(tmp_path / "nothing")), "train", processor)


def test_sft_trains_on_data_split_and_holds_out_data_val_split(tiny_config, synthetic_dir, processor, tmp_path):
    rows = [json.loads(line) for line in (synthetic_dir / "train.jsonl").read_text().splitlines()[:5]]
    rows = [{**row, "image": str(synthetic_dir / row["image"])} for row in rows]
    _write_split(tmp_path / "d", "mine", rows[:2])
    folder = _write_split(tmp_path / "d", "held", rows[2:])  # and no train.jsonl or val.jsonl
    cfg = _images_from(_cfg(tiny_config, data_path=str(folder)), synthetic_dir)
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"split": "mine", "val_split": "held"})})
    train, val = load_sft_split(cfg, "train", processor), load_sft_split(cfg, "val", processor)
    assert [(r.source.name, r.answer) for r in train.rows] == [("mine.jsonl", row["answer"]) for row in rows[:2]]
    assert [(r.source.name, r.answer) for r in val.rows] == [("held.jsonl", row["answer"]) for row in rows[2:]]


def test_training_arguments_come_from_the_config(tiny_config, tmp_path):
    cfg = _cfg(tiny_config, lr=2e-4, lr_schedule="cosine", warmup_steps=7, grad_accum_steps=4, micro_batch_size=8,
               num_steps=33, eval_every=0, sampling="group_by_length")
    args = training_args(cfg, get_platform("cpu"), tmp_path)
    assert (args.learning_rate, args.warmup_steps, args.gradient_accumulation_steps) == (2e-4, 7, 4)
    assert args.lr_scheduler_type == "cosine" and args.max_steps == 33 and args.save_steps == 33
    assert args.train_sampling_strategy == "group_by_length" and args.length_column_name == "length"
    assert args.eval_strategy == "no"  # eval_every=0: only the forced eval at the last step
    # TRL's own defaults would turn on bf16 autocast and gradient checkpointing on a CPU: ours are explicit.
    assert not args.bf16 and not args.gradient_checkpointing and args.deepspeed is None
    assert training_args(_cfg(cfg, lr_schedule="constant"), get_platform("cpu"), tmp_path).lr_scheduler_type \
        == "constant_with_warmup"


def test_batch_rebalance_splits_each_random_step_by_length(tiny_config, synthetic_dir, tmp_path):
    """sft.sampling=batch_rebalance: a step's rows are a random draw of the run's seed, and its micro-batches
    are runs of that draw sorted by total length, so each is padded to its own longest row only."""
    from transformers.trainer_pt_utils import BatchRebalanceSampler

    from rl.sft import build_run

    def first_step(seed: int) -> tuple[list[list[int]], list[int]]:
        cfg = _cfg(tiny_config, sampling="batch_rebalance", micro_batch_size=8, grad_accum_steps=4,
                   output_dir=str(tmp_path / "out"), state_dir=str(tmp_path / f"steps-{seed}"))
        cfg = cfg.model_copy(update={"seed": seed, "logging": cfg.logging.model_copy(
            update={"dir": str(tmp_path / "runs")})})
        run = build_run(cfg)
        sampler = run.trainer._get_train_sampler()
        assert isinstance(sampler, BatchRebalanceSampler) and sampler.seed == seed
        return [next(batches) for batches in [iter(sampler)] for _ in range(4)], run.train.lengths

    step, lengths = first_step(seed=0)
    rows = [i for batch in step for i in batch]
    assert len(rows) == len(set(rows)) == 32 and rows != list(range(32))
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in step)
    assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:], strict=False)), spans  # no interleaving
    padded = sum(len(b) * max(lengths[i] for i in b) for b in step)
    assert padded < 32 * max(lengths[i] for i in rows)  # less than one batch padded to the longest
    other, _ = first_step(seed=1)
    assert {i for b in other for i in b} != set(rows)


def test_deepspeed_follows_the_learner_settings(tiny_config):
    assert not uses_deepspeed(tiny_config, get_platform("cpu"))
    assert uses_deepspeed(tiny_config, get_platform("cuda")) and uses_deepspeed(tiny_config, get_platform("rocm"))
    assert uses_deepspeed(_cfg(tiny_config, deepspeed=True), get_platform("cpu"))
    assert not uses_deepspeed(_cfg(tiny_config, deepspeed=False), get_platform("cuda"))
    learner = tiny_config.learner.model_copy(update={"zero_stage": 3, "offload_optimizer": True,
                                                     "offload_params": True})
    ds = deepspeed_config(learner)
    assert ds["zero_optimization"]["stage"] == 3 and ds["zero_optimization"]["offload_param"] == {"device": "cpu"}
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]  # vLLM-loadable saves
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["bf16"] == {"enabled": "auto"}
    assert "offload_param" not in deepspeed_config(learner.model_copy(update={"zero_stage": 2}))["zero_optimization"]


def test_fingerprint_tracks_what_changes_the_weights(tiny_config, synthetic_dir, tmp_path):
    base = run_fingerprint(tiny_config)
    assert run_fingerprint(_cfg(tiny_config, lr=5e-4)) != base
    assert run_fingerprint(_cfg(tiny_config, num_steps=7)) != base
    assert run_fingerprint(_cfg(tiny_config, eval_every=3, log_every=2, output_dir=str(tmp_path))) == base
    assert run_dir(tiny_config).name == f"run-{base}"


def _checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"w" * step)
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        (path / RUN_MARKER).write_text("{}")
    return path


def test_resume_refuses_a_state_file_that_pickles_code_naming_it(tiny_config, tmp_path):
    cfg = _cfg(tiny_config, state_dir=str(tmp_path / "steps"))
    newest = _checkpoint(run_dir(cfg), 10)
    rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state()}
    torch.save(rng, newest / "rng_state.pth")  # what the Trainer saves: numpy arrays are allowed
    torch.save({"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 1e-4}]}, newest / "optimizer.pt")
    (newest / "global_step10").mkdir()  # SFT on DeepSpeed
    torch.save({"zero_stage": ZeroStageEnum.weights, "loss_scaler": LossScaler(1.0)},
               newest / "global_step10" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    assert find_resume(cfg) == newest
    marker = tmp_path / "ran"
    plant(newest / "scheduler.pt", {"last_epoch": 10}, marker)
    message = rf"^sft.resume=auto: {re.escape(str(newest / 'scheduler.pt'))}: refused to load: it pickles io.open"
    with pytest.raises(ConfigError, match=message):
        find_resume(cfg)
    with pytest.raises(ConfigError, match=message.replace("auto", re.escape(str(newest)))):
        find_resume(_cfg(cfg, resume=str(newest)))
    assert not marker.exists()


def test_resume_picks_the_newest_complete_checkpoint_of_this_run(tiny_config, synthetic_dir, tmp_path):
    cfg = _cfg(tiny_config, state_dir=str(tmp_path / "steps"))
    assert find_resume(cfg) is None
    folder = run_dir(cfg)
    _checkpoint(folder, 5)
    newest = _checkpoint(folder, 10)
    torn = _checkpoint(folder, 15, complete=False)  # a crash while saving
    _checkpoint(run_dir(_cfg(cfg, lr=1e-5)), 20)  # another run's settings: never resumed from
    assert find_resume(cfg) == newest and not is_complete(torn)
    assert find_resume(_cfg(cfg, resume="never")) is None
    assert find_resume(_cfg(cfg, resume=str(folder / "checkpoint-5"))) == folder / "checkpoint-5"
    with pytest.raises(ConfigError, match=r"sft.resume=.*nope: not a resumable SFT checkpoint"):
        find_resume(_cfg(cfg, resume=str(tmp_path / "nope")))
    drop_incomplete(folder)
    assert not torn.exists() and newest.exists()


def test_publish_replaces_the_output_by_rename(tmp_path, monkeypatch):
    out = tmp_path / "sft"
    publish(_checkpoint(tmp_path / "a", 3), out, {"steps": 3})
    assert json.loads((out / SUMMARY).read_text()) == {"steps": 3}
    assert (out / "model.safetensors").read_bytes() == b"www"
    publish(_checkpoint(tmp_path / "b", 4), out, {"steps": 4})
    assert (out / "model.safetensors").read_bytes() == b"wwww"

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("rl.sft.shutil.copytree", broken)
    with pytest.raises(OSError, match="disk full"):
        publish(_checkpoint(tmp_path / "c", 5), out, {"steps": 5})
    assert (out / "model.safetensors").read_bytes() == b"wwww"  # the old checkpoint is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "sft"]  # no temporary left behind


def test_later_stages_start_from_the_sft_checkpoint(tiny_config):
    after = continue_from_sft(_cfg(tiny_config, output_dir="somewhere/sft"))
    assert after.model.path == "somewhere/sft" and after.model.tiny is None  # never rebuilt as a tiny model
    assert after.model.min_pixels == tiny_config.model.min_pixels and tiny_config.model.tiny is not None


def test_launch_hands_the_stage_result_to_the_next_stage(monkeypatch):
    from rl import launch

    seen = []
    monkeypatch.setattr(launch, "prepare", lambda cfg, stages: seen.append(list(stages)))
    monkeypatch.setitem(launch.STAGES, "sft", lambda cfg: continue_from_sft(cfg))
    monkeypatch.setitem(launch.STAGES, "preview", lambda cfg: seen.append(cfg.model.path))
    assert launch.main(["pipeline=[sft,preview]", "sft.output_dir=out/sft"]) == 0
    assert seen == [["sft", "preview"], "out/sft"]  # start-up checks the files of every stage first


def test_sft_front_door_rejects_bad_input(monkeypatch, capsys):
    from rl import launch, sft

    monkeypatch.setattr(launch, "prepare", lambda cfg, stages: pytest.fail("prepare ran on a bad config"))
    assert sft.main(["sft.nope=1"]) == 2
    assert "sft.nope: unknown key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sft.main(["--help"])
    assert "python -m rl.sft" in capsys.readouterr().out

    def bad_rows(cfg):
        raise DatasetError("data/train.jsonl:7: missing key 'answer'")

    monkeypatch.setattr(launch, "prepare", lambda cfg, stages: None)
    monkeypatch.setitem(launch.STAGES, "sft", bad_rows)
    assert sft.main([]) == 1
    assert "error: data/train.jsonl:7: missing key 'answer'" in capsys.readouterr().err


