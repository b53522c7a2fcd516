"""Long CLI runs that train in a child process while the rest of the session runs.

Most slow tests wait (Ray and vLLM start-up, the fault drills' deadlines) and leave a core idle, while an SFT
run is CPU-bound for many minutes. tests/conftest.py starts each run a session needs when collection ends and
orders the tests that need it last, so the run trains on what the other tests leave.

A run gets one torch thread and the idle scheduling class (SCHED_IDLE: the CPU only when nothing else
wants it), so the tests in front keep their speed, Ray's workers included (Ray runs them at nice 15, below
any merely niced run), and the run cannot stall itself. Two torch threads stall each other whenever another
process takes one of their cores: every parallel region ends in a barrier that waits for the slower thread
(measured on 2 cores with one core busy: a demo SFT step took 11.3 s niced on two threads, 1.4 s niced on one
thread, 0.84 s alone on two). A run's weights do not depend on how fast it goes; they do on the thread
count (the order of float sums)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

LOG_TAIL = 4000  # characters of a failed run's log in the test's failure message


def _lowest_priority() -> None:
    """In the child before it starts: the idle class where the OS has one, else the highest niceness."""
    if hasattr(os, "sched_setscheduler"):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    else:
        os.nice(19)


@dataclass
class BackgroundRun:
    """`python -m MODULE ARGS...` from the repository root, its output in `folder/run.log`."""

    module: str
    args: list[str]
    folder: Path
    process: subprocess.Popen | None = field(default=None, init=False)

    @property
    def log(self) -> Path:
        return self.folder / "run.log"

    def start(self, repo: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                [sys.executable, "-m", self.module, *self.args], cwd=repo, env=env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_lowest_priority,
            )

    def wait(self, timeout_s: float) -> None:
        """Until the run ends; a failed or overdue run fails the test that needs it, with its log's tail."""
        if self.process is None:
            raise RuntimeError(f"background run {self.module} was never started")
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._kill()
            raise AssertionError(
                f"python -m {self.module} still running after {timeout_s:.0f} s\n{self._tail()}") from None
        if code != 0:
            raise AssertionError(f"python -m {self.module} exited with code {code}\n{self._tail()}")

    def stop(self) -> None:
        """Kill the run if it still runs and remove its folder."""
        self._kill()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else "(no log)"
        return f"--- last lines of {self.log} ---\n{text[-LOG_TAIL:]}"
