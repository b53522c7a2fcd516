"""The GRPO stage end to end with every real part (vLLM engines, DeepSpeed learners, reward service,
weight sync): under `ray job submit` against a real head, and resumed mid-run to the same weights."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl import checkpoint
from rl.config import load_config
from tests.conftest import CACHE, REPO

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


def test_ray_job_submit_trains_and_writes_checkpoint_and_logs(tiny_model_dir, synthetic_dir, tmp_path):
    ray = str(Path(sys.executable).parent / "ray")
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # what our cluster launchers turn on
    port, dashboard = _free_port(), _free_port()
    short_tmp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # Ray's socket paths must stay under 107 chars
    # --block keeps `ray start` in the foreground owning the head's processes: terminating its process
    # group stops this head only (`ray stop` would stop every Ray on the machine, the session's too).
    head = subprocess.Popen([ray, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=8",
                             "--disable-usage-stats", f"--temp-dir={short_tmp}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_jobs_api(ray, dashboard, env)
        job = subprocess.run(
            [ray, "job", "submit", f"--address=http://127.0.0.1:{dashboard}", "--working-dir", str(REPO), "--",
             sys.executable, "-m", "rl.launch", *SMALL, "grpo.num_steps=2",
             f"checkpoint.dir={tmp_path / 'ckpt'}", f"logging.dir={tmp_path / 'runs'}"],
            env=env, capture_output=True, text=True, timeout=900)
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=120)
        shutil.rmtree(short_tmp, ignore_errors=True)
    assert job.returncode == 0 and "succeeded" in job.stdout + job.stderr, job.stdout[-3000:] + job.stderr[-3000:]
    assert "held-out after GRPO" in job.stdout
    (final,) = checkpoint.complete(tmp_path / "ckpt")
    assert final.name == "step-000002" and checkpoint.verify(final, deep=True)
    assert checkpoint.load_state(final)["version"] == 2
    scalars = _scalars(tmp_path / "runs")
    assert len(scalars["reward/total/mean"]) == 2 and scalars["batch/dropped_group_frac"] == [0.0, 0.0]
    for tag in ("learner/loss", "learner/approx_kl", "learner/entropy", "time/rollout", "time/sync",
                "advantage/std", "eval/mean_iou_matched", "policy/version_lag"):
        assert tag in scalars, tag
    assert scalars["images"] == ["predictions"]
    assert (tmp_path / "runs" / "summary.json").is_file()


def test_resume_continues_to_the_same_weights(ray_cluster, tiny_model_dir, synthetic_dir, tmp_path):
    from rl.trainer import run_grpo

    def run(name: str, steps: int) -> None:
        run_grpo(load_config(overrides=[*SMALL, f"grpo.num_steps={steps}", "checkpoint.every=3",
                                        f"checkpoint.dir={tmp_path / name}", f"logging.dir={tmp_path / name}-runs"]))

    run("straight", 6)
    run("resumed", 3)
    run("resumed", 6)  # checkpoint.resume=auto picks up step 3
    straight = load_file(str(checkpoint.step_dir(tmp_path / "straight", 6) / "model" / "model.safetensors"))
    resumed = load_file(str(checkpoint.step_dir(tmp_path / "resumed", 6) / "model" / "model.safetensors"))
    start = load_file(str(tiny_model_dir / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    moved = max((straight[k] - start[k]).abs().max().item() for k in straight)
    diff = max((straight[k] - resumed[k]).abs().max().item() for k in straight)
    # fp32 on CPU with seeded rollouts: the same samples and updates, so equal to float rounding.
    assert moved > 1e-3, "training did not change the weights: the test would prove nothing"
    assert diff <= 1e-6, f"resumed weights differ by {diff:.2e} (training moved them by {moved:.2e})"
    states = [checkpoint.load_state(checkpoint.step_dir(tmp_path / n, 6)) for n in ("straight", "resumed")]
    assert states[0]["data"] == states[1]["data"] and states[0]["version"] == states[1]["version"] == 6
    assert not torch.isnan(next(iter(resumed.values()))).any()
