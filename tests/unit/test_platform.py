"""The accelerator layer picks CUDA / ROCm / CPU and everything that follows from it."""

from __future__ import annotations

import pytest
import torch

from rl.core.platform import apply_env, get_platform


def _fake_torch(monkeypatch, cuda: bool, hip: str | None):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.version, "hip", hip, raising=False)


def test_auto_picks_cpu_without_a_device(monkeypatch):
    _fake_torch(monkeypatch, cuda=False, hip=None)
    p = get_platform("auto")
    assert (p.name, p.device_type, p.dist_backend, p.deepspeed_accelerator, p.vllm_device) == (
        "cpu", "cpu", "gloo", "cpu", "cpu")
    assert p.ray_accelerator is None and not p.has_accelerator


def test_auto_picks_cuda(monkeypatch):
    _fake_torch(monkeypatch, cuda=True, hip=None)
    p = get_platform("auto")
    assert (p.name, p.device_type, p.dist_backend, p.ray_accelerator) == ("cuda", "cuda", "nccl", "GPU")


def test_auto_picks_rocm_from_a_hip_build(monkeypatch):
    _fake_torch(monkeypatch, cuda=True, hip="6.4.0")
    p = get_platform("auto")
    # ROCm torch calls its devices "cuda" and maps the "nccl" backend name to RCCL.
    assert (p.name, p.device_type, p.dist_backend, p.vllm_device) == ("rocm", "cuda", "nccl", "rocm")
    # DeepSpeed runs HIP builds through its "cuda" accelerator; Ray counts AMD GPUs as "GPU".
    assert (p.deepspeed_accelerator, p.ray_accelerator, p.visible_devices_var) == ("cuda", "GPU", "HIP_VISIBLE_DEVICES")
    # Ray must keep narrowing the visible devices per actor (no NOSET switches): learners are LOCAL_RANK 0.
    assert not [key for key in p.actor_env() if "NOSET" in key]


def test_a_hip_build_without_a_device_is_cpu(monkeypatch):
    _fake_torch(monkeypatch, cuda=False, hip="6.4.0")
    assert get_platform("auto").name == "cpu"


def test_forced_platform_ignores_torch(monkeypatch):
    _fake_torch(monkeypatch, cuda=False, hip=None)
    assert get_platform("rocm").dist_backend == "nccl"
    with pytest.raises(ValueError, match="unknown platform 'tpu'"):
        get_platform("tpu")


def test_dtype_and_engine_memory_follow_the_platform():
    cpu, cuda = get_platform("cpu"), get_platform("cuda")
    assert (cpu.dtype(), cuda.dtype(), cuda.dtype("float32")) == ("float32", "bfloat16", "float32")
    assert cpu.vllm_memory_kwargs(256, 0.5) == {"kv_cache_memory_bytes": 256 * 1024**2}
    assert cuda.vllm_memory_kwargs(256, 0.5) == {"gpu_memory_utilization": 0.5}


def test_actor_env_sets_the_engines_platform():
    assert get_platform("cpu").actor_env()["DS_ACCELERATOR"] == "cpu"
    assert get_platform("cuda").actor_env() == {"DS_ACCELERATOR": "cuda", "VLLM_TARGET_DEVICE": "cuda",
                                                "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    assert get_platform("rocm").actor_env()["VLLM_TARGET_DEVICE"] == "rocm"


@pytest.mark.parametrize("ray_env, expected", [
    # Ray 2.60 narrows HIP_VISIBLE_DEVICES per actor; vLLM's ROCm platform wants CUDA_VISIBLE_DEVICES equal.
    ({"HIP_VISIBLE_DEVICES": "3"}, {"HIP_VISIBLE_DEVICES": "3", "CUDA_VISIBLE_DEVICES": "3"}),
    # A stale node-wide CUDA list (Slurm) and a ROCR list under Ray's: both would pick the wrong GPU.
    ({"HIP_VISIBLE_DEVICES": "4,5", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "ROCR_VISIBLE_DEVICES": "4,5,6,7"},
     {"HIP_VISIBLE_DEVICES": "4,5", "CUDA_VISIBLE_DEVICES": "4,5"}),
    # Only ROCR set (a launcher narrowed the node): keep its devices, expressed the way Ray and vLLM read them.
    ({"ROCR_VISIBLE_DEVICES": "2"}, {"HIP_VISIBLE_DEVICES": "2", "CUDA_VISIBLE_DEVICES": "2"}),
    ({}, {}),  # the driver, no devices assigned: nothing to fix
])
def test_rocm_actor_sees_exactly_the_devices_ray_assigned(ray_env, expected):
    env = dict(ray_env)
    apply_env(get_platform("rocm"), env)
    devices = {k: v for k, v in env.items() if k.endswith("VISIBLE_DEVICES")}
    assert devices == expected
    assert env["VLLM_TARGET_DEVICE"] == "rocm" and env["DS_ACCELERATOR"] == "cuda"
    assert env["HIP_FORCE_DEV_KERNARG"] == "1"


def test_device_env_leaves_cuda_and_cpu_alone():
    env = {"CUDA_VISIBLE_DEVICES": "1", "ROCR_VISIBLE_DEVICES": "0"}
    assert get_platform("cuda").device_env(env) == {} and get_platform("cpu").device_env(env) == {}
    assert get_platform("cuda").visible_devices_var == "CUDA_VISIBLE_DEVICES"
    assert get_platform("cpu").visible_devices_var is None


def test_apply_env_keeps_the_users_settings():
    env = {"DS_ACCELERATOR": "cpu", "HIP_VISIBLE_DEVICES": "1"}
    apply_env(get_platform("rocm"), env)
    assert env["DS_ACCELERATOR"] == "cpu"  # setdefault: an explicit choice wins
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
