"""Worker death and hangs during GRPO steps, with every real part (vLLM engines, DeepSpeed learner, reward
actors, weight sync): the trainer replaces the worker, re-runs only the lost work, and the run trains on
exactly the prompts and reaches exactly the weights of a run without the fault.

Faults are real: SIGKILL / SIGSTOP of the worker's process from outside (as the OOM killer or a stuck
driver would), timed from a thread while the step's calls are in flight."""

from __future__ import annotations

import os
import signal

import pytest
from safetensors.torch import load_file

from actors.sync_plan import checksum
from rl.faults import RunStopped
from tests.reliability.conftest import Run, signal_later

pytestmark = pytest.mark.slow

def test_killed_rollout_and_reward_workers_are_replaced_and_nothing_changes(reference, tmp_path):
    # Step 4: the run's own fault drill (chaos.kill_every) kills reward actor 1 (drawn from chaos.seed=5
    # and the step), 0.03 s into the step, while the engines sample: its scoring call finds it dead.
    run = Run(tmp_path, "chaos.kill_every=4", "chaos.targets=[reward]", "chaos.seed=5")
    pool, rewards = run.trainer.pool, run.trainer.rewards
    killed: list[str] = []

    def inject(step: int) -> None:
        # Step 1: a rollout worker dies mid-generate. Step 2: a reward actor dies before scoring. Step 3:
        # the other rollout worker dies mid-generate too.
        if step > 3:
            return
        group, index, delay = {1: (pool, 0, 0.3), 2: (rewards, 1, 0.0), 3: (pool, 1, 0.3)}[step]
        killed.append(group.labels[index])
        signal_later(group.where[index][1], signal.SIGKILL, delay)

    run.before_step = inject
    try:
        old_pids = [w[1] for w in pool.where] + [w[1] for w in rewards.where]
        run.train()
    finally:
        run.trainer.shutdown()
    assert len(killed) == 3
    assert run.trainer.chaos.kills == [(4, rewards.names[1])]
    assert [m["faults/chaos_kills"] for m in run.metrics] == [0.0, 0.0, 0.0, 1.0]
    assert [m["faults/restarts"] for m in run.metrics] == [1.0, 2.0, 3.0, 4.0]
    new_pids = [w[1] for w in pool.where] + [w[1] for w in rewards.where]
    assert [a == b for a, b in zip(old_pids, new_pids, strict=True)] == [False, False, True, False]
    # Nothing lost, nothing duplicated, nothing different: the same prompts each step, the same weights.
    assert run.prompts == reference.prompts and run.orders == reference.orders
    assert run.weights == reference.weights


def test_a_hung_worker_is_named_with_node_and_phase_then_replaced(reference, tmp_path):
    """SIGSTOP: the process is alive but answers nothing (a stuck kernel, a deadlock). The call times
    out after cluster.call_timeout_s; the warning names the worker, its node, its process and the phase."""
    run = Run(tmp_path, "cluster.call_timeout_s=45")
    pool = run.trainer.pool
    where = list(pool.where)
    stopped = where[0][1]
    run.before_step = lambda step: signal_later(stopped, signal.SIGSTOP, 0.0) if step == 2 else None
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
    assert f"{pool.names[0]} on {where[0][0]} (pid {stopped})" in messages[0]
    assert "no answer to generate within 45 s" in messages[0]
    assert run.trainer.restarts.total == 1
    assert run.prompts[:2] == reference.prompts[:2]
    assert run.weights == reference.weights[:2]


def test_a_worker_that_keeps_dying_stops_the_run_with_a_checkpoint(reference, tmp_path):
    from rl import checkpoint

    run = Run(tmp_path, "reliability.max_restarts=1")
    pool = run.trainer.pool
    run.before_step = lambda step: signal_later(pool.where[0][1], signal.SIGKILL, 0.2)
    try:
        with pytest.raises(RunStopped, match=r"(?s)rollout-\w+-0 on .* \(pid \d+\) lost .*reliability.max_restarts=1"):
            run.trainer.run(log=lambda *_: None)
    finally:
        run.trainer.shutdown()
    # Step 1 survived one replacement; step 2's death spent the budget and the run stopped at the last good
    # step: step 1, with step 2's prompts put back, when the worker died during step 2's rollouts; step 2
    # when it died after them (during the weight sync that follows the update). Either way the checkpoint
    # is exactly the fault-free run's at that step.
    (saved,) = checkpoint.complete(tmp_path / "ckpt")
    state = checkpoint.load_state(saved)
    step = state["step"]
    assert step in (1, 2) and saved.name == f"step-{step:06d}" and state["version"] == step
    assert state["data"] == reference.orders[step - 1]
    weights = load_file(str(saved / "model" / "model.safetensors"))
    assert checksum(weights.items()) == reference.weights[step - 1]
