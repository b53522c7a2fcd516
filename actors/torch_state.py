"""Torch state files (`torch.save` pickles: optimizer, scheduler, RNG states) from a checkpoint folder are
read weights-only; `refuse_unsafe` names, before any load, the file whose pickle asks for more.

A weights-only load refuses such a file too, but its error names neither the file nor what was asked for.
The check reads only the file's pickle opcodes (no tensor data), and runs nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch


class UnsafeCheckpointError(ValueError):
    """A checkpoint file holds something other than tensors and plain data; the message names the file."""


def refuse_unsafe(path: str | Path, allowed: Iterable[type | object]) -> None:
    """Raise `UnsafeCheckpointError` unless `path` is a zip-format torch file whose pickle names only what
    torch's weights-only loader accepts, plus the classes or functions in `allowed`."""
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
