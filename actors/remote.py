"""Remote calls with a deadline: every wait on actors has a timeout from config, and every failure
names the actor and the phase (peers' users lose hours to silent 30-minute NCCL hangs)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

WILDCARD_HOSTS = ("0.0.0.0", "::")


def reachable_host(host: str) -> str:
    """The address peers should dial for a service bound to `host` in this process: a wildcard bind
    (multi-node configs set cluster.host: 0.0.0.0) is advertised as this node's IP, which other nodes
    reach; loopback stays loopback (single node)."""
    if host not in WILDCARD_HOSTS:
        return host
    import ray

    return ray.util.get_node_ip_address()


class ActorCallError(RuntimeError):
    """An actor died, hung past the deadline, or raised; the message names it and the phase."""

    def __init__(self, message: str, actor: str, phase: str):
        super().__init__(message)
        self.actor, self.phase = actor, phase


def gather(refs: Sequence[Any], names: Sequence[str], phase: str, timeout_s: float,
           error: type[ActorCallError] = ActorCallError) -> list[Any]:
    """`ray.get` of `refs` (one per actor in `names`) within `timeout_s` seconds in all. Fails fast:
    the first actor that dies or raises is named at once, without waiting for the others."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    refs = list(refs)
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[Any] = [None] * len(refs)
    pending, deadline = list(refs), time.monotonic() + timeout_s
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            late = [names[index[r]] for r in pending]
            raise error(f"{', '.join(late)}: no answer to {phase} within {timeout_s:.0f} s", late[0], phase)
        name = names[index[ready[0]]]
        try:
            results[index[ready[0]]] = ray.get(ready[0])
        except RayActorError as exc:
            raise error(f"{name} died during {phase}: {exc}", name, phase) from exc
        except RayTaskError as exc:
            raise error(f"{name} failed during {phase}: {exc}", name, phase) from exc
    return results
