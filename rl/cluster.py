"""Connecting the driver to Ray: the cluster of `ray job submit` (RAY_ADDRESS) or a configured address,
else a local one on loopback. The platform's environment reaches every actor through the job's
runtime_env; the project root is importable in every worker."""

from __future__ import annotations

import os
from pathlib import Path

from actors.placement import check_machine, layout
from rl.config import Config
from rl.platform import Platform, apply_env

REPO = Path(__file__).resolve().parent.parent


def _address(cfg: Config) -> str | None:
    return cfg.cluster.address or os.environ.get("RAY_ADDRESS")


def machine_cores() -> int:
    """The cores this process may run on: a container's or `taskset`'s share, not the host's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_local_layout(cfg: Config, platform: Platform) -> None:
    """Without a cluster address the cluster is this machine: its layout must fit the machine's cores
    (`actors.placement.check_machine`). A real cluster is checked against `ray.nodes()` once joined."""
    if not _address(cfg):
        check_machine(cfg, platform, machine_cores())


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
    ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address=cfg.cluster.host,
             logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), **platform.actor_env()}})
    return True
