"""Long CLI runs that train in child processes while the rest of the session runs.

Most slow tests wait (Ray and vLLM start-up, the fault drills' deadlines) and leave a core idle, while an SFT
run is CPU-bound for many minutes. tests/conftest.py queues the runs a session needs when collection ends
(one after another, each as soon as the previous one ends, and all at once from the moment a test waits for
one) and orders the tests that need them last, so the runs train on what the other tests leave.

A run's processes get the idle scheduling class (SCHED_IDLE: the CPU only when nothing else wants it), so the
tests in front keep their speed, Ray's workers included (Ray runs them at nice 15, below any merely niced
run), and one torch thread each: two threads of one process stall each other whenever another process takes
one of their cores, because every parallel region ends in a barrier that waits for the slower thread
(measured on 2 cores with one core busy: a demo SFT step took 11.3 s niced on two threads, 1.4 s niced on one
thread, 0.84 s alone on two). Tests whose deadlines time process teardown under a real scheduler (marker
`slurm`) run with the queue paused. A run's weights do not depend on how fast it goes; they do on the thread
count (the order of float sums)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
    started: threading.Event = field(default_factory=threading.Event, init=False)

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
                start_new_session=True,  # its own process group: a kill or a pause reaches all of it
            )
        self.started.set()

    def wait(self, timeout_s: float) -> None:
        """Until the run ends; a failed or overdue run fails the test that needs it, with its log's tail."""
        deadline = time.monotonic() + timeout_s
        if not self.started.wait(timeout_s) or self.process is None:
            raise AssertionError(f"python -m {self.module} did not start within {timeout_s:.0f} s")
        try:
            code = self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
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
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else "(no log)"
        return f"--- last lines of {self.log} ---\n{text[-LOG_TAIL:]}"


class BackgroundQueue:
    """Runs started one after another on a daemon thread, each when the previous one has ended, or all at once
    from the moment the foreground waits for one (`foreground_waits`): then no test runs, each run has a core of
    its own, and the suite's tail is the longest remaining run rather than their sum."""

    def __init__(self, runs: dict[str, BackgroundRun], repo: Path) -> None:
        self.runs = runs  # by name, in the order they run
        self._lock = threading.Lock()  # a run is started, or the queue stopped, never both at once
        self._stopped = False
        self._foreground_waits = threading.Event()
        self._thread = threading.Thread(target=self._run_all, args=(repo,), name="background-runs", daemon=True)
        self._thread.start()

    def _run_all(self, repo: Path) -> None:
        for run in self.runs.values():
            with self._lock:
                if self._stopped:
                    return
                run.start(repo)
            assert run.process is not None
            while run.process.poll() is None and not self._foreground_waits.wait(timeout=1.0):
                pass

    def foreground_waits(self) -> None:
        """The tests left all need a background run: start the queued runs now, beside the running one."""
        self._foreground_waits.set()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The running run stopped (SIGSTOP to its process group) and none started until the block ends."""
        with self._lock:
            running = [run for run in self.runs.values() if run.process is not None and run.process.poll() is None]
            for run in running:
                os.killpg(run.process.pid, signal.SIGSTOP)
            try:
                yield
            finally:
                for run in running:
                    os.killpg(run.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        for run in self.runs.values():
            run.stop()
