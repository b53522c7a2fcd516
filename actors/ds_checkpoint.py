"""DeepSpeed state loads as tensors and plain data only: resuming from a checkpoint folder runs no code
from it.

DeepSpeed's own checkpoint engine reads its `.pt` files with `torch.load(weights_only=False)`, i.e. full
pickle: a file in a checkpoint folder from elsewhere could run anything on resume. Every DeepSpeed engine
created after `use_weights_only_loads()` (the learners', and SFT's on accelerators) gets
`WeightsOnlyCheckpointEngine` instead, which saves the same files and loads them weights-only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine, create_checkpoint_engine
from deepspeed.runtime.fp16.loss_scaler import LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from actors.checkpoint_files import check_digest, manifest_entry, refuse_unsafe

# The only non-torch types DeepSpeed pickles into ZeRO-2/3 optimizer state, fp32 or bf16, offloaded or not
# (the model-state files hold none). Weights-only loading builds them from plain data (an int enum, and
# two classes whose attributes are set to numbers): no call other than the class itself.
DEEPSPEED_TYPES = (ZeroStageEnum, LossScaler, fragment_address)
FOLDER, TAG = "deepspeed", "state"  # <model folder>/deepspeed/state/: one fixed tag, `latest` is never read


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, loading with `weights_only=True`. It also keeps the manifest
    entry of every file it saves (`written`: hashed here, by the rank that wrote the file, while the file
    is in the page cache) and, while `expected` is set, loads only files whose sha256 it lists."""

    def __init__(self, config_params: Any = None):
        super().__init__(config_params)
        # file path -> {"bytes", "sha256"} while `save_state` records (None otherwise: SFT's saves hash nothing)
        self.written: dict[str, dict[str, Any]] | None = None
        self.expected: dict[str, str] | None = None  # file path -> sha256; None: no manifest to check against

    def save(self, state_dict: Any, path: str) -> None:
        super().save(state_dict, path)
        if self.written is not None:
            self.written[os.path.normpath(path)] = manifest_entry(path)

    def load(self, path: str, map_location: Any = None) -> Any:
        if self.expected is not None:
            check_digest(path, self.expected.get(os.path.normpath(path)))
        refuse_unsafe(path, DEEPSPEED_TYPES)  # names the file; the weights-only load enforces the same rule
        with torch.serialization.safe_globals(list(DEEPSPEED_TYPES)):
            return torch.load(path, map_location=map_location, weights_only=True)


def _create(config_params: Any, *args: Any, **kwargs: Any) -> WeightsOnlyCheckpointEngine:
    made = create_checkpoint_engine(config_params, *args, **kwargs)
    # The other engines, and DeepSpeed's universal-checkpoint loader, read their files with full pickle.
    if getattr(config_params, "load_universal_checkpoint", False):
        raise ValueError("the DeepSpeed config sets checkpoint.load_universal, whose loader reads files with pickle")
    if type(made) is not TorchCheckpointEngine:
        raise ValueError(f"the DeepSpeed config selects {type(made).__name__}, which loads checkpoints with pickle: "
                         "only the default torch checkpoint engine is supported")
    return WeightsOnlyCheckpointEngine(config_params)


def use_weights_only_loads() -> None:
    """Every DeepSpeed engine this process creates from now on loads its checkpoints weights-only."""
    import deepspeed.runtime.engine as ds_engine

    ds_engine.create_checkpoint_engine = _create


def save_state(engine: Any, root: Path) -> dict[str, dict[str, Any]]:
    """`engine`'s DeepSpeed state under `root`/deepspeed; the manifest entries of the files this rank wrote
    (hashed as they were written: the ranks share the hashing, nothing is read back), by path under `root`."""
    files = engine.checkpoint_engine
    files.written = {}
    try:
        engine.save_checkpoint(str(root / FOLDER), tag=TAG)
        return {Path(f).relative_to(root).as_posix(): entry for f, entry in files.written.items()}
    finally:
        files.written = None


def load_state(engine: Any, root: Path, digests: dict[str, str] | None) -> None:
    """`save_state`'s files into `engine`, weights-only (`UnsafeCheckpointError` names a file that pickles
    more); with `digests` (sha256 by path under `root`, from the manifest) each file is checked as it is
    read (`CorruptCheckpointError` names one that differs or is not listed)."""
    files = engine.checkpoint_engine
    if digests is not None:
        files.expected = {os.path.normpath(root / rel): sha for rel, sha in digests.items()}
    try:
        load_path, _ = engine.load_checkpoint(str(root / FOLDER), tag=TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
    finally:
        files.expected = None
    if load_path is None:
        raise FileNotFoundError(f"{root}: no DeepSpeed state under {root / FOLDER}")
