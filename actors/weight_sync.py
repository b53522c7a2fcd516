"""Weight sync: learner rank 0 -> every rollout engine, bucket by bucket, versioned, verified.

Transport: one torch process group spanning the sender (learner rank 0) and every rollout engine's
worker process(es), built from a TCPStore the sender hosts. Its backend comes from the platform
layer: gloo on CPU, nccl on CUDA (RCCL on ROCm, same name). Each bucket travels as one flat uint8
tensor, in a single broadcast, or, when every engine shares the sender's node, through two
shared-memory slots with a one-element all-reduce per bucket as the handshake
(`actors/sync_transport.py`; `weight_sync.transport`). Receivers load it at once with vLLM's in-place
`reload_weights(weights_iterator=...)` (vLLM maps HF names to its fused layout, e.g. q/k/v_proj ->
qkv_proj, and shards for tensor parallelism as it loads). Buckets are pipelined: the sender packs
bucket k+1 while bucket k is in flight, and each receiver posts bucket k+1's receive before it loads
bucket k, so peak extra memory is two buckets on each side.

Why not vLLM's native `vllm.distributed.weight_transfer`: its engines are NCCL (PyNccl) and CUDA
IPC, neither of which runs on CPU, where every test of ours runs; a torch process group gives one
code path whose backend is the only platform difference, tested here on gloo.

`WeightReceiver` is a vLLM worker extension (`worker_extension_cls`): its methods run inside the
engine's worker processes through `LLM.collective_rpc` (it also reseeds their sampling RNG, the one
other thing the driver needs inside them). `WeightSender` runs in learner rank 0.
"""

from __future__ import annotations

import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from actors.remote import ActorCallError, bind_host, gather, listening_store
from actors.sync_plan import (
    Bucket,
    TensorMeta,
    as_bytes,
    bucket_bytes,
    checksum,
    iter_safetensors,
    plan_buckets,
    plan_from_wire,
    plan_to_wire,
    safetensors_files,
    unpack,
)
from actors.sync_transport import (
    Probe,
    SharedSlots,
    check_owner,
    choose_transport,
    process_group,
    remove_owned,
    sees_probe,
    slots_path,
    tick,
)
from rl.core.platform import Platform

EXTENSION = "actors.weight_sync.WeightReceiver"


@dataclass(frozen=True)
class SyncGroup:
    """How an engine joins a sync group: the sender's TCPStore (`host`, `port`), the group's size and
    torch.distributed backend, the deadline of every call in it, and the sender's shared-memory probe
    (its path and token) when the sender offers shared memory."""

    host: str
    port: int
    world_size: int
    backend: str
    timeout_s: float
    probe: tuple[str, str] | None = None


class WeightSender:
    """Learner rank 0's end: hosts the rendezvous, then broadcasts each bucket of full weights.

    Two steps because joining is collective: construct (opens the store; `port` is then known and
    handed to the receivers), then `connect()` while the receivers join."""

    def __init__(self, host: str, world_size: int, backend: str, timeout_s: float, device: str,
                 shm_dir: str | None = None, owner: str | None = None):
        """`shm_dir`: where to offer the shared-memory path (a probe file the receivers look for). `owner`:
        the run, named in the files; what an earlier sender of it left there (killed before its first sync
        ended) is removed first."""
        self.host, self.world_size, self.backend, self.device = host, world_size, backend, device
        self.timeout_s, self.timeout = timeout_s, timedelta(seconds=timeout_s)
        self.store = listening_store(host, world_size, self.timeout)
        self.port = self.store.port
        self.group = None
        if shm_dir and owner is not None:
            remove_owned(shm_dir, owner)
        self.probe = Probe(shm_dir, owner) if shm_dir else None
        self.slots: SharedSlots | None = None

    def connect(self) -> None:
        try:
            self.group = process_group(self.store, 0, self.world_size, self.backend, self.timeout_s)
        finally:  # every receiver has read the probe before it joined
            if self.probe is not None:
                self.probe.remove()

    def send(self, plan: list[Bucket], tensors: Iterator[tuple[str, torch.Tensor]], shared: bool = False) -> int:
        """Send `tensors` (in plan order, names checked) bucket by bucket; returns bytes sent.
        Broadcast: bucket k+1 is packed while bucket k is in flight (the group's own threads, or NCCL's
        stream, move it), so at most two buffers are alive; each stays referenced until its Work is done.
        `shared`: through the shared-memory slots (`actors/sync_transport.py`)."""
        if shared:
            return self._send_shared(plan, tensors)
        sent, in_flight = 0, None
        for bucket in plan:
            flat = self._pack(bucket, tensors)
            if in_flight is not None:
                in_flight[1].wait(self.timeout)
            in_flight = (flat, self.group.broadcast(flat, 0))
            sent += flat.numel()
        if in_flight is not None:
            in_flight[1].wait(self.timeout)
        return sent

    def _send_shared(self, plan: list[Bucket], tensors: Iterator[tuple[str, torch.Tensor]]) -> int:
        """Pack bucket k into slot k % 2, then tick: the tick returns once every receiver has loaded
        bucket k-1, which frees slot (k+1) % 2 for the next bucket while they load bucket k."""
        first = self.slots is None
        if first:
            self.slots = SharedSlots(self.probe.slots_path, max(bucket_bytes(b) for b in plan), create=True)
        for k, bucket in enumerate(plan):
            self._pack(bucket, tensors, self.slots.slot(k, bucket_bytes(bucket)))
            tick(self.group, self.device, self.timeout)
        tick(self.group, self.device, self.timeout)  # every receiver has loaded the last bucket
        if first:  # and mapped the file at its first bucket
            self.slots.unlink()
        return sum(bucket_bytes(b) for b in plan)

    def _pack(self, bucket: Bucket, tensors: Iterator[tuple[str, torch.Tensor]],
              flat: torch.Tensor | None = None) -> torch.Tensor:
        """The bucket's tensors, taken from `tensors` and checked against the plan, in one buffer (`flat`,
        or a new one). Each is copied in as it arrives: a ZeRO-3 source frees a gathered tensor once it
        gathers the next ones, so nothing may hold on to it."""
        if flat is None:
            flat = torch.empty(bucket_bytes(bucket), dtype=torch.uint8, device=self.device)
        offset = 0
        for meta in bucket:
            name, tensor = next(tensors)
            if name != meta.name or tuple(tensor.shape) != meta.shape:
                raise ValueError(f"weights arrive out of plan: got {name} {tuple(tensor.shape)}, "
                                 f"planned {meta.name} {meta.shape}")
            flat[offset: offset + meta.nbytes].copy_(as_bytes(tensor))
            offset += meta.nbytes
        return flat

    def close(self) -> None:
        if self.slots is not None:
            self.slots.unlink()
        if self.probe is not None:
            self.probe.remove()
        self.group = self.store = self.slots = None


class WeightReceiver:
    """vLLM worker extension: joins the sync group and loads each received bucket in place."""

    def init_weight_sync(self, group: SyncGroup, rank_offset: int) -> tuple[int, bool]:
        """Join `group`; returns this worker's rank and whether it sees the sender's shared-memory probe."""
        # Each tensor-parallel rank of the engine is its own receiver: rank = offset + tp rank.
        rank = rank_offset + self.rank
        # Before joining: the sender removes the probe once all joined.
        sees = sees_probe(*group.probe) if group.probe else False
        self._sync_timeout = timedelta(seconds=group.timeout_s)
        self._sync_slots: SharedSlots | None = None
        store = dist.TCPStore(group.host, group.port, group.world_size, is_master=False, timeout=self._sync_timeout)
        self._sync_group = process_group(store, rank, group.world_size, group.backend, group.timeout_s)
        return rank, sees

    def receive_weights(self, wire_plan: list[list[list]], shared_path: str | None = None) -> dict[str, str]:
        """Receive and load every bucket; returns the checksum of every tensor as received. The next
        bucket's receive is posted before this one is checksummed and loaded, so the transfer overlaps
        the load (two buffers alive at most, each referenced until its Work is done). `shared_path`:
        read the buckets in place from the sender's shared-memory slots instead."""
        plan = plan_from_wire(wire_plan)
        if shared_path is not None:
            return self._receive_shared(plan, shared_path)
        sums: dict[str, str] = {}
        incoming = self._post_receive(plan[0]) if plan else None
        for k, bucket in enumerate(plan):
            flat, work = incoming
            work.wait(self._sync_timeout)
            incoming = self._post_receive(plan[k + 1]) if k + 1 < len(plan) else None
            self._load(unpack(flat, bucket), sums)
        return sums

    def _receive_shared(self, plan: list[Bucket], path: str) -> dict[str, str]:
        sums: dict[str, str] = {}
        for k, bucket in enumerate(plan):
            tick(self._sync_group, self.device, self._sync_timeout)  # bucket k is in its slot
            if self._sync_slots is None:  # mapped at the first bucket: the file exists by now
                self._sync_slots = SharedSlots(path, max(bucket_bytes(b) for b in plan), create=False)
            self._load(unpack(self._sync_slots.slot(k, bucket_bytes(bucket)), bucket), sums)
        tick(self._sync_group, self.device, self._sync_timeout)  # done with the last one
        return sums

    def _load(self, tensors: Iterable[tuple[str, torch.Tensor]], sums: dict[str, str]) -> None:
        named = list(tensors)
        sums.update(checksum(named))
        with quiet_partial_reload():
            self.model_runner.reload_weights(weights_iterator=iter(named))

    def _post_receive(self, bucket: Bucket) -> tuple[torch.Tensor, Any]:
        flat = torch.empty(bucket_bytes(bucket), dtype=torch.uint8, device=self.device)
        return flat, self._sync_group.broadcast(flat, 0)

    def load_safetensors(self, path: str) -> int:
        """Load every `*.safetensors` file of a checkpoint folder in place, a tensor at a time; returns
        the file count. Unlike `reload_weights(weights_path=...)` this leaves the engine's model path
        alone: with the engine core in-process that config is shared, and the processor is found there."""
        files = safetensors_files(path)
        if not files:
            raise FileNotFoundError(f"{path}: no *.safetensors files")
        self.model_runner.reload_weights(weights_iterator=iter_safetensors(files))
        return len(files)

    def reseed(self, seed: int) -> None:
        """Seed the worker's sampling RNG (unseeded requests draw from torch's default generator), so a
        step's rollouts depend on (seed, step), not on what the engine sampled before: a resumed or
        restarted engine draws exactly what the original would have."""
        import random

        import numpy as np

        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def close_weight_sync(self) -> None:
        self._sync_group = self._sync_slots = None


# vLLM's in-place reload expects every weight at once and warns, at each bucket, about every weight the
# bucket does not hold (thousands of multi-KB lines per sync of an 8B model). The sync checks each tensor
# it moves itself (checksums), so those two loggers stay at ERROR while a bucket loads.
PARTIAL_RELOAD_LOGGERS = ("vllm.model_executor.model_loader.reload.inplace",
                          "vllm.model_executor.model_loader.reload.layerwise")


@contextmanager
def quiet_partial_reload() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in PARTIAL_RELOAD_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class WeightSource(ABC):
    """The sending side's Ray-facing methods, for a class that can list and stream its full weights
    in HF names: the learner (rank 0, gathering ZeRO-3 shards bucket by bucket) or `CheckpointSource`.

    Subclasses implement `weight_metas()` and `iter_weights()` (same order)."""

    _sender: WeightSender | None = None

    @abstractmethod
    def weight_metas(self) -> list[TensorMeta]:
        """Name, shape and dtype of every tensor `iter_weights` yields, in the same order."""

    @abstractmethod
    def iter_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Full tensors in HF names, one at a time (a ZeRO-3 learner gathers each as it goes)."""

    def weight_plan(self, bucket_mb: float) -> list[list[list]]:
        return plan_to_wire(plan_buckets(self.weight_metas(), bucket_mb))

    def open_weight_sync(self, host: str, world_size: int, backend: str, timeout_s: float, device: str,
                         shm_dir: str | None = None, owner: str | None = None,
                         ) -> tuple[str, int, tuple[str, str] | None]:
        """Host the rendezvous on `host` (`cluster.host`; "auto": this node's address, see
        actors.remote.bind_host); returns the (address, port) receivers dial and, offering shared memory
        in `shm_dir`, the probe (path, token) they look for (`owner`: the run, named in its files)."""
        self.close_weight_sync()
        address = bind_host(host)
        self._sender = WeightSender(address, world_size, backend, timeout_s, device, shm_dir, owner)
        probe = self._sender.probe
        return address, self._sender.port, (str(probe.path), probe.token) if probe else None

    def connect_weight_sync(self) -> None:
        self._sender.connect()

    def send_weights(self, wire_plan: list[list[list]], shared: bool = False) -> dict[str, str]:
        """Send every bucket (`shared`: through shared memory); returns the checksum of every tensor sent."""
        sums: dict[str, str] = {}

        def tap() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in self.iter_weights():
                sums.update(checksum([(name, tensor)]))
                yield name, tensor

        self._sender.send(plan_from_wire(wire_plan), tap(), shared)
        return sums

    def drain_weights(self) -> int:
        """For the source's peers that must take part in gathering (ZeRO-3 ranks > 0): iterate the
        weights without sending them."""
        return sum(1 for _ in self.iter_weights())

    def close_weight_sync(self) -> None:
        if self._sender is not None:
            self._sender.close()
            self._sender = None


class CheckpointSource(WeightSource):
    """Serves the weights of an HF safetensors checkpoint (benchmarks, tests of the transport)."""

    def __init__(self, path: str):
        self.files = safetensors_files(path)

    def weight_metas(self) -> list[TensorMeta]:
        return [TensorMeta(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in self.iter_weights()]

    def iter_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter_safetensors(self.files)


class WeightSyncError(ActorCallError):
    """A sync failed: a receiver died or hung (named), or a checksum differs. The source (learner)
    is untouched: replace the worker, `connect()` again, and sync again."""


def verify_checksums(sent: dict[str, str], received: Sequence[dict[str, str]], labels: Sequence[str]) -> None:
    """Every engine received exactly the tensors the source sent, bit for bit (per-tensor checksums);
    otherwise a WeightSyncError (phase "verify") naming the first engine that differs and its tensors."""
    for name, sums in zip(labels, received, strict=True):
        wrong = sorted(n for n in sent if sums.get(n) != sent[n])
        extra = sorted(set(sums) - set(sent))
        if wrong or extra:
            raise WeightSyncError(f"{name}: {len(wrong)} tensors differ from the source after sync "
                                  f"(first: {wrong[:3]})" + (f", {len(extra)} not sent (first: {extra[:3]})"
                                                             if extra else ""), name, "verify")


@dataclass
class SyncStats:
    version: int
    seconds: float
    bytes: int
    engines: int

    @property
    def gb_per_s(self) -> float:
        return self.bytes / self.seconds / 1e9


@dataclass
class EngineView:
    """What `WeightSync` reads of a rollout pool: some of its engines."""

    workers: list[Any]
    labels: list[str]
    tensor_parallel_size: int


class WeightSync:
    """Driver side: joins one `WeightSource` actor and every engine of a `RolloutPool` into one sync
    group and runs versioned, checksum-verified syncs. Holds handles only."""

    def __init__(self, source: Any, source_name: str, pool: Any, bucket_mb: float, timeout_s: float,
                 platform: Platform, host: str = "127.0.0.1", peers: Sequence[tuple[str, Any]] = (),
                 transport: str = "auto", shm_dir: str = "/dev/shm", backend: str | None = None,
                 owner: str | None = None):
        """`peers`: (name, handle) of actors that must iterate the weights with the source (the other
        ZeRO-3 learner ranks, whose shards the source gathers). `transport`: auto | collective |
        shared_memory (`weight_sync.transport`, decided at each `connect`). `backend`: the sync group's
        torch.distributed backend; None: the platform's (gloo where the source shares a GPU with an
        engine, since NCCL refuses two ranks of one group on one device; gloo moves GPU tensors too).
        `owner`: the run's name in its shared-memory files (letters and digits; None: one of its own), so a
        later start of the run, or `remove_files`, finds what a killed learner left."""
        self.source, self.source_name, self.pool, self.peers = source, source_name, pool, list(peers)
        self.backend = backend or platform.dist_backend
        self.bucket_mb, self.timeout_s, self.platform, self.host = bucket_mb, timeout_s, platform, host
        self.requested, self.shm_dir = transport, shm_dir
        self.owner = check_owner(owner) if owner is not None else secrets.token_hex(6)
        self.shared_path: str | None = None  # the slots file, when the last connect chose shared memory
        self.plan: list | None = None
        self.last_checksums: dict[str, str] = {}  # what the source sent in the last sync, per tensor

    def connect(self) -> None:
        """(Re)build the group: after a failure, a replaced worker joins a fresh one."""
        tp = self.pool.tensor_parallel_size
        world = 1 + len(self.pool.workers) * tp
        backend, device = self.backend, self.platform.device_type
        offer = self.shm_dir if self.requested != "collective" else None
        ((address, port, probe),) = self._wait("open", [self.source.open_weight_sync.remote(
            self.host, world, backend, self.timeout_s, device, offer, self.owner)], [self.source_name])
        # Ranks: 0 the sender, then each engine's TP workers in pool order, which placement makes node
        # order (actors.placement): a broadcast ring then crosses each node boundary once.
        group = SyncGroup(address, port, world, backend, self.timeout_s, probe)
        joins = [w.init_weight_sync.remote(group, 1 + i * tp) for i, w in enumerate(self.pool.workers)]
        _, *joined = self._wait("connect", [self.source.connect_weight_sync.remote(), *joins])
        sees = [all(seen for _, seen in workers) for workers in joined]
        shared = choose_transport(self.requested, sees, self.pool.labels) == "shared_memory"
        self.shared_path = slots_path(probe[0]) if shared else None
        # Listing the weights is not collective (shapes only), so the source alone answers.
        (self.plan,) = self._wait("plan", [self.source.weight_plan.remote(self.bucket_mb)], [self.source_name])

    @property
    def transport(self) -> str:
        """What the last `connect` chose: 'shared_memory' or 'collective'."""
        return "collective" if self.shared_path is None else "shared_memory"

    def sync(self, version: int) -> SyncStats:
        """Every engine receives the source's full weights and holds `version`; checksums compared."""
        if self.plan is None:
            self.connect()
        start = time.perf_counter()
        receives = [w.receive_weights.remote(self.plan, version, self.shared_path) for w in self.pool.workers]
        drains = [peer.drain_weights.remote() for _, peer in self.peers]
        refs = [self.source.send_weights.remote(self.plan, self.shared_path is not None), *receives, *drains]
        try:
            sent, *received = self._wait("sync", refs, [self.source_name, *self.pool.labels,
                                                        *(n for n, _ in self.peers)])
        except WeightSyncError:
            # The others may still wait on the broken group (until their timeout): let them fail first,
            # or a new group's rendezvous would queue behind those calls and time out in turn.
            import ray

            ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)
            self.plan = None  # the group is broken: the next sync builds a fresh one
            raise
        received = received[: len(self.pool.workers)]
        seconds = time.perf_counter() - start
        self.last_checksums = sent
        verify_checksums(sent, received, self.pool.labels)
        nbytes = sum(meta.nbytes for bucket in plan_from_wire(self.plan) for meta in bucket)
        return SyncStats(version, seconds, nbytes, len(self.pool.workers))

    def catch_up(self, index: int, version: int) -> SyncStats:
        """Bring the pool's replaced engine `index` to `version` over a group of its own (the source, its
        peers and that engine), while the other engines keep working; the full group lost a member,
        so the next `sync` rebuilds it."""
        engine = EngineView([self.pool.workers[index]], [self.pool.labels[index]], self.pool.tensor_parallel_size)
        stats = WeightSync(self.source, self.source_name, engine, self.bucket_mb, self.timeout_s, self.platform,
                           self.host, self.peers, self.requested, self.shm_dir, self.backend, self.owner
                           ).sync(version)
        self.plan = None
        return stats

    def remove_files(self) -> list[str]:
        """Delete this run's shared-memory files left in `shm_dir` on this machine (a learner killed before
        its first sync ended leaves its slots); returns their names. On a cluster the learner's node may be
        another one: there the run's next start removes them."""
        return remove_owned(self.shm_dir, self.owner) if Path(self.shm_dir).is_dir() else []

    def _wait(self, phase: str, refs: list[Any], names: list[str] | None = None) -> list[Any]:
        names = names or [self.source_name, *self.pool.labels]
        return gather(refs, names, f"weight sync {phase}", self.timeout_s, WeightSyncError)
