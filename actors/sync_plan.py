"""What a weight sync moves: each tensor's name, shape and dtype (`TensorMeta`), the plan that groups them
into buckets, a bucket's bytes packed into one flat buffer and unpacked again, the checksums both ends
compare, the plan's wire form for RPCs, and the tensors of a safetensors checkpoint. Plain functions on
tensors, used by both ends of `actors/weight_sync.py`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import xxhash


@dataclass(frozen=True)
class TensorMeta:
    name: str  # HF parameter name, as the learner's model and the checkpoint call it
    shape: tuple[int, ...]
    dtype: str  # torch dtype name, e.g. "float32"

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()


Bucket = tuple[TensorMeta, ...]


def plan_buckets(metas: Iterable[TensorMeta], bucket_mb: float) -> list[Bucket]:
    """Group tensors in order into buckets of at most `bucket_mb`, never splitting a module's
    tensors (e.g. a layer's q/k/v_proj, which vLLM fuses into one qkv_proj: loading part of a fused
    layer in one bucket and the rest in the next would leave it half old); a larger module goes alone."""
    limit, buckets, current, size = bucket_mb * 1024**2, [], [], 0
    modules: list[list[TensorMeta]] = []
    for meta in metas:
        if modules and _module(modules[-1][0].name) == _module(meta.name):
            modules[-1].append(meta)
        else:
            modules.append([meta])
    for module in modules:
        nbytes = sum(m.nbytes for m in module)
        if current and size + nbytes > limit:
            buckets.append(tuple(current))
            current, size = [], 0
        current.extend(module)
        size += nbytes
    if current:
        buckets.append(tuple(current))
    return buckets


def bucket_bytes(bucket: Bucket) -> int:
    return sum(m.nbytes for m in bucket)


def _module(name: str) -> str:
    """'m.layers.0.self_attn.q_proj.weight' -> 'm.layers.0.self_attn': the unit vLLM may fuse."""
    return name.rsplit(".", 2)[0]


def as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 view (a copy only if it is not contiguous)."""
    return tensor.detach().reshape(-1).view(torch.uint8)


def pack(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors' bytes into one flat uint8 tensor (one broadcast per bucket)."""
    return torch.cat([as_bytes(t) for t in tensors])


def unpack(flat: torch.Tensor, bucket: Bucket) -> Iterator[tuple[str, torch.Tensor]]:
    """Views into `flat` with each tensor's name, shape and dtype."""
    offset = 0
    for meta in bucket:
        chunk = flat[offset: offset + meta.nbytes]
        offset += meta.nbytes
        yield meta.name, chunk.view(getattr(torch, meta.dtype)).reshape(meta.shape)


def checksum(tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, str]:
    """name -> 128-bit xxh3 of the tensor's bytes: equal only for bit-identical weights (barring a
    2^-128 collision). xxh3 hashes ~6 GB/s here where sha256 managed 0.9: every sync checks every
    tensor on every engine, so the hash is on the hot path."""
    return {name: xxhash.xxh3_128_hexdigest(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
            for name, t in tensors}


def safetensors_files(path: str | Path) -> list[Path]:
    return sorted(Path(path).glob("*.safetensors"))


def iter_safetensors(files: Iterable[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every tensor in the files, one tensor in memory at a time."""
    from safetensors import safe_open

    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                yield name, f.get_tensor(name)


def plan_to_wire(plan: list[Bucket]) -> list[list[list]]:
    """Plain lists for RPCs into vLLM's workers (which carry simple types intact, not objects)."""
    return [[[m.name, list(m.shape), m.dtype] for m in bucket] for bucket in plan]


def plan_from_wire(wire: list[list[list]]) -> list[Bucket]:
    return [tuple(TensorMeta(name, tuple(shape), dtype) for name, shape, dtype in bucket) for bucket in wire]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n
