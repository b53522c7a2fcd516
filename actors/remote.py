"""Remote calls with a deadline: every wait on actors has a timeout from config, and every failure
names the actor and the phase (peers' users lose hours to silent 30-minute NCCL hangs)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any


def bind_host(host: str) -> str:
    """The address this process's services (the learners' process-group store, the weight-sync store)
    listen on and peers dial: `cluster.host`, where "auto" is this node's address as Ray knows it: its
    address on the cluster network, or loopback for a local Ray (rl.cluster starts that on 127.0.0.1)."""
    if host != "auto":
        return host
    import ray

    return ray.util.get_node_ip_address()


def listening_store(host: str, world_size: int, timeout: timedelta, wait_for_workers: bool = False) -> Any:
    """A master TCPStore on a free port that listens on `host` only. torch's own master binds every
    interface ("::") whatever host it is given; a socket bound here and handed over keeps it to `host`."""
    import socket

    from torch.distributed import TCPStore

    family, kind, proto, _, address = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    # detach: the store owns the descriptor from here on (and closes it with itself).
    return TCPStore(host, sock.getsockname()[1], world_size, is_master=True, timeout=timeout,
                    wait_for_workers=wait_for_workers, master_listen_fd=sock.detach(), use_libuv=True)


class Locatable:
    """Mixed into every actor class: where its process runs, so errors name the node, and a fault
    drill (or test) can kill that process from outside."""

    def where(self) -> tuple[str, int]:
        import os

        import ray

        return ray.util.get_node_ip_address(), os.getpid()


def label(name: str, where: tuple[str, int]) -> str:
    """How errors name an actor: `rollout-0 on 10.0.0.3 (pid 4242)`."""
    return f"{name} on {where[0]} (pid {where[1]})"


class ActorCallError(RuntimeError):
    """An actor died, hung past the deadline, or raised; the message names it and the phase."""

    def __init__(self, message: str, actor: str, phase: str):
        super().__init__(message)
        self.actor, self.phase = actor, phase


Retry = Callable[[int, "ActorCallError"], Any]


def gather(refs: Sequence[Any], names: Sequence[str], phase: str, timeout_s: float,
           error: type[ActorCallError] = ActorCallError, retry: Retry | None = None) -> list[Any]:
    """`ray.get` of `refs` (one per actor in `names`), each within `timeout_s` seconds. Fails fast: the
    first actor that dies or hangs is named at once, without waiting for the others.

    `retry(i, err)`, when given, is called instead for call i whose actor died or hung (never for one
    that raised: that error is the call's own and would come back): it replaces the actor and returns
    the ref of call i re-submitted, whose wait starts afresh; the other calls' results are kept. It may
    raise to give up, and may update `names[i]` to name the replacement."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    results: list[Any] = [None] * len(refs)
    deadlines = {ref: (i, time.monotonic() + timeout_s) for i, ref in enumerate(refs)}

    def lost(ref: Any, err: ActorCallError) -> None:
        i, _ = deadlines.pop(ref)
        if retry is None:
            raise err
        deadlines[retry(i, err)] = (i, time.monotonic() + timeout_s)

    while deadlines:
        first = min(deadline for _, deadline in deadlines.values())
        ready, _ = ray.wait(list(deadlines), num_returns=1, timeout=max(0.0, first - time.monotonic()))
        if not ready:
            late = [ref for ref, (_, deadline) in deadlines.items() if deadline <= time.monotonic()]
            for ref in late:
                name = names[deadlines[ref][0]]
                lost(ref, error(f"{name}: no answer to {phase} within {timeout_s:.0f} s", name, phase))
            continue
        ref = ready[0]
        name = names[deadlines[ref][0]]
        try:
            results[deadlines[ref][0]] = ray.get(ref)
        except RayActorError as exc:
            err = error(f"{name} died during {phase}: {exc}", name, phase)
            err.__cause__ = exc
            lost(ref, err)
            continue
        except RayTaskError as exc:
            raise error(f"{name} failed during {phase}: {exc}", name, phase) from exc
        deadlines.pop(ref)
    return results
