"""Run checkpoints: `checkpoint.dir/step-000006/` = HF weights + DeepSpeed state (`model/`, written by
the learners) + `trainer_state.json` (step, policy version, data position, RNG) + `manifest.json`.

A checkpoint is complete only when its manifest (file sizes and sha256 of every file) is there: it is
written last, in a temporary directory that is then renamed, so a crash at any moment leaves either
the whole checkpoint or none. Incomplete ones are ignored with a warning naming them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
PREFIX = "step-"
TMP_SUFFIX = ".tmp"  # `.step-000006.tmp`: a checkpoint being written (or left by a crash mid-write)


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"{PREFIX}{step:06d}"


class CheckpointError(OSError):
    """A checkpoint could not be written (disk full, unwritable folder): the message names the path;
    the checkpoints written before are untouched."""


def save(root: str | Path, step: int, write_model: Callable[[Path], Any], state: dict[str, Any],
         keep_last: int) -> Path:
    """Write checkpoint `step`: `write_model(dir)` writes the weights (the learners' save), then the
    trainer state, then the manifest; rename into place; keep the newest `keep_last`."""
    final = step_dir(root, step)
    tmp = final.with_name(f".{final.name}{TMP_SUFFIX}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_model(tmp / "model")
        (tmp / STATE).write_text(json.dumps(state, indent=1))
        (tmp / MANIFEST).write_text(json.dumps(_manifest(tmp), indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # frees what the partial write took
        where = exc.filename or tmp
        previous = complete(root)
        raise CheckpointError(f"could not write checkpoint step {step}: {exc.strerror or exc} ({where}); "
                              f"the last complete checkpoint is {previous[-1] if previous else 'none'}, untouched"
                              ) from exc
    for old in complete(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first; incomplete ones are named in a warning."""
    root = Path(root)
    if not root.is_dir():
        return []
    for partial in sorted(root.glob(f".{PREFIX}*{TMP_SUFFIX}")):
        warnings.warn(f"ignoring incomplete checkpoint {partial} (a write that never finished)", stacklevel=2)
    found = []
    for path in sorted(root.glob(f"{PREFIX}*")):
        if path.is_dir() and verify(path):
            found.append(path)
        else:
            warnings.warn(f"ignoring incomplete checkpoint {path} ({MANIFEST} missing or not matching its files)",
                          stacklevel=2)
    return found


def verify(path: Path, deep: bool = False) -> bool:
    """True when the manifest exists and every file it lists is there with its size (and, if `deep`,
    its sha256)."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    for rel, entry in manifest["files"].items():
        file = path / rel
        if not file.is_file() or file.stat().st_size != entry["bytes"]:
            return False
        if deep and _sha256(file) != entry["sha256"]:
            return False
    return True


def resolve_resume(root: str | Path, resume: str) -> Path | None:
    """`checkpoint.resume`: "never" -> None; "auto" -> newest complete checkpoint or None; else a path
    that must be a complete checkpoint."""
    if resume == "never":
        return None
    if resume == "auto":
        found = complete(root)
        return found[-1] if found else None
    path = Path(resume)
    if not verify(path):
        raise FileNotFoundError(f"checkpoint.resume={resume}: not a complete checkpoint "
                                f"({MANIFEST} missing or not matching its files)")
    return path


def load_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE).read_text())


def _manifest(root: Path) -> dict[str, Any]:
    files = {str(p.relative_to(root)): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(root.rglob("*")) if p.is_file()}
    return {"files": files}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
