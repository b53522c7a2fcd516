"""Run checkpoints: `checkpoint.dir/step-000006/` = HF weights + DeepSpeed state (`model/`, written by
the learners) + `trainer_state.json` (step, policy version, data position, RNG) + `manifest.json`.

A checkpoint is complete only when its manifest (file sizes and sha256 of every file) is there: it is
written last, in a temporary directory that is then renamed, so a crash at any moment leaves either
the whole checkpoint or none. Incomplete ones are ignored with a warning naming them.

The digests catch a file that changed after it was written (a torn copy, a disk error): each file is
hashed once, by the process that wrote it (the learners hash their own shards), and checked once, by
the process that loads it (trainer state here, DeepSpeed state in the learners, the HF weights before
`rl.evaluate` serves them). They are no defence against a hostile folder, whose author writes the
manifest too: that is weights-only loading's job (docs/security.md).
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors.checkpoint_files import CorruptCheckpointError, check_digest, manifest_entry
from rl.core.atomic import atomic_dir

MANIFEST = "manifest.json"
STATE = "trainer_state.json"
MODEL = "model"  # the learners' folder: HF weights + DeepSpeed state
DEEPSPEED = "deepspeed"  # under MODEL
PREFIX = "step-"
TMP_SUFFIX = ".tmp"  # `.step-000006.tmp`: a checkpoint being written (or left by a crash mid-write)


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"{PREFIX}{step:06d}"


class CheckpointError(OSError):
    """A checkpoint could not be written (disk full, unwritable folder): the message names the path;
    the checkpoints written before are untouched."""


def save(root: str | Path, step: int, write_model: Callable[[Path], dict[str, dict[str, Any]] | None],
         state: dict[str, Any], keep_last: int) -> Path:
    """Write checkpoint `step`: `write_model(dir)` writes the weights (the learners' save) and may return
    the manifest entries of what it wrote (by path under `dir`); then the trainer state, then the manifest
    (files `write_model` did not hash are hashed here); rename into place; keep the newest `keep_last`."""
    final = step_dir(root, step)
    tmp = final.with_name(f".{final.name}{TMP_SUFFIX}")
    try:
        with atomic_dir(final, tmp) as tmp:  # on an error the partial write is deleted: frees what it took
            hashed = write_model(tmp / MODEL) or {}
            (tmp / STATE).write_text(json.dumps(state, indent=1))
            known = {f"{MODEL}/{rel}": entry for rel, entry in hashed.items()}
            (tmp / MANIFEST).write_text(json.dumps(_manifest(tmp, known), indent=1))
    except OSError as exc:
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


def verify(path: Path) -> bool:
    """True when the manifest exists and every file it lists is there with its size (the digests are
    checked where the files are loaded: `digests`, `check`)."""
    try:
        files = _files(path)
    except (OSError, ValueError):
        return False
    return all((path / rel).is_file() and (path / rel).stat().st_size == entry["bytes"] for rel, entry in files.items())


def digests(path: Path, under: str) -> dict[str, str]:
    """The manifest's sha256 of every file under `under` (a folder of the checkpoint), by path below it."""
    return {rel.removeprefix(f"{under}/"): entry["sha256"] for rel, entry in _files(path).items()
            if rel.startswith(f"{under}/")}


def check(path: Path, rels: list[str] | None = None) -> None:
    """Each of the checkpoint's files `rels` (None: every file the manifest lists) has its manifest's sha256
    (`CorruptCheckpointError` names the first that has not)."""
    files = _files(path)
    for rel in files if rels is None else rels:
        check_digest(path / rel, files.get(rel, {}).get("sha256"))


def check_model(model: Path) -> None:
    """When `model` is the weights folder of a checkpoint (`.../step-000020/model`), every file in it but
    the DeepSpeed state matches the manifest; any other folder (a user's, SFT's) is left alone."""
    root = model.parent
    if model.name != MODEL or not (root / MANIFEST).is_file():
        return
    if not verify(root):
        raise CorruptCheckpointError(f"{root}: incomplete checkpoint ({MANIFEST} lists files missing or cut short)")
    check(root, [f.relative_to(root).as_posix() for f in sorted(model.rglob("*"))
                 if f.is_file() and f.relative_to(model).parts[0] != DEEPSPEED])


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
    """The trainer state, once its digest is checked."""
    check(path, [STATE])
    return json.loads((path / STATE).read_text())


def _files(path: Path) -> dict[str, dict[str, Any]]:
    """The manifest's entries; ValueError when the file is no manifest (a checkpoint from elsewhere)."""
    manifest = json.loads((path / MANIFEST).read_text())
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("bytes"), int) and isinstance(e.get("sha256"), str)
            for e in files.values()):
        raise ValueError(f"{path / MANIFEST}: not a checkpoint manifest")
    return files


def _manifest(root: Path, known: dict[str, dict[str, Any]]) -> dict[str, Any]:
    files = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = p.relative_to(root).as_posix()
            files[rel] = known[rel] if rel in known else manifest_entry(p)
    return {"files": files}
