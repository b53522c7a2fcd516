"""SFT for real on the CPU: the tiny random Qwen3-VL learns the grounding format on synthetic data, the
checkpoint loads in transformers and vLLM as-is, an interrupted run resumes exactly, and several
processes train together (torchrun, gloo).

The learnability run is the slow part (~2-3 minutes on 2 cores); it runs once per module."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rl.config import Config, load_config
from rl.sft import SUMMARY, main, run_dir
from rl.sft_data import RUN_MARKER

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "tests"
# Enough steps to learn the format on 0-3 objects of 4 classes reliably, while the demo stops earlier.
LEARN_STEPS = 240


def _overrides(tmp: Path, model: Path, data: Path, **sft: object) -> list[str]:
    base = {"output_dir": tmp / "sft", "state_dir": tmp / "steps", "data_path": data, **sft}
    return [f"model.path={model}", f"data.path={data}", f"logging.dir={tmp / 'runs'}",
            *(f"sft.{k}={v}" for k, v in base.items())]


@pytest.fixture(scope="module")
def learned(tmp_path_factory, tiny_model_dir: Path) -> tuple[Config, dict]:
    """One full SFT run through the CLI on 2000 synthetic train rows; 64 held-out val rows are scored."""
    from rl.data import generate_synthetic

    data = CACHE / "synthetic-sft"
    generate_synthetic(data, num_train=2000, num_val=64, num_test=0, seed=0)
    tmp = tmp_path_factory.mktemp("sft")
    overrides = _overrides(tmp, tiny_model_dir, data, num_steps=LEARN_STEPS, eval_every=80,
                           grounding_eval_rows=64, log_every=20)
    assert main(overrides) == 0
    cfg = load_config(overrides=overrides)
    return cfg, json.loads((Path(cfg.sft.output_dir) / SUMMARY).read_text())


def test_tensorboard_has_the_sft_scalars(learned):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, _ = learned
    events = EventAccumulator(str(Path(cfg.logging.dir) / "sft"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"sft/loss", "sft/eval_loss", "sft/lr", "sft/samples_per_s", "sft/val/giou", "sft/val/tag_count"} <= tags
    assert [e.step for e in events.Scalars("sft/val/giou")] == [0, LEARN_STEPS]  # before and after
    losses = [e.value for e in events.Scalars("sft/loss")]
    assert losses[-1] < losses[0] / 3


def test_checkpoint_is_a_complete_hf_checkpoint(learned):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from rl.data import chat_messages, load_image, load_split

    cfg, _ = learned
    out = Path(cfg.sft.output_dir)
    for name in ("config.json", "model.safetensors", "generation_config.json", "processor_config.json",
                 "tokenizer.json", "chat_template.jinja", "trainer_state.json", RUN_MARKER):
        assert (out / name).is_file(), name
    assert not list(out.parent.glob(".sft.tmp-*"))
    processor = AutoProcessor.from_pretrained(out)
    assert processor.image_processor.size == cfg.model.processor_size()
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    row = load_split(Path(cfg.data.path) / "val.jsonl").rows[0]
    text = processor.apply_chat_template(chat_messages(row.prompt), add_generation_prompt=True)
    inputs = processor(text=[text], images=[load_image(row.image)], return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=cfg.rollout.max_tokens, do_sample=False)
    answer = processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "<box>" in answer or answer == "No findings."


def test_interrupted_run_resumes_exactly(tmp_path, tiny_model_dir, synthetic_dir):
    """Train 4 steps straight; separately stop after step 2 (its checkpoint survives, the step-4 one is torn
    by the 'crash') and run again: it resumes from step 2 and ends with the same weights."""
    from safetensors.torch import load_file

    common = dict(num_steps=4, micro_batch_size=8, save_every=2, keep_last=3, eval_every=2,
                  grounding_eval_rows=2, eval_batch_size=2, warmup_steps=1)
    straight = _overrides(tmp_path / "a", tiny_model_dir, synthetic_dir, **common)
    assert main(straight) == 0
    resumed = _overrides(tmp_path / "b", tiny_model_dir, synthetic_dir, **common)
    assert main(resumed) == 0
    cfg = load_config(overrides=resumed)
    folder = run_dir(cfg)
    (folder / "checkpoint-4" / RUN_MARKER).unlink()  # the crash hit while step 4 was being saved
    shutil.rmtree(cfg.sft.output_dir)
    assert main(resumed) == 0
    state = json.loads((Path(cfg.sft.output_dir) / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    a = load_file(tmp_path / "a" / "sft" / "model.safetensors")
    b = load_file(Path(cfg.sft.output_dir) / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-5, name
