"""The product's proof: GRPO with the demo's settings raises the held-out IoU of the boxes and the AP@0.5 of
its sampled answers (and keeps format, labels and total reward). Every part is real (vLLM engines, DeepSpeed
learner, reward service, weight sync). The GRPO stage is `bash launch/demo.sh`'s but for where outputs go and
its length (SUITE_GRPO_STEPS of the demo's 60); it starts from the suite's SFT run (`sft_run` in
tests/conftest.py: the demo's SFT settings on one thread, 900 steps on 2,000 images: CI's budget)."""

from __future__ import annotations

import pytest

from rl.core.config import load_config
from tests.conftest import SUITE_DATA_OVERRIDES

pytestmark = pytest.mark.slow

# docs/learning.md: 30 GRPO steps (the demo's until 2026-12-07) from a 900-step SFT checkpoint on 2,000 images
# (vision tower trained in SFT, frozen in GRPO). Held-out mean matched IoU, after minus before, greedy / sampled
# (8 per val image): +0.014 to +0.032 / +0.029 to +0.037 over 3 seeds (from 0.428 / 0.322). From the old
# 350-step checkpoint it was +0.011 to +0.025 / +0.014 to +0.027, and without the GIoU reward -0.016 to -0.026 /
# +0.007. The run must raise the IoU of its greedy or of its sampled answers by IOU_MARGIN. Where the SFT
# lands depends on the CPU class, hence either, not both.
SUITE_GRPO_STEPS = 30
IOU_MARGIN = 0.01
# And the sampled answers' AP@0.5 (what GRPO trains): +0.026 to +0.049 in all six 30-step runs of
# docs/learning.md (3 seeds x 2 rollout seedings). Greedy AP@0.5 is not asserted: on 64 val rows it moved
# -0.063 to +0.028 in 30 steps (one standard error there is ~0.05).
AP50_MARGIN = 0.01


def test_grpo_raises_held_out_iou(sft_run, ray_cluster, tmp_path):
    from rl.trainer import GRPOTrainer

    sft_cfg, _ = sft_run
    cfg = load_config(overrides=[
        "pipeline=[grpo]", f"model.path={sft_cfg.sft.output_dir}", f"data.path={sft_cfg.data.path}",
        *SUITE_DATA_OVERRIDES, f"grpo.num_steps={SUITE_GRPO_STEPS}",
        f"checkpoint.dir={tmp_path / 'ckpt'}", f"logging.dir={tmp_path / 'runs'}", "logging.image_every=0"])
    trainer = GRPOTrainer(cfg)
    try:
        result = trainer.run(log=print)
    finally:
        trainer.shutdown()
    before, after = result["before"], result["after"]
    gain = {k: after[k] - before[k] for k in after if k in before}
    shown = ("mean_iou_matched", "ap50", "total_reward", "format_valid")
    print("held-out gain: " + ", ".join(f"{k} {gain[k]:+.3f} (sampled {gain['sampled/' + k]:+.3f})" for k in shown))
    assert gain["mean_iou_matched"] >= IOU_MARGIN or gain["sampled/mean_iou_matched"] >= IOU_MARGIN, (
        f"held-out IoU, greedy {before['mean_iou_matched']:.3f} -> {after['mean_iou_matched']:.3f}, sampled "
        f"{before['sampled/mean_iou_matched']:.3f} -> {after['sampled/mean_iou_matched']:.3f}")
    assert gain["sampled/ap50"] >= AP50_MARGIN, (before["sampled/ap50"], after["sampled/ap50"])
    # Not bought with the rest: answers stay well-formed, labels right, the total reward does not fall.
    assert after["format_valid"] >= before["format_valid"] - 0.05
    assert after["label_accuracy"] >= before["label_accuracy"] - 0.03
    assert after["total_reward"] >= before["total_reward"] - 0.02
    assert trainer.step == cfg.grpo.num_steps
