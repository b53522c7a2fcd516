"""Write a file or folder all at once: fill a temporary sibling, then rename it into place. A reader (or a
crash) sees the old version or the new one, never half of one; rename is atomic within a filesystem,
and a sibling is on the same one. Used for datasets, checkpoints, the SFT output and converted files."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_sibling(final: Path) -> Path:
    """A hidden name next to `final` that no other writer picks: `.NAME.tmp-PID-RANDOM`."""
    return final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`. A folder already at `final` is moved aside first and deleted only once the
    new one is in place; if the rename fails it goes back, unless another writer filled `final` meanwhile."""
    old = None
    if final.exists() or final.is_symlink():
        old = final.with_name(f"{tmp.name}.old")
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except OSError:
        if old is not None and not (final.exists() or final.is_symlink()):
            os.rename(old, final)
            old = None
        raise
    finally:
        if old is not None and old.is_symlink():  # a link is replaced; the folder it pointed to stays as it was
            old.unlink()
        elif old is not None:
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(final: Path, tmp: Path | None = None,
               publish: Callable[[Path, Path], None] = replace_dir) -> Iterator[Path]:
    """Yield an empty temporary folder to fill; on a clean exit `publish(tmp, final)` puts it in place
    (default `replace_dir`), on an error nothing changes at `final`. Either way the temporary is gone
    afterwards. `tmp`: a fixed name instead of `temporary_sibling(final)`, for writers that look for it
    (checkpoints: `.step-N.tmp` is how a resume recognises a write cut short); a leftover is cleared first."""
    tmp = tmp or temporary_sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
