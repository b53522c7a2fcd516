"""Files of a checkpoint folder as loaders see them: their digests (computed by the process that wrote
them, checked by the one that loads them) and the weights-only rule for torch state files.

Torch state files (`torch.save` pickles: optimizer, scheduler, RNG states) are read weights-only;
`refuse_unsafe` names, before any load, the file whose pickle asks for more. A weights-only load refuses
such a file too, but its error names neither the file nor what was asked for. The check reads only the
file's pickle opcodes (no tensor data), and runs nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds something other than tensors and plain data; the message names the file."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file is not the one its manifest lists (changed, truncated, or not listed); the message
    names the file."""


def sha256(path: str | Path) -> str:
    """The file's sha256, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_entry(path: str | Path) -> dict[str, Any]:
    return {"bytes": Path(path).stat().st_size, "sha256": sha256(path)}


def check_digest(path: str | Path, expected: str | None) -> None:
    """Raise `CorruptCheckpointError` unless the file's sha256 is `expected` (None: the manifest lacks it)."""
    if expected is None:
        raise CorruptCheckpointError(f"{path}: not listed in the checkpoint's manifest.json; refusing to load it")
    found = sha256(path)
    if found != expected:
        raise CorruptCheckpointError(f"{path}: sha256 {found} differs from the manifest's {expected}: the file "
                                     "changed after the checkpoint was written")


def refuse_unsafe(path: str | Path, allowed: Iterable[type | object]) -> None:
    """Raise `UnsafeCheckpointError` unless `path` is a zip-format torch file whose pickle names only what
    torch's weights-only loader accepts, plus the classes or functions in `allowed`."""
    import torch

    names = {f"{t.__module__}.{t.__qualname__}" for t in allowed}
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except ValueError as exc:  # the pre-zip format: nothing we load is written in it
        raise UnsafeCheckpointError(f"{path}: not a checkpoint file written by torch.save ({exc})") from exc
    unsafe = sorted(set(found) - names)
    if unsafe:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it pickles {', '.join(unsafe)}, which is not tensor data (state files load "
            f"weights-only: tensors, containers, numbers{''.join(f', {n}' for n in sorted(names))})")
