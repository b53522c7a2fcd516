"""`launch/slurm/grpo.sbatch` under a real one-node Slurm: munged, slurmctld and slurmd started here from a
`slurm.conf` in a temporary folder, on 127.0.0.1 and ports of their own. The script runs unchanged, as a
user submits it (`sbatch launch/slurm/grpo.sbatch conf/smoke.yaml key=value ...`): the Ray head with token
auth in a job step, `ray job submit`, teardown; cancelled with `scancel`, then resubmitted to resume.
Slurm and munge come from Debian's packages (`launch/slurm/install.sh`, run by `launch/test.sh`); where
they are missing and cannot be installed, the test fails saying why."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rl import checkpoint
from tests.conftest import CACHE, REPO

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel")
INSTALL = REPO / "launch" / "slurm" / "install.sh"
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")  # a job's states before its end
# slurm.conf's KillWait: SIGTERM to a cancelled job's processes, SIGKILL this much later. Slurm's default
# is 30; a Ray head answers SIGTERM slowly (longer than that here), so SIGKILL ends it either way.
KILL_WAIT_S = 10
# conf/smoke.yaml cut to what the launcher needs to show, for CI's time: 4 SFT steps, 3 GRPO steps with a
# checkpoint each, no held-out evaluation. The length reward gives the barely trained model's groups
# reward variance.
SHORT = ["sft.num_steps=4", "grpo.num_steps=3", "grpo.eval_rows=0", "checkpoint.every=1",
         "rewards.extra={tests.integration.extra_rewards:response_length: 1.0}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find_slurm() -> dict[str, str]:
    """Each command's path; installs Slurm and munge (launch/slurm/install.sh) when one is missing."""
    path = f"{os.environ['PATH']}:/usr/sbin:/sbin"
    found = {name: shutil.which(name, path=path) for name in COMMANDS}
    if None in found.values():
        install = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=900)
        found = {name: shutil.which(name, path=path) for name in COMMANDS}
        missing = [name for name, where in found.items() if where is None]
        if missing:
            pytest.fail(f"Slurm cannot run here: {', '.join(missing)} not found, and {INSTALL.name} exited "
                        f"{install.returncode}: {(install.stdout + install.stderr).strip()[-2000:]}")
    return found  # type: ignore[return-value]


def _slurm_conf(root: Path, host: str) -> str:
    """One node, one partition, root's daemons, no cgroups (a container may not delegate them): processes
    are tracked by their parent chain. CPUs=4 as the README's `ray start --head --num-cpus=4`: the demo
    layout reserves 3 CPUs plus the driver, and config_overrides lets a 2-core machine offer them."""
    return f"""ClusterName=ggrpo-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=3600
KillWait={KILL_WAIT_S}
NodeName={host} NodeAddr=127.0.0.1 CPUs=4 RealMemory=8000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class Slurm:
    root: Path
    commands: dict[str, str]
    env: dict[str, str]

    def run(self, name: str, *args: str) -> str:
        done = subprocess.run([self.commands[name], *args], env=self.env, capture_output=True, text=True,
                              timeout=60, cwd=REPO)
        assert done.returncode == 0, f"{name} {' '.join(args)}: {done.stderr}"
        return done.stdout

    def job(self, job_id: str) -> dict[str, str]:
        return dict(re.findall(r"(\w+)=(\S*)", self.run("scontrol", "show", "job", "-o", job_id)))

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in sorted((self.root / "log").glob("*")))


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def slurm() -> Iterator[Slurm]:
    commands = _find_slurm()
    root = Path(tempfile.mkdtemp(prefix="slurm", dir="/tmp"))  # munge's socket path must stay short
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir()
    key = root / "munge" / "key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    host = socket.gethostname().split(".")[0]  # slurmctld checks SlurmctldHost against this name
    (root / "slurm.conf").write_text(_slurm_conf(root, host))
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    daemons = [[commands["munged"], "-F", "--force", f"--socket={root}/munge/socket", f"--key-file={key}",
                f"--log-file={root}/log/munged.log", f"--pid-file={root}/munge/pid", f"--seed-file={root}/munge/seed"],
               [commands["slurmctld"], "-D", "-f", f"{root}/slurm.conf"],
               [commands["slurmd"], "-D", "-f", f"{root}/slurm.conf", "-N", host]]
    started: list[subprocess.Popen] = []
    cluster = Slurm(root, commands, env)
    try:
        for argv in daemons:
            with (root / "log" / f"{Path(argv[0]).name}.out").open("w") as out:
                started.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True))
            time.sleep(1)  # munged before slurmctld before slurmd: each authenticates to the one before
        deadline = time.monotonic() + 60
        while "State=IDLE" not in subprocess.run([commands["scontrol"], "show", "node", host], env=env,
                                                 capture_output=True, text=True).stdout:
            if time.monotonic() > deadline or any(p.poll() is not None for p in started):
                pytest.fail(f"the one-node Slurm did not come up (node {host} not IDLE in 60 s):\n{cluster.logs()}")
            time.sleep(1)
        yield cluster
    finally:
        subprocess.run([commands["scancel"], "--full", "--user", "root"], env=env, capture_output=True)
        for process in reversed(started):
            _stop(process)
        shutil.rmtree(root, ignore_errors=True)


def _job_processes(job_id: str) -> list[str]:
    """Every process on the machine started for Slurm job `job_id` (Slurm puts SLURM_JOB_ID in the
    environment of the job's steps; the Ray processes they start, and those Ray starts, inherit it)."""
    tag, found = f"SLURM_JOB_ID={job_id}".encode(), []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if tag in (proc / "environ").read_bytes().split(b"\0"):
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ")[:150]
                found.append(f"{proc.name} {command.decode(errors='replace')}")
        except OSError:  # ended while we looked
            continue
    return found


def _sbatch(slurm: Slurm, out: Path, model: Path, overrides: list[str]) -> str:
    """`sbatch launch/slurm/grpo.sbatch conf/smoke.yaml ...` as a user submits it, with what a one-node,
    CPU-only allocation beside this test session's own Ray needs: its shape on the command line, and Ray's
    ports and temporary folder of its own (the default ports may be held by the session's local Ray)."""
    ports = " ".join(f"--{flag}={_free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port",
        "ray-client-server-port"))
    # In the Slurm folder (removed with it), whose path is short: Ray's socket paths must stay under 107 chars.
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir=slurm.root)
    env = {**slurm.env, "PATH": f"{Path(sys.executable).parent}:{slurm.env['PATH']}", "RAY_PORT": str(_free_port()),
           "RAY_DASHBOARD_PORT": str(_free_port()), "RAY_START_ARGS": f"{ports} --temp-dir={ray_tmp}"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [slurm.commands["sbatch"], "--parsable", "--nodes=1", "--cpus-per-task=4", "--gpus-per-node=0", "--time=20",
         f"--output={out}/job-%j.out", "launch/slurm/grpo.sbatch", "conf/smoke.yaml",
         f"model.path={model}", f"data.path={CACHE / 'synthetic-smoke'}",
         f"sft.output_dir={out / 'sft'}", f"sft.state_dir={out / 'sft-steps'}", f"checkpoint.dir={out / 'ckpt'}",
         f"logging.dir={out / 'runs'}", *overrides],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def _wait_for_end(slurm: Slurm, job_id: str, timeout_s: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while (job := slurm.job(job_id))["JobState"] in ACTIVE:
        if time.monotonic() > deadline:
            slurm.run("scancel", job_id)
            pytest.fail(f"job {job_id} still {job['JobState']} after {timeout_s:.0f} s:\n{slurm.logs()}")
        time.sleep(2)
    return job


def _output(out: Path, job_id: str) -> str:
    return (out / f"job-{job_id}.out").read_text(errors="replace")


def _logged_steps(run_dir: Path, tag: str = "reward/total/mean") -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        steps += [e.step for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []
    return steps


def test_sbatch_cancelled_mid_run_then_resubmitted_runs_to_completion_leaving_nothing(slurm, tiny_model_dir, tmp_path):
    """One test for both cases, for CI's time (each job pays a Ray head, an engine and a learner start):
    `scancel` mid-run, then the same command again resumes and runs to COMPLETED."""
    job_id = _sbatch(slurm, tmp_path, tiny_model_dir, [*SHORT, "grpo.num_steps=20"])
    deadline = time.monotonic() + 600
    while not checkpoint.complete(tmp_path / "ckpt"):  # cancel mid-run, once one step is saved
        state = slurm.job(job_id)["JobState"]
        assert state in ACTIVE, f"job {job_id} {state} before a checkpoint:\n{_output(tmp_path, job_id)[-4000:]}"
        assert time.monotonic() < deadline, "no checkpoint within 600 s"
        time.sleep(1)
    assert _job_processes(job_id), "the job's Ray processes were not found before the cancel"
    slurm.run("scancel", job_id)
    cancelled = time.monotonic()
    while _job_processes(job_id) and time.monotonic() - cancelled < KILL_WAIT_S + 15:
        time.sleep(1)
    assert _job_processes(job_id) == [], f"still running {KILL_WAIT_S + 15} s after scancel"
    print(f"scancel to no process left: {time.monotonic() - cancelled:.0f} s")
    assert _wait_for_end(slurm, job_id, timeout_s=60)["JobState"] == "CANCELLED"
    last = checkpoint.complete(tmp_path / "ckpt")[-1]
    assert checkpoint.verify(last)
    checkpoint.check(last)  # every file has its digest
    saved = checkpoint.load_state(last)["step"]
    assert 1 <= saved < 20

    # The same command again, the run cut to end 2 steps later: it resumes from the last checkpoint.
    resubmitted = time.monotonic()
    again = _sbatch(slurm, tmp_path, tiny_model_dir, [*SHORT, f"grpo.num_steps={saved + 2}"])
    job = _wait_for_end(slurm, again, timeout_s=600)
    log = _output(tmp_path, again)
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), log[-4000:]
    print(f"resubmitted sbatch to COMPLETED: {time.monotonic() - resubmitted:.0f} s")
    assert "1 nodes, config conf/smoke.yaml" in log and "succeeded" in log
    assert f"resumed from {last} at step {saved}" in log
    final = checkpoint.step_dir(tmp_path / "ckpt", saved + 2)
    assert checkpoint.complete(tmp_path / "ckpt") == [checkpoint.step_dir(tmp_path / "ckpt", saved + 1), final]
    assert checkpoint.verify(final) and checkpoint.load_state(final)["version"] == saved + 2
    checkpoint.check(final)
    assert _logged_steps(tmp_path / "runs")[-2:] == [saved + 1, saved + 2]
    assert _job_processes(again) == []  # the head's job step ended with the job, and Ray with it
