"""The accelerator layer picks CUDA / ROCm / CPU and everything that follows from it."""

from __future__ import annotations

import pytest
import torch

from rl.platform import get_platform


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
    assert p.ray_init_env() == {"RAY_EXPERIMENTAL_NOSET_ROCR_VISIBLE_DEVICES": "1",
                                "RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES": "1"}


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
    assert get_platform("cuda").actor_env() == {"DS_ACCELERATOR": "cuda", "VLLM_TARGET_DEVICE": "cuda"}
    assert get_platform("rocm").actor_env()["VLLM_TARGET_DEVICE"] == "rocm"
