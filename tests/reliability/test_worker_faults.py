"""Worker death and hangs during GRPO steps, with every real part (vLLM engines, DeepSpeed learner, reward
actors, weight sync): the trainer replaces the worker, re-runs only the lost work, and the run trains on
exactly the prompts and reaches exactly the weights of a run without the fault.

Faults are real: SIGKILL / SIGSTOP of the worker's process from outside (as the OOM killer or a stuck
driver would), timed from a thread while the step's calls are in flight."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rl.config import load_config
from rl.faults import RunStopped
from tests.conftest import CACHE

pytestmark = pytest.mark.slow

# 2 prompts x 4 samples = 8 sequences per step. The extra length reward gives a random model's groups
# reward variance, so every step updates.
SMALL = ["pipeline=[grpo]", "grpo.prompts_per_step=2", "grpo.group_size=4", "learner.micro_batch_size=4",
         "learner.lr=1e-3", "rollout.max_tokens=12", "rollout.num_workers=2", "cluster.reward_workers=2",
         f"model.path={CACHE / 'tiny-qwen3vl'}", f"data.path={CACHE / 'synthetic'}", "data.synthetic.num_train=64",
         "data.synthetic.num_val=8", "data.synthetic.num_test=8", "logging.image_every=0", "checkpoint.every=0",
         "rewards.extra={tests.integration.extra_rewards:response_length: 1.0}"]
STEPS = 3


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

        def recorded_collect(timings: dict[str, float]) -> Any:
            self.before_step(self.trainer.step + 1)
            batch = collect(timings)
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
            self.trainer.step += 1


@pytest.fixture(scope="module")
def reference(ray_cluster, tiny_model_dir, synthetic_dir, tmp_path_factory) -> Iterator[Run]:
    """The same run without any fault."""
    run = Run(tmp_path_factory.mktemp("reference"))
    try:
        run.train()
    finally:
        run.trainer.shutdown()
    yield run


def _signal_later(pid: int, sig: int, delay_s: float) -> None:
    threading.Timer(delay_s, os.kill, (pid, sig)).start()


def test_killed_rollout_and_reward_workers_are_replaced_and_nothing_changes(reference, tmp_path):
    run = Run(tmp_path)
    pool, rewards = run.trainer.pool, run.trainer.rewards
    killed: list[str] = []

    def inject(step: int) -> None:
        # Step 1: a rollout worker dies mid-generate. Step 2: a reward actor dies before scoring. Step 3:
        # the other rollout worker dies mid-generate too.
        victim = {1: (pool, 0, 0.3), 2: (rewards, 1, 0.0), 3: (pool, 1, 0.3)}[step]
        group, index, delay = victim
        killed.append(group.labels[index])
        _signal_later(group.where[index][1], signal.SIGKILL, delay)

    run.before_step = inject
    try:
        old_pids = [w[1] for w in pool.where] + [w[1] for w in rewards.where]
        run.train()
    finally:
        run.trainer.shutdown()
    assert len(killed) == 3
    assert [m["faults/restarts"] for m in run.metrics] == [1.0, 2.0, 3.0]
    new_pids = [w[1] for w in pool.where] + [w[1] for w in rewards.where]
    assert [a == b for a, b in zip(old_pids, new_pids, strict=True)] == [False, False, True, False]
    # Nothing lost, nothing duplicated, nothing different: the same prompts each step, the same weights.
    assert run.prompts == reference.prompts and run.orders == reference.orders
    assert run.weights == reference.weights


def test_a_hung_worker_is_named_with_node_and_phase_then_replaced(reference, tmp_path):
    """SIGSTOP: the process is alive but answers nothing (a stuck kernel, a deadlock). The call times
    out after cluster.call_timeout_s; the warning names the worker, its node, its process and the phase."""
    run = Run(tmp_path, "cluster.call_timeout_s=20")
    pool = run.trainer.pool
    stopped = pool.where[0][1]
    run.before_step = lambda step: _signal_later(stopped, signal.SIGSTOP, 0.0) if step == 2 else None
    try:
        with pytest.warns(UserWarning) as caught:
            run.train(steps=2)
    finally:
        run.trainer.shutdown()
        try:
            os.kill(stopped, signal.SIGKILL)  # ray.kill already did; never leave a stopped process behind
        except ProcessLookupError:
            pass
    messages = [str(w.message) for w in caught if "replacing" in str(w.message)]
    assert len(messages) == 1, messages
    assert f"on 127.0.0.1 (pid {stopped})" in messages[0] and "no answer to generate within 20 s" in messages[0]
    assert run.trainer.restarts.total == 1
    assert run.prompts[:2] == reference.prompts[:2]
    assert run.weights == reference.weights[:2]


def test_a_worker_that_keeps_dying_stops_the_run_with_a_checkpoint(reference, tmp_path):
    from rl import checkpoint

    run = Run(tmp_path, "reliability.max_restarts=1")
    pool = run.trainer.pool
    run.before_step = lambda step: _signal_later(pool.where[0][1], signal.SIGKILL, 0.2)
    try:
        with pytest.raises(RunStopped, match=r"rollout-\w+-0 on 127.0.0.1 .*reliability.max_restarts=1"):
            run.trainer.run(log=lambda *_: None)
    finally:
        run.trainer.shutdown()
    # Step 1 survived one replacement; step 2's death spent the budget: the run stopped at the last good
    # step, saved with step 2's prompts put back.
    (saved,) = checkpoint.complete(tmp_path / "ckpt")
    state = checkpoint.load_state(saved)
    assert saved.name == "step-000001" and (state["step"], state["version"]) == (1, 1)
    assert state["data"] == reference.orders[0]
