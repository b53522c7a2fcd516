"""The accelerator layer: the one place that knows whether we run on CUDA, ROCm or CPU.

Everything platform-specific is decided here, from one `Platform` value: the torch device type,
the torch.distributed backend (``nccl`` on CUDA; on ROCm torch maps the same ``nccl`` name to
RCCL), DeepSpeed's accelerator, vLLM's platform, the Ray resource an accelerator is counted in,
and the environment variables the actors need. The rest of the code asks the `Platform`; it
never branches on torch.version or environment variables itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

PlatformName = Literal["cuda", "rocm", "cpu"]


@dataclass(frozen=True)
class Platform:
    name: PlatformName
    device_type: str  # torch device type; ROCm builds of torch also call their devices "cuda"
    dist_backend: str  # torch.distributed backend: "nccl" (RCCL on ROCm) or "gloo"
    deepspeed_accelerator: str  # value of DS_ACCELERATOR
    vllm_device: str  # value of VLLM_TARGET_DEVICE
    ray_accelerator: str | None  # Ray resource an actor reserves per accelerator; None on CPU

    @property
    def has_accelerator(self) -> bool:
        return self.ray_accelerator is not None

    def dtype(self, requested: str = "auto") -> str:
        """Model dtype name: ``auto`` is bf16 on accelerators (MI210 has no FP8) and fp32 on CPU."""
        if requested != "auto":
            return requested
        return "bfloat16" if self.has_accelerator else "float32"

    def vllm_memory_kwargs(self, kv_cache_memory_mb: int, gpu_memory_utilization: float) -> dict:
        """How a vLLM engine sizes its KV cache. On CPU `gpu_memory_utilization` would be a fraction
        of the NUMA node's memory and the default fails on small machines: give bytes instead."""
        if self.has_accelerator:
            return {"gpu_memory_utilization": gpu_memory_utilization}
        return {"kv_cache_memory_bytes": kv_cache_memory_mb * 1024**2}

    def actor_env(self) -> dict[str, str]:
        """Environment for every actor process (Ray runtime_env ``env_vars``)."""
        env = {"DS_ACCELERATOR": self.deepspeed_accelerator, "VLLM_TARGET_DEVICE": self.vllm_device}
        if self.name == "cpu":
            # vLLM-CPU binds OpenMP threads to cores; on shared 2-core machines let the OS schedule.
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        if self.name == "rocm":
            # Ray sets HIP/ROCR_VISIBLE_DEVICES per actor; vLLM and torch then see one device.
            # Keeping Ray from also narrowing them on the driver is the cluster launcher's job.
            env["HIP_FORCE_DEV_KERNARG"] = "1"
        return env

    def ray_init_env(self) -> dict[str, str]:
        """Environment for the Ray processes themselves (set before `ray start` / `ray.init`).

        On ROCm, Ray's own ROCR/HIP_VISIBLE_DEVICES handling hides devices from vLLM's workers unless
        these are set (as verl's AMD guide says)."""
        if self.name == "rocm":
            return {
                "RAY_EXPERIMENTAL_NOSET_ROCR_VISIBLE_DEVICES": "1",
                "RAY_EXPERIMENTAL_NOSET_HIP_VISIBLE_DEVICES": "1",
            }
        return {}


_PLATFORMS: dict[str, Platform] = {
    "cuda": Platform("cuda", "cuda", "nccl", "cuda", "cuda", "GPU"),
    # Ray counts AMD GPUs as "GPU" too; vLLM's ROCm build reports its platform itself.
    "rocm": Platform("rocm", "cuda", "nccl", "cuda", "rocm", "GPU"),
    "cpu": Platform("cpu", "cpu", "gloo", "cpu", "cpu", None),
}


def get_platform(name: str = "auto") -> Platform:
    """Return the platform named (``cuda``, ``rocm``, ``cpu``) or, for ``auto``, the one torch sees.

    ``auto``: ROCm when torch is a HIP build with a visible device, CUDA when a CUDA device is
    visible, else CPU. A CUDA build of torch on a machine without a GPU is CPU (that is what our
    CPU stack installs)."""
    if name != "auto":
        if name not in _PLATFORMS:
            raise ValueError(f"unknown platform {name!r}; expected one of auto, {', '.join(_PLATFORMS)}")
        return _PLATFORMS[name]
    import torch

    if torch.cuda.is_available():
        return _PLATFORMS["rocm" if getattr(torch.version, "hip", None) else "cuda"]
    return _PLATFORMS["cpu"]


def apply_env(platform: Platform) -> None:
    """Set the platform's variables in this process (the driver), without overriding the user's."""
    for key, value in {**platform.ray_init_env(), **platform.actor_env()}.items():
        os.environ.setdefault(key, value)
