"""A pickle payload for the tests that show checkpoint loading runs nothing from a checkpoint folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class Payload:
    """Unpickling it creates `marker`: the stand-in for the code a hostile checkpoint file would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return open, (str(self.marker), "w")


def plant(path: Path, state: dict[str, Any], marker: Path) -> Path:
    """`torch.save` of `state` with the payload beside its entries, at `path`."""
    torch.save({**state, "payload": Payload(marker)}, path)
    return path
