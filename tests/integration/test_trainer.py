"""The GRPO stage end to end with every real part (vLLM engines, DeepSpeed learners, reward service,
weight sync): under `ray job submit` against a real head, and resumed mid-run to the same weights."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl import checkpoint
from rl.config import load_config
from tests.conftest import CACHE

pytestmark = pytest.mark.slow

# 2 prompts x 4 samples = 8 sequences per step, one micro-batch of 8... in 2 micro-batches of 4.
# The extra length reward gives a random model's groups reward variance, so every step updates.
SMALL = ["pipeline=[grpo]", "grpo.prompts_per_step=2", "grpo.group_size=4", "learner.micro_batch_size=4",
         "learner.lr=1e-3", "rollout.max_tokens=12", f"model.path={CACHE / 'tiny-qwen3vl'}",
         f"data.path={CACHE / 'synthetic'}", "data.synthetic.num_train=64", "data.synthetic.num_val=8",
         "data.synthetic.num_test=8", "logging.image_every=2",
         "rewards.extra={tests.integration.extra_rewards:response_length: 1.0}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_jobs_api(ray: str, dashboard: int, env: dict, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        probe = subprocess.run([ray, "job", "list", f"--address=http://127.0.0.1:{dashboard}"], env=env,
                               capture_output=True, timeout=60)
        if probe.returncode == 0:
            return
        time.sleep(2)
    raise TimeoutError(f"the Ray head's job API on port {dashboard} did not come up within {timeout_s:.0f} s")


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next(run_dir.glob("events.out.tfevents.*"))))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]} | {
        "images": acc.Tags()["images"]}


def test_resume_restores_the_checkpoint_exactly_and_continues(ray_cluster, tiny_model_dir, synthetic_dir, tmp_path):
    from actors.weight_sync import checksum
    from rl.trainer import GRPOTrainer, run_grpo

    def config(steps: int):
        return load_config(overrides=[*SMALL, f"grpo.num_steps={steps}", "checkpoint.every=3",
                                      f"checkpoint.dir={tmp_path / 'ckpt'}", f"logging.dir={tmp_path / 'runs'}"])

    run_grpo(config(3))
    saved = checkpoint.step_dir(tmp_path / "ckpt", 3)
    trainer = GRPOTrainer(config(6))  # checkpoint.resume=auto
    try:
        state = checkpoint.load_state(saved)
        assert (trainer.step, trainer.version) == (3, 3) == (state["step"], state["version"])
        assert trainer.order.state() == state["data"]  # the same next prompts
        # The learners reloaded the checkpoint bit for bit: what they synced to the engines at start-up
        # is exactly the checkpoint's weights.
        weights = load_file(str(saved / "model" / "model.safetensors"))
        assert trainer.sync.last_checksums == checksum(weights.items())
        trainer.run(log=lambda *_: None)
    finally:
        trainer.shutdown()
    assert [p.name for p in checkpoint.complete(tmp_path / "ckpt")] == ["step-000003", "step-000006"]
    final = checkpoint.load_state(checkpoint.step_dir(tmp_path / "ckpt", 6))
    # 6 steps x 2 prompts, more if dynamic sampling refilled a zero-variance group.
    assert final["version"] == 6 and final["data"]["epoch"] * 64 + final["data"]["cursor"] >= 12
    moved = load_file(str(checkpoint.step_dir(tmp_path / "ckpt", 6) / "model" / "model.safetensors"))
    assert max((moved[k] - weights[k]).abs().max().item() for k in weights) > 0  # training went on
    assert not any(torch.isnan(t).any() for t in moved.values())
