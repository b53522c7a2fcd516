"""The two ways a weight-sync bucket travels from learner rank 0 to the rollout engines.

- collective: one `broadcast` of the bucket over a torch process group of the sender and every engine
  worker (gloo on CPU, NCCL on CUDA, which is RCCL on ROCm). Works across nodes.
- shared memory: when every engine worker runs on the sender's node, the sender packs each bucket
  straight into one of two slots of a file under `weight_sync.shm_dir` (tmpfs: /dev/shm) that all of
  them map; the group carries only a one-element all-reduce per bucket, which says "bucket k is in its
  slot" to the receivers and "every receiver has loaded bucket k-1" to the sender. The bytes are
  written once and read in place (no socket copies, no per-receiver transfer). With two slots, bucket
  k+1 is packed while bucket k loads.

Which one runs is decided when the group is built (`weight_sync.transport`, `auto` by default): the
sender writes a probe file with a random token and every receiver says whether it reads that token,
which is exactly the question "do we share this shared-memory folder" (a Ray node id or an IP would
only stand for it). vLLM's `weight_transfer` CUDA-IPC engine covers the GPU form of this path but not
CPU, where every test runs; staging through host shared memory is one code path for both.
"""

from __future__ import annotations

import errno
import os
import secrets
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist


def process_group(store: dist.Store, rank: int, world_size: int, backend: str, timeout_s: float):
    """A process group of its own (never the default one, which vLLM and DeepSpeed use)."""
    timeout = timedelta(seconds=timeout_s)
    if backend == "gloo":
        return dist.ProcessGroupGloo(store, rank, world_size, timeout)
    options = dist.ProcessGroupNCCL.Options()
    options._timeout = timeout
    return dist.ProcessGroupNCCL(store, rank, world_size, options)


SHM_PREFIX = "ggrpo-sync-"  # every file of the sync in weight_sync.shm_dir: ggrpo-sync-<owner>-<token>.<kind>
OWNED_KINDS = (".probe", ".slots")


def check_owner(owner: str) -> str:
    """A run's name in its file names: letters and digits only, so one owner's prefix (`ggrpo-sync-<owner>-`)
    never matches another's files."""
    if not owner.isascii() or not owner.isalnum():
        raise ValueError(f"weight-sync file owner {owner!r}: letters and digits only")
    return owner


def remove_owned(folder: str | Path, owner: str) -> list[str]:
    """Delete `owner`'s probe and slots files in `folder` (those a killed sender left: its slots lose their
    name only after the first sync); returns their names. Nothing else there is touched: not another run's
    files, not a link, not anything without the sync's name and kind."""
    prefix = f"{SHM_PREFIX}{check_owner(owner)}-"
    removed = []
    for path in Path(folder).glob(f"{prefix}*"):
        if path.suffix in OWNED_KINDS and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return sorted(removed)


class Probe:
    """The sender's question to its receivers: a file holding a random token in `folder`. A receiver that
    reads the same token shares the folder's memory with the sender. `owner`: the run, in the file's name
    (`remove_owned`); None: a name of its own."""

    def __init__(self, folder: str, owner: str | None = None):
        self.token = secrets.token_hex(16)
        owner = check_owner(owner) if owner is not None else secrets.token_hex(6)
        self.path = Path(folder) / f"{SHM_PREFIX}{owner}-{self.token}.probe"
        self.path.write_text(self.token)

    @property
    def slots_path(self) -> str:
        return slots_path(str(self.path))

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def slots_path(probe_path: str) -> str:
    """The sender's slots file, beside its probe: what the driver hands the receivers."""
    return str(Path(probe_path).with_suffix(".slots"))


def sees_probe(path: str | None, token: str | None) -> bool:
    """A receiver's answer: does this process read the sender's probe file with its token."""
    if path is None:
        return False
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def choose_transport(requested: str, sees: list[bool], names: list[str]) -> str:
    """'shared_memory' or 'collective' for `weight_sync.transport` = auto | collective | shared_memory,
    given which receivers (`names`) see the sender's probe."""
    if requested == "collective":
        return "collective"
    if all(sees) and sees:
        return "shared_memory"
    if requested == "shared_memory":
        far = [n for n, s in zip(names, sees, strict=True) if not s]
        raise ValueError(f"weight_sync.transport=shared_memory, but {', '.join(far)} cannot see the learner's "
                         "weight_sync.shm_dir (another node or another container): use auto or collective")
    return "collective"


class SharedSlots:
    """Two `slot_bytes` slots in one file, mapped shared (`torch.from_file`) by the sender and every
    receiver. The sender creates the file and reserves its pages up front (`posix_fallocate`): a tmpfs
    too small for it (Docker's 64 MB /dev/shm) is an error here, not a SIGBUS on a later write."""

    def __init__(self, path: str, slot_bytes: int, create: bool):
        self.path, self.slot_bytes = path, slot_bytes
        if create:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            try:
                os.posix_fallocate(fd, 0, 2 * slot_bytes)
            except OSError as e:
                os.close(fd)
                os.unlink(path)
                if e.errno in (errno.ENOSPC, errno.EFBIG):
                    raise OSError(e.errno, f"{path}: no room for 2 x {slot_bytes / 2**20:.0f} MB weight-sync slots "
                                           "(raise the tmpfs size, e.g. docker --shm-size, lower "
                                           "weight_sync.bucket_mb, or set weight_sync.transport=collective)") from e
                raise
            os.close(fd)
        self.buffer = torch.from_file(path, shared=True, size=2 * slot_bytes, dtype=torch.uint8)

    def slot(self, k: int, nbytes: int) -> torch.Tensor:  # [nbytes] uint8, a view into the shared file
        start = (k % 2) * self.slot_bytes
        return self.buffer[start: start + nbytes]

    def unlink(self) -> None:
        """Remove the name once every receiver has mapped it: the mappings live on, and a crash later
        leaves nothing behind in the folder."""
        Path(self.path).unlink(missing_ok=True)


def tick(group, device: str, timeout: timedelta) -> None:
    """One-element all-reduce over the sync group: the shared-memory path's per-bucket handshake."""
    group.allreduce(torch.zeros(1, device=device)).wait(timeout)
