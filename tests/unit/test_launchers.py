"""The cluster launchers are linted like code: the scripts parse, the manifests load, and the command
each submits resolves to a valid config whose cluster shape matches the resources they ask for."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from rl.core.config import load_config

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "launch" / "slurm" / "grpo.sbatch"
NODE = REPO / "launch" / "slurm" / "ray_node.sh"
RAYJOB = REPO / "launch" / "kuberay" / "rayjob.yaml"


@pytest.mark.parametrize("script", [SBATCH, NODE, REPO / "launch" / "setup.sh", NODE.parent / "install.sh"])
def test_shell_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sbatch_default_config_matches_the_allocation_it_asks_for():
    text = SBATCH.read_text()
    (default,) = re.findall(r"CONFIG=\$\{1:-([^}]+)\}", text)
    cfg = load_config(REPO / default)
    sbatch = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, re.M))
    assert int(sbatch["nodes"]) == cfg.cluster.nodes == 8
    assert int(sbatch["gpus-per-node"]) == cfg.cluster.gpus_per_node == 8
    assert "export RAY_AUTH_MODE=token" in text
    submit = 'ray job submit --working-dir . --runtime-env-json "$RUNTIME_ENV" -- \\\n  python -m rl.launch --config'
    assert submit in text


def test_every_usage_line_of_the_sbatch_resolves_to_a_valid_config():
    usages = re.findall(r"^#\s+sbatch (.*)$", SBATCH.read_text(), re.M)
    assert len(usages) == 3
    for usage in usages:
        words = shlex.split(usage.split("#")[0])
        nodes = next((int(w.split("=")[1]) for w in words if w.startswith("--nodes=")), 8)
        rest = words[words.index("launch/slurm/grpo.sbatch") + 1:]
        config = rest[0] if rest else "conf/medmo_8b_64xmi210.yaml"
        cfg = load_config(REPO / config, rest[1:])
        assert cfg.cluster.nodes == nodes, usage


def test_rayjob_submits_a_valid_config_and_asks_for_its_cluster():
    job = yaml.safe_load(RAYJOB.read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "rl.launch"] and words[3] == "--config"
    cfg = load_config(REPO / words[4], words[5:])
    spec = job["spec"]["rayClusterSpec"]
    assert spec["authOptions"] == {"mode": "token"}
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"  # the head hosts no GPU actor
    (workers,) = spec["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == cfg.cluster.nodes
    assert int(workers["rayStartParams"]["num-gpus"]) == cfg.cluster.gpus_per_node
    container = workers["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["amd.com/gpu"] == cfg.cluster.gpus_per_node
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["NCCL_SOCKET_IFNAME"] not in ("", "lo")
    assert "GROUNDED_GRPO_ROOT: /shared" in job["spec"]["runtimeEnvYAML"]


def _fake_ray(tmp_path: Path) -> dict[str, str]:
    """A `ray` that prints its arguments and the device/network variables it would start with."""
    fake = tmp_path / "ray"
    fake.write_text('#!/usr/bin/env bash\necho "ARGS $*"\n'
                    'env | grep -E "^(HIP|ROCR|CUDA)_VISIBLE_DEVICES=|^(NCCL|GLOO)_SOCKET_IFNAME=|NOSET" | sort\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    keep = {k: v for k, v in os.environ.items() if not k.endswith("VISIBLE_DEVICES") and "IFNAME" not in k}
    return {**keep, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_ON_NODE": "64"}


def test_ray_node_starts_a_worker_on_a_real_interface_with_slurms_gpus(tmp_path):
    env = {**_fake_ray(tmp_path), "ROCR_VISIBLE_DEVICES": "4,5,6,7", "CUDA_VISIBLE_DEVICES": "0,1,2,3",
           "RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES": "1"}
    run = subprocess.run(["bash", str(NODE), "worker", "10.0.0.1:6379"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    args = lines[0]
    assert "start --block" in args and "--num-cpus=64" in args and "--address=10.0.0.1:6379" in args
    assert "--num-gpus=8" in args
    ifname = next(line.split("=", 1)[1] for line in lines if line.startswith("NCCL_SOCKET_IFNAME="))
    assert ifname and ifname != "lo" and f"GLOO_SOCKET_IFNAME={ifname}" in lines
    assert "--node-ip-address=127." not in args
    # Slurm's GPU list reaches Ray as HIP_VISIBLE_DEVICES; ROCR, CUDA lists and NOSET are gone.
    assert [line for line in lines if "VISIBLE" in line] == ["HIP_VISIBLE_DEVICES=4,5,6,7"]


def test_ray_node_leaves_gpus_to_ray_when_slurm_gives_no_count_and_passes_site_flags(tmp_path):
    env = {k: v for k, v in _fake_ray(tmp_path).items() if k not in ("SLURM_GPUS_ON_NODE", "GPUS_PER_NODE")}
    env["RAY_START_ARGS"] = "--temp-dir=/tmp/rj1 --dashboard-agent-listen-port=50001"
    run = subprocess.run(["bash", str(NODE), "head"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    args = run.stdout.splitlines()[0]
    assert "--num-gpus" not in args  # a CPU-only allocation: Ray counts the node's GPUs itself (none)
    assert "--temp-dir=/tmp/rj1 --dashboard-agent-listen-port=50001" in args and "--head" in args


def test_ray_node_rejects_an_unknown_role(tmp_path):
    run = subprocess.run(["bash", str(NODE), "boss"], env=_fake_ray(tmp_path), capture_output=True, text=True)
    assert run.returncode == 2 and "unknown role boss" in run.stderr


@pytest.mark.parametrize("dockerfile, base", [("Dockerfile.rocm", "rocm/vllm"), ("Dockerfile.cuda", "nvidia/cuda")])
def test_dockerfiles_build_on_their_engine_images_and_install_the_project(dockerfile, base):
    text = (REPO / "launch" / "docker" / dockerfile).read_text()
    assert re.search(rf"^ARG BASE={re.escape(base)}", text, re.M) and "FROM ${BASE}" in text
    assert "pip install" in text and "-e '.[" in text
    for package in ("rl", "actors", "rewards", "conf"):
        assert f"COPY {package} {package}" in text
