"""The product's proof: GRPO with the demo's settings, started from the demo's SFT checkpoint, raises the
held-out greedy total reward. Every part is real (vLLM engines, DeepSpeed learner, reward service, weight
sync); the only change from `bash launch/demo.sh` is where outputs go."""

from __future__ import annotations

import pytest

from rl.config import load_config

pytestmark = pytest.mark.slow

# docs/learning.md, 30 demo steps from the 350-step SFT checkpoint, encoder frozen. Where that SFT lands
# depends on the CPU (the same seed and settings give val greedy total 1.544 on one machine class, 1.893 on
# an AVX-512 EPYC), and so does where GRPO's gain shows:
# - from 1.544 (greedy answers still repeat boxes): greedy +0.297 / +0.303 / +0.203 (seeds 0/1/2), sampled
#   +0.029 / +0.033 / +0.040;
# - from 1.893 (they do not): greedy +0.045 / -0.084, sampled +0.072 / +0.081 (seeds 0/1);
# - training the encoder instead (from 1.544): greedy +0.018 / +0.046, sampled -0.061 / +0.040.
# The run must raise the greedy total by GREEDY_MARGIN or the sampled one (GRPO's own objective: the
# expected reward at T=1) by SAMPLED_MARGIN. Every frozen run above clears one of them by 40% or more,
# neither unfrozen run clears either: a run that learned nothing from the rewards does not pass by luck.
GREEDY_MARGIN = 0.10
SAMPLED_MARGIN = 0.05


def test_grpo_raises_held_out_reward(sft_run, ray_cluster, tmp_path):
    from rl.trainer import GRPOTrainer

    sft_cfg, _ = sft_run
    cfg = load_config(overrides=[
        "pipeline=[grpo]", f"model.path={sft_cfg.sft.output_dir}", f"data.path={sft_cfg.data.path}",
        f"checkpoint.dir={tmp_path / 'ckpt'}", f"logging.dir={tmp_path / 'runs'}", "logging.image_every=0"])
    trainer = GRPOTrainer(cfg)
    try:
        result = trainer.run(log=print)
    finally:
        trainer.shutdown()
    before, after = result["before"], result["after"]
    greedy = after["total_reward"] - before["total_reward"]
    sampled = after["sampled/total_reward"] - before["sampled/total_reward"]
    print(f"held-out total reward gain: greedy {greedy:+.3f}, sampled {sampled:+.3f}")
    assert greedy >= GREEDY_MARGIN or sampled >= SAMPLED_MARGIN, (
        f"held-out total, greedy {before['total_reward']:.3f} -> {after['total_reward']:.3f}, sampled "
        f"{before['sampled/total_reward']:.3f} -> {after['sampled/total_reward']:.3f}")
    # The answers stay well-formed: the gain is not bought with broken tags.
    assert after["format_valid"] >= before["format_valid"] - 0.05
    assert trainer.step == cfg.grpo.num_steps
