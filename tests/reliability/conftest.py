"""Shared by the reliability tests: a small GRPO run with every real part, recorded step by step, and the
same run without any fault to compare against."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rl.core.config import load_config
from tests.conftest import CACHE

# 2 prompts x 4 samples = 8 sequences per step. The extra length reward gives a random model's groups
# reward variance, so every step updates.
SMALL = ["pipeline=[grpo]", "grpo.prompts_per_step=2", "grpo.group_size=4", "learner.micro_batch_size=4",
         "learner.lr=1e-3", "rollout.max_tokens=12", "rollout.num_workers=2", "cluster.reward_workers=2",
         f"model.path={CACHE / 'tiny-qwen3vl'}", f"data.path={CACHE / 'synthetic'}", "data.synthetic.num_train=64",
         "data.synthetic.num_val=8", "data.synthetic.num_test=8", "logging.image_every=0", "checkpoint.every=0",
         "weight_sync.timeout_s=30", "rewards.extra={tests.integration.extra_rewards:response_length: 1.0}"]
STEPS = 4


class Run:
    """A GRPOTrainer with a record of what each step trained on and the weights after it."""

    def __init__(self, tmp: Path, *overrides: str):
        from rl.trainer import GRPOTrainer

        self.trainer = GRPOTrainer(load_config(overrides=[
            *SMALL, f"grpo.num_steps={STEPS}", f"checkpoint.dir={tmp / 'ckpt'}", f"logging.dir={tmp / 'runs'}",
            *overrides]))
        self.prompts: list[list[str]] = []  # per step: the images of the kept samples, in order
        self.weights: list[dict[str, str]] = []  # per step: checksum of every tensor synced after it
        self.orders: list[dict[str, int]] = []  # per step: the prompt order's position after it
        self.metrics: list[dict[str, float]] = []
        self.before_step: Callable[[int], None] = lambda step: None
        collect, sync = self.trainer.collect, self.trainer._sync

        def recorded_collect(timings: dict[str, float], step: int) -> Any:
            self.before_step(self.trainer.step + 1)
            batch = collect(timings, step)
            self.prompts.append([str(row.image) for row in batch.rows])
            return batch

        def recorded_sync(version: int) -> Any:
            stats = sync(version)
            self.weights.append(dict(self.trainer.sync.last_checksums))
            return stats

        self.trainer.collect, self.trainer._sync = recorded_collect, recorded_sync

    def train(self, steps: int = STEPS) -> None:
        while self.trainer.step < steps:
            self.metrics.append(self.trainer.train_step())
            self.orders.append(self.trainer.order.state())


@pytest.fixture(scope="session")
def reference(ray_cluster, tiny_model_dir, synthetic_dir, tmp_path_factory) -> Iterator[Run]:
    """The same run without any fault."""
    run = Run(tmp_path_factory.mktemp("reference"))
    try:
        run.train()
    finally:
        run.trainer.shutdown()
    yield run


def signal_later(pid: int, sig: int, delay_s: float) -> None:
    """Send `sig` to process `pid` from a thread after `delay_s` seconds (while the step's calls run)."""
    threading.Timer(delay_s, os.kill, (pid, sig)).start()
