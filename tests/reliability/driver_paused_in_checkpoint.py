"""`python -m rl.launch ARGS` with one thing added: once the learners have written checkpoint
PAUSE_AT_CHECKPOINT's weights into its temporary folder, the driver touches PAUSE_MARKER and waits there, so a
test can SIGKILL it mid-write at a known point. This is an injected pause, for a moment a test cannot otherwise
hit: polling for the temporary folder raced (on a loaded machine a tiny model's checkpoint was written and
renamed between two polls). Everything else, the write included, is the real driver."""

from __future__ import annotations

import os
import runpy
import time
from pathlib import Path

from rl import checkpoint

PAUSE_AT = int(os.environ["PAUSE_AT_CHECKPOINT"])
MARKER = Path(os.environ["PAUSE_MARKER"])
_save = checkpoint.save


def _save_then_pause(root, step, write_model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    def write_then_pause(path: Path):  # noqa: ANN202
        hashed = write_model(path)
        if step == PAUSE_AT:
            MARKER.touch()
            time.sleep(3600)  # the test kills the driver here
        return hashed
    return _save(root, step, write_then_pause, *args, **kwargs)


checkpoint.save = _save_then_pause
runpy.run_module("rl.launch", run_name="__main__", alter_sys=True)
