"""tests/background.py's queue: one run after another, then all at once once the foreground waits."""

from __future__ import annotations

import time
from pathlib import Path

from tests.background import BackgroundQueue, BackgroundRun

REPO = Path(__file__).resolve().parents[2]


def _sleeper(folder: Path, seconds: float) -> BackgroundRun:
    return BackgroundRun("timeit", ["-n", "1", "-r", "1", f"import time; time.sleep({seconds})"], folder)


def _until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_runs_follow_each_other(tmp_path):
    first, second = _sleeper(tmp_path / "a", 1.0), _sleeper(tmp_path / "b", 0.1)
    queue = BackgroundQueue({"first": first, "second": second}, REPO)
    try:
        assert _until(lambda: first.process is not None)
        assert second.process is None  # the first still runs
        second.wait(timeout_s=20)  # started after the first ended, and succeeded
        assert first.process.returncode == 0
        assert (tmp_path / "b" / "run.log").stat().st_mtime >= (tmp_path / "a" / "run.log").stat().st_mtime
    finally:
        queue.stop()


def test_foreground_waiting_starts_the_queued_runs_at_once(tmp_path):
    first, second = _sleeper(tmp_path / "a", 60), _sleeper(tmp_path / "b", 60)
    queue = BackgroundQueue({"first": first, "second": second}, REPO)
    try:
        assert _until(lambda: first.process is not None)
        time.sleep(1.5)  # the queue's thread checks the first run more than once
        assert second.process is None
        queue.foreground_waits()
        assert _until(lambda: second.process is not None, timeout_s=5)
        assert first.process.poll() is None and second.process.poll() is None  # side by side
    finally:
        queue.stop()
    assert first.process.poll() is not None and second.process.poll() is not None
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # stop removes the folders
