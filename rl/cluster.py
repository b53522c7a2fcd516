"""Connecting the driver to Ray: the cluster of `ray job submit` (RAY_ADDRESS) or a configured address,
else a local one that listens on loopback only (`start_local`). The platform's environment reaches every
actor through the job's runtime_env; the project root is importable in every worker."""

from __future__ import annotations

import os
from pathlib import Path

from actors.placement import check_machine, layout
from rl.core.config import Config
from rl.core.platform import Platform, apply_env

REPO = Path(__file__).resolve().parent.parent


def _address(cfg: Config) -> str | None:
    return cfg.cluster.address or os.environ.get("RAY_ADDRESS")


def machine_cores() -> int:
    """The cores this process may run on: a container's or `taskset`'s share, not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its container's (cgroup v2 `memory.max`)
    where that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return total
    return min(total, int(limit)) if limit.isdigit() else total


def machine_gpus(platform: Platform) -> int:
    """Accelerators this process sees (CUDA_VISIBLE_DEVICES / HIP_VISIBLE_DEVICES applied); 0 on CPU."""
    if not platform.has_accelerator:
        return 0
    import torch

    return torch.cuda.device_count()  # ROCm's torch answers through the same API


def check_local_layout(cfg: Config, platform: Platform) -> None:
    """Without a cluster address the cluster is this machine: its layout must fit the machine's cores,
    memory and GPUs (`actors.placement.check_machine`). A real cluster is checked against `ray.nodes()`
    once joined."""
    if not _address(cfg):
        check_machine(cfg, platform, machine_cores(), machine_memory(), machine_gpus(platform))


def connect(cfg: Config, platform: Platform) -> bool:
    """Connect (or start) Ray; returns True when this call started a local cluster (the caller then
    shuts it down). Under `ray job submit` the job's working_dir already carries the code."""
    import ray

    apply_env(platform)
    if ray.is_initialized():
        return False
    address = _address(cfg)
    if address:
        ray.init(address=address, logging_level="WARNING")
        return False
    check_local_layout(cfg, platform)  # before Ray starts: the local Ray below is sized from the layout
    need = layout(cfg, platform).total()
    # Logical CPUs: enough for the layout even on a 2-core laptop (the actors mostly wait on each other).
    num_cpus = cfg.cluster.num_cpus or max(int(need.get("CPU", 1)) + 1, os.cpu_count() or 1)
    start_local(num_cpus, platform.actor_env())
    return True


# Ray reads this when imported: 0 makes it take loopback as the node's address on Linux too (its default
# there is the address other machines reach). Without it Ray 2.60 turns _node_ip_address="127.0.0.1" back
# into that address, and its GCS, raylet and every worker's gRPC server listen on all interfaces ("::").
RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def loopback_interface() -> str:
    """The name of the network interface that holds 127.0.0.1 ("lo" on Linux)."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address == "127.0.0.1" for a in addresses):
            return name
    raise RuntimeError("no network interface holds 127.0.0.1: a local run has no loopback to listen on")


def loopback_collectives_env() -> dict[str, str]:
    """What keeps a local run's collectives on this machine: gloo and NCCL/RCCL (their bootstrap and socket
    transport; GPUs of one node exchange data over P2P/shared memory anyway) on the loopback interface."""
    interface = loopback_interface()
    return {"GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": interface}


def start_local(num_cpus: int, env: dict[str, str] | None = None) -> None:
    """A Ray of this machine alone, every server of it and of the run on loopback: Ray's GCS, raylet,
    agents and workers (node address 127.0.0.1, no dashboard), the run's stores ("auto" resolves to the node
    address) and the collectives (`loopback_collectives_env`). `env` reaches every actor."""
    import ray
    from ray._private import ray_constants

    loopback = {RAY_LOOPBACK_ENV: "0", **loopback_collectives_env()}
    os.environ.update(loopback)  # inherited by the processes Ray starts; the collectives in this one
    ray_constants.ENABLE_RAY_CLUSTER = False  # the same, in case ray was imported before the variable was set
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), **loopback, **(env or {})}})
    node = ray.util.get_node_ip_address()
    if node != "127.0.0.1":
        ray.shutdown()
        raise RuntimeError(f"the local Ray took {node} as its address instead of 127.0.0.1: its servers would "
                           f"listen beyond this machine ({RAY_LOOPBACK_ENV}=0 is no longer honoured by "
                           f"ray {ray.__version__}?)")
