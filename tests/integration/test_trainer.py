"""The GRPO stage end to end with every real part (vLLM engines, DeepSpeed learners, reward service,
weight sync): under `ray job submit` against a real head, and resumed mid-run to the same weights."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl import checkpoint
from rl.core.config import load_config
from tests.conftest import CACHE, REPO
from tests.listeners import Listeners

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


def _jobs_api_up(ray: str, dashboard: int, env: dict, head: subprocess.Popen, timeout_s: float) -> str:
    """'' once `ray job list` answers on the head's dashboard, else why not (the probe's last error)."""
    deadline, why = time.monotonic() + timeout_s, "no probe ran"
    while time.monotonic() < deadline:
        if head.poll() is not None:
            return f"`ray start --head` exited with {head.returncode}"
        try:
            probe = subprocess.run([ray, "job", "list", f"--address=http://127.0.0.1:{dashboard}"], env=env,
                                   capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            why = "`ray job list` hung for 60 s"
            continue
        if probe.returncode == 0:
            return ""
        why = (probe.stderr or probe.stdout).strip()[-500:]
        time.sleep(2)
    return f"no answer within {timeout_s:.0f} s; last probe: {why}"


def _readme_commands() -> list[list[str]]:
    """The README's lines for a Ray head of one's own ("Running it yourself"), as words, comments and
    redirections dropped: the test runs what a user copies."""
    lines = re.findall(r"^    ((?:ray|export) .*)$", (REPO / "README.md").read_text(), re.M)
    words = [shlex.split(line, comments=True) for line in lines]
    return [w[:w.index(">")] if ">" in w else w for w in words]


def _readme_command(commands: list[list[str]], *start: str) -> list[str]:
    found = [words for words in commands if words[:len(start)] == list(start)]
    assert len(found) == 1, f"README.md: one line starting {' '.join(start)!r} expected, found {found}"
    return found[0]


@contextmanager
def _ray_head(ray: str, start: list[str], env: dict, log_dir: Path, attempts: int = 2,
              timeout_s: float = 240) -> Iterator[int]:
    """The head of `start` (the README's `ray start --head ...` words) beside this session's `ray_cluster`,
    on ports and a temporary folder of its own; yields its dashboard port.

    Every fixed default port gets a free one: another Ray on the machine (this session's own) already
    holds the agent's 52365, and a head whose job agent cannot bind accepts jobs through its API but never
    runs them ("No available agent"), then dies with the agent. A free port can still be taken between
    the probe and the head's bind, and a head on a loaded 2-core box can come up slowly: a head whose job
    API does not answer is stopped and a fresh one, on fresh ports, tried once more. The failure names
    the probe's last error and the head's own log."""
    failures = []
    for attempt in range(attempts):
        port, dashboard = _free_port(), _free_port()
        ports = [f"--{flag}={_free_port()}" for flag in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                         "metrics-export-port", "runtime-env-agent-port",
                                                         "ray-client-server-port")]
        short_tmp = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # Ray's socket paths must stay under 107 chars
        log = log_dir / f"ray-head-{attempt}.log"
        # --block keeps `ray start` in the foreground owning the head's processes: terminating its process
        # group stops this head only (`ray stop` would stop every Ray on the machine, the session's too).
        with log.open("w") as out:
            head = subprocess.Popen([ray, *start[1:], "--block", f"--port={port}", f"--dashboard-port={dashboard}",
                                     *ports, f"--temp-dir={short_tmp}"],
                                    env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            why = _jobs_api_up(ray, dashboard, env, head, timeout_s)
            if not why:
                yield dashboard
                return
            dashboard_log = Path(short_tmp) / "session_latest" / "logs" / "dashboard.log"
            tail = dashboard_log.read_text(errors="replace")[-1500:] if dashboard_log.is_file() else "(none)"
            failures.append(f"attempt {attempt + 1}: {why}\n  head: {log.read_text(errors='replace')[-1500:]}"
                            f"\n  dashboard.log: {tail}")
        finally:
            if head.poll() is None:
                os.killpg(head.pid, signal.SIGTERM)
                head.wait(timeout=120)
            shutil.rmtree(short_tmp, ignore_errors=True)
    raise TimeoutError("the Ray head's job API did not come up:\n" + "\n".join(failures))


def _scalars(run_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next(run_dir.glob("events.out.tfevents.*"))))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]} | {
        "images": acc.Tags()["images"]}


def test_ray_job_submit_runs_the_smoke_config_as_is(tiny_model_dir, tmp_path):
    """The README's lines for a head of one's own, as written: a token, token mode, `ray start --head` with
    its CPUs, then `ray job submit` of `conf/smoke.yaml` unchanged but for where its outputs go (and the
    cached tiny model / data): SFT, then 6 GRPO steps with checkpoints."""
    ray = str(Path(sys.executable).parent / "ray")
    readme = _readme_commands()
    # The token goes to a home of the test's own: the user's ~/.ray/auth_token is neither read nor written.
    home = tmp_path / "home"
    generate = _readme_command(readme, "ray", "get-auth-token")
    subprocess.run([ray, *generate[1:]], env={**os.environ, "HOME": str(home)}, check=True, capture_output=True)
    (mode,) = _readme_command(readme, "export", "RAY_AUTH_MODE=token")[1:]
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_ADDRESS")}
    env |= {"RAY_AUTH_TOKEN_PATH": str(home / ".ray" / "auth_token"), mode.split("=")[0]: mode.split("=")[1]}
    submit = _readme_command(readme, "ray", "job", "submit")
    python = submit.index("python")
    with _ray_head(ray, _readme_command(readme, "ray", "start", "--head"), env, tmp_path) as dashboard:
        env["RAY_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
        # What the README says happens without the export line: the head has token auth on, the client
        # does not send its token.
        refused = subprocess.run([ray, "job", "list"], env={k: v for k, v in env.items() if k != "RAY_AUTH_MODE"},
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "Missing authentication token" in refused.stdout + refused.stderr
        for _ in range(30):  # the head's job agent may come up a little after its job API
            job = subprocess.run(
                [ray, *submit[1:python], sys.executable, *submit[python + 1:], f"model.path={tiny_model_dir}",
                 f"data.path={CACHE / 'synthetic-smoke'}", f"sft.output_dir={tmp_path / 'sft'}",
                 f"sft.state_dir={tmp_path / 'sft-steps'}", f"checkpoint.dir={tmp_path / 'ckpt'}",
                 f"logging.dir={tmp_path / 'runs'}", "logging.image_every=3"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
            if "No available agent" not in job.stderr + job.stdout:
                break
            time.sleep(2)
    assert job.returncode == 0 and "succeeded" in job.stdout + job.stderr, job.stdout[-3000:] + job.stderr[-3000:]
    assert "held-out after GRPO" in job.stdout and (tmp_path / "sft" / "model.safetensors").is_file()
    assert [p.name for p in checkpoint.complete(tmp_path / "ckpt")] == ["step-000003", "step-000006"]
    final = checkpoint.step_dir(tmp_path / "ckpt", 6)
    assert checkpoint.verify(final) and checkpoint.load_state(final)["version"] == 6
    checkpoint.check(final)  # every file has its digest
    scalars = _scalars(tmp_path / "runs")
    assert len(scalars["reward/total/mean"]) == 6 and scalars["faults/restarts"] == [0.0] * 6
    for tag in ("learner/loss", "learner/approx_kl", "learner/entropy", "time/rollout", "time/sync",
                "advantage/std", "eval/mean_iou_matched", "policy/version_lag"):
        assert tag in scalars, tag
    assert scalars["images"] == ["predictions"]
    assert (tmp_path / "runs" / "summary.json").is_file()


def test_resume_continues_exactly_like_a_straight_run(ray_cluster, tiny_model_dir, synthetic_dir, tmp_path):
    """3 steps + resume + 3 steps == 6 straight steps, bit for bit (CPU fp32, tolerance 0): the checkpoint
    holds weights, optimizer, scheduler, step, policy version and data position, and every step's rollouts
    are seeded by (rollout.seed, step, refill round), with the engines' batches independent of timing."""
    from actors.sync_plan import checksum
    from rl.trainer import GRPOTrainer, run_grpo

    def config(run: str, steps: int):
        out = tmp_path / run
        return load_config(overrides=[*SMALL, f"grpo.num_steps={steps}", "checkpoint.every=3",
                                      f"checkpoint.dir={out / 'ckpt'}", f"logging.dir={out / 'runs'}"])

    run_grpo(config("straight", 6))
    run_grpo(config("split", 3))
    saved = checkpoint.step_dir(tmp_path / "split" / "ckpt", 3)
    trainer = GRPOTrainer(config("split", 6))  # checkpoint.resume=auto
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
    assert [p.name for p in checkpoint.complete(tmp_path / "split" / "ckpt")] == ["step-000003", "step-000006"]
    final = checkpoint.load_state(checkpoint.step_dir(tmp_path / "split" / "ckpt", 6))
    # 6 steps x 2 prompts, more if dynamic sampling refilled a zero-variance group.
    assert final["version"] == 6 and final["data"]["epoch"] * 64 + final["data"]["cursor"] >= 12
    straight = checkpoint.load_state(checkpoint.step_dir(tmp_path / "straight" / "ckpt", 6))
    assert final["data"] == straight["data"]
    resumed = load_file(str(checkpoint.step_dir(tmp_path / "split" / "ckpt", 6) / "model" / "model.safetensors"))
    reference = load_file(str(checkpoint.step_dir(tmp_path / "straight" / "ckpt", 6) / "model" / "model.safetensors"))
    assert max((resumed[k] - weights[k]).abs().max().item() for k in weights) > 0  # training went on
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert torch.equal(resumed[name], reference[name]), name


def test_off_policy_samples_the_next_step_while_the_learner_trains(ray_cluster, tiny_model_dir, synthetic_dir,
                                                                   tmp_path):
    """grpo.off_policy_lag=1: step t+1's rollouts run while the learner trains step t, so every batch after
    the first is one policy version behind the learner (and importance-weighted), never more; the last step
    prefetches nothing; a checkpoint taken with a batch prefetched puts that batch's prompts back."""
    from rl.trainer import GRPOTrainer

    # 2 prompts per step, no refill: the data position is exactly 2 prompts per collected batch.
    cfg = load_config(overrides=[*SMALL, "grpo.off_policy_lag=1", "grpo.num_steps=4", "grpo.dynamic_sampling=false",
                                 f"checkpoint.dir={tmp_path / 'ckpt'}", f"logging.dir={tmp_path / 'runs'}"])
    metrics = []
    # Issue 23 (5b): a local run listens on loopback only; sampled through this run's whole life.
    with Listeners() as listeners:
        trainer = GRPOTrainer(cfg)
        try:
            while trainer.step < cfg.grpo.num_steps:
                metrics.append(trainer.train_step())
                if trainer.step == 2:
                    assert trainer.order.state()["cursor"] == 6  # steps 1, 2 and the prefetched step 3
                    saved = checkpoint.load_state(trainer.save())
                    assert saved["data"]["cursor"] == 4 and saved["version"] == 2
            assert trainer.state.pending is None  # nothing sampled for a step 5 that never comes
            import ray

            # Every engine holds the final version (each sync compared its checksums with the learner's).
            versions = ray.get([w.policy_version.remote() for w in trainer.pool.workers])
            assert versions == [4] * len(trainer.pool.workers)
        finally:
            trainer.shutdown()
    names = {name for name, _ in listeners.seen}
    # The sampler saw Ray's servers and the run's actors (the learner's stores, the engines' gloo).
    assert {"gcs_server", "raylet", "ray::Learner", "ray::RolloutWorker", "ray::RewardService"} <= names, names
    assert listeners.beyond_loopback() == []
    assert [m["policy/version_lag"] for m in metrics] == [0.0, 1.0, 1.0, 1.0]
    assert [m["policy/version"] for m in metrics] == [1.0, 2.0, 3.0, 4.0]
    assert all(m["learner/use_tis"] == 1.0 for m in metrics)
    assert all(m["learner/optimizer_steps"] == 1.0 for m in metrics)


def test_grpo_trains_on_converted_coco_and_vlmr1_data(ray_cluster, tiny_model_dir, tmp_path):
    """Issue 22: GRPO steps on rows `python -m rl.data convert` made from a VLM-R1 REC jsonl with boxes in
    Qwen2.5-VL-resized pixels (train) and a COCO json (val), both written by the tests; the SFT test trains on
    the COCO rows, so each format is trained from once."""
    from rl.trainer import run_grpo
    from tests.foreign_data import converted_dataset

    data = converted_dataset(tmp_path / "data", coco_split="val", rec_split="train")
    small = [o for o in SMALL if not o.startswith("data.")]
    cfg = load_config(overrides=[*small, f"data.path={data}", "data.synthetic=null", "grpo.num_steps=2",
                                 f"checkpoint.dir={tmp_path / 'ckpt'}", f"logging.dir={tmp_path / 'runs'}"])
    run_grpo(cfg)
    final = checkpoint.load_state(checkpoint.step_dir(tmp_path / "ckpt", 2))
    # 2 REC rows, 2 prompts x 2 steps: at least 4 prompts drawn
    assert final["version"] == 2 and final["data"]["epoch"] * 2 + final["data"]["cursor"] >= 4
    scalars = _scalars(tmp_path / "runs")
    assert "eval/mean_iou_matched" in scalars and len(scalars["learner/loss"]) == 2
