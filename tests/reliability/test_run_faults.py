"""Faults that end a run, with every real part: the learner killed mid-step, the driver (`rl.launch`)
killed in the middle of writing a checkpoint, a reward that turns NaN. Nothing half-written is ever loaded,
and `checkpoint.resume=auto` continues to exactly the weights of a run that was never killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from actors.learner import LearnerError
from actors.sync_plan import checksum
from rl import checkpoint
from rl.faults import RunStopped
from tests.conftest import REPO
from tests.reliability.conftest import SMALL, STEPS, Run

pytestmark = pytest.mark.slow


def _weights(path) -> dict[str, str]:
    return checksum(load_file(str(path / "model" / "model.safetensors")).items())


def _wait_gone(pid: int, timeout_s: float = 60) -> None:
    """Until process `pid` has exited (gone, or a zombie its parent has not reaped yet)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} still alive {timeout_s} s after SIGKILL")


def test_learner_then_driver_killed_midway_resume_to_the_same_weights(reference, ray_cluster, tmp_path):
    every_step = ("checkpoint.every=1", "checkpoint.keep_last=3")
    ckpt = tmp_path / "ckpt"

    # 1. The learner's process is SIGKILLed as step 3's update is sent (checkpoints 1 and 2 are written): the
    #    error names it, its node and the phase; the run cannot save (its weights are gone) and says so. Killed
    #    at that call, not on a timer: on a loaded machine a timer landed in another phase (the weight sync).
    first = Run(tmp_path, *every_step)
    learner = first.trainer.learners.where[0]
    update = first.trainer.learners.update

    def killed_update(samples):  # noqa: ANN001, ANN202
        if first.trainer.step + 1 == 3:
            os.kill(learner[1], signal.SIGKILL)
            _wait_gone(learner[1])
        return update(samples)

    first.trainer.learners.update = killed_update
    try:
        with pytest.raises(LearnerError, match=rf"learner-\w+-0 on {learner[0]} \(pid {learner[1]}\) died during"):
            first.trainer.run(log=lambda *_: None)
    finally:
        first.trainer.shutdown()
    assert [p.name for p in checkpoint.complete(ckpt)] == ["step-000001", "step-000002"]

    # 2. The driver resumes from step 2 and is SIGKILLed while it writes checkpoint 3 (its weights are on disk,
    #    the state and manifest not yet): the wrapper pauses it there, see driver_paused_in_checkpoint.
    marker = tmp_path / "paused-in-checkpoint-3"
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address, "PYTHONUNBUFFERED": "1",
           "PAUSE_AT_CHECKPOINT": "3", "PAUSE_MARKER": str(marker)}
    driver = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.driver_paused_in_checkpoint", *SMALL, f"grpo.num_steps={STEPS}",
         *every_step, f"checkpoint.dir={ckpt}", f"logging.dir={tmp_path / 'runs-driver'}"], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    while not marker.exists() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert driver.poll() is None, f"the driver ended before writing checkpoint 3:\n{driver.stdout.read()[-4000:]}"
    os.killpg(driver.pid, signal.SIGKILL)
    output = driver.communicate()[0]
    assert marker.exists(), f"the driver never reached checkpoint 3 in 600 s:\n{output[-4000:]}"
    assert "resumed from" in output and "step-000002" in output, output[-3000:]
    partial = ckpt / ".step-000003.tmp"
    assert (partial / "model").is_dir() and not (partial / checkpoint.MANIFEST).exists()
    assert not (ckpt / "step-000003").exists()

    # 3. resume=auto: the half-written checkpoint is ignored and named; the run ends exactly where the
    #    run without faults did, step by step.
    with pytest.warns(UserWarning, match=r"ignoring incomplete checkpoint .*\.step-000003\.tmp"):
        last = Run(tmp_path, *every_step)
    try:
        assert last.trainer.step == 2 and last.trainer.sync.last_checksums == reference.weights[1]
        last.trainer.run(log=lambda *_: None)
    finally:
        last.trainer.shutdown()
    assert last.prompts == reference.prompts[2:] and last.weights == reference.weights[2:]
    assert [p.name for p in checkpoint.complete(ckpt)] == ["step-000002", "step-000003", "step-000004"]
    for step in (2, 3, 4):
        assert checkpoint.verify(checkpoint.step_dir(ckpt, step))
        checkpoint.check(checkpoint.step_dir(ckpt, step))  # every digest
        assert _weights(checkpoint.step_dir(ckpt, step)) == reference.weights[step - 1]


def test_nan_rewards_skip_updates_then_stop_the_run_with_weights_intact(ray_cluster, tiny_model_dir, synthetic_dir,
                                                                       tmp_path):
    run = Run(tmp_path, "rewards.extra={tests.integration.extra_rewards:not_a_number: 1.0}",
              "reliability.max_nonfinite_steps=2")
    initial = dict(run.trainer.sync.last_checksums)
    try:
        skipped = r"step 1: update skipped: \d+ non-finite '.*:not_a_number' rewards of \d+"
        with pytest.warns(UserWarning, match=skipped):
            with pytest.raises(RunStopped, match=r"2 updates in a row skipped .*step 2.*max_nonfinite_steps=2"):
                run.trainer.run(log=lambda *_: None)
    finally:
        run.trainer.shutdown()
    assert run.trainer.nonfinite.total == 2
    assert run.weights[0] == initial  # step 1 synced the weights it started with: nothing was applied
    # The stop saved the last good step (1, whose update was skipped): weights still the initial ones.
    (saved,) = checkpoint.complete(tmp_path / "ckpt")
    assert saved.name == "step-000001" and _weights(saved) == initial
