"""The accelerator layer: the one place that knows whether we run on CUDA, ROCm or CPU.

Everything platform-specific is decided here, from one `Platform` value: the torch device type,
the torch.distributed backend (``nccl`` on CUDA; on ROCm torch maps the same ``nccl`` name to
RCCL), DeepSpeed's accelerator, vLLM's platform, the Ray resource an accelerator is counted in,
and the environment variables the actors need. The rest of the code asks the `Platform`; it
never branches on torch.version or environment variables itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
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
    visible_devices_var: str | None  # the variable Ray narrows per actor (Ray 2.60: HIP_VISIBLE_DEVICES on AMD)

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
        """Environment for every actor process (Ray runtime_env ``env_vars``).

        The Ray processes themselves need nothing set: our actors rely on Ray narrowing the visible
        devices per actor (a learner is LOCAL_RANK 0 of exactly one device, an engine sees exactly its TP
        devices). The RAY_EXPERIMENTAL_NOSET_*_VISIBLE_DEVICES switches some ROCm recipes set would show
        every actor all of a node's GPUs, and every learner on a node would then train on GPU 0; the
        launchers (launch/slurm, launch/docker) clear them, and no actor gets them from here."""
        env = {"DS_ACCELERATOR": self.deepspeed_accelerator, "VLLM_TARGET_DEVICE": self.vllm_device,
               # An actor's output is a log (Ray's, forwarded to the driver line by line): no loading or
               # saving bars of transformers / huggingface_hub, whose carriage-return redraws garble it.
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        if self.name == "cpu":
            # vLLM-CPU binds OpenMP threads to cores; on shared 2-core machines let the OS schedule.
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        if self.name == "rocm":
            # Kernel arguments in device memory: AMD's recommended setting for vLLM on Instinct GPUs.
            env["HIP_FORCE_DEV_KERNARG"] = "1"
        return env

    def device_env(self, environ: Mapping[str, str]) -> dict[str, str | None]:
        """What an actor process must change in `environ` (as Ray started it) before torch or vLLM
        touch the device; None removes a variable.

        ROCm: Ray narrows HIP_VISIBLE_DEVICES. ROCR_VISIBLE_DEVICES (set by Slurm or a container)
        narrows below HIP, which then indexes into ROCR's list instead of the physical GPUs: drop it,
        keeping its list when Ray set none. vLLM's ROCm platform refuses a CUDA_VISIBLE_DEVICES that
        differs from HIP_VISIBLE_DEVICES (a node may carry a stale one): mirror HIP's."""
        if self.name != "rocm":
            return {}
        devices = environ.get("HIP_VISIBLE_DEVICES") or environ.get("ROCR_VISIBLE_DEVICES")
        if not devices:
            return {}
        return {"HIP_VISIBLE_DEVICES": devices, "CUDA_VISIBLE_DEVICES": devices, "ROCR_VISIBLE_DEVICES": None}


_PLATFORMS: dict[str, Platform] = {
    "cuda": Platform("cuda", "cuda", "nccl", "cuda", "cuda", "GPU", "CUDA_VISIBLE_DEVICES"),
    # Ray counts AMD GPUs as "GPU" too. DeepSpeed has no separate ROCm accelerator: its "cuda" one runs
    # on HIP builds of torch. torch.distributed's "nccl" backend is RCCL there.
    "rocm": Platform("rocm", "cuda", "nccl", "cuda", "rocm", "GPU", "HIP_VISIBLE_DEVICES"),
    "cpu": Platform("cpu", "cpu", "gloo", "cpu", "cpu", None, None),
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


def apply_env(platform: Platform, environ: MutableMapping[str, str] | None = None) -> None:
    """Set the platform's variables in this process (driver or actor), without overriding the user's,
    then fix the visible-device variables (`Platform.device_env`)."""
    environ = os.environ if environ is None else environ
    for key, value in platform.actor_env().items():
        environ.setdefault(key, value)
    for key, value in platform.device_env(environ).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
