"""What the driver does about faults (docs/reliability.md): how many worker replacements a run may spend,
how many non-finite updates in a row it tolerates, and the chaos drill that kills workers on purpose.

Policy only: the pools replace workers (`restart`), `actors.remote.gather` notices the death or the hang.
"""

from __future__ import annotations

import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from rl.core.config import ChaosConfig, ReliabilityConfig

__all__ = ["Chaos", "NonFiniteGuard", "RestartBudget", "RunStopped"]


class RunStopped(RuntimeError):
    """A fault the run cannot absorb: the message says which and what to do."""


class RestartBudget:
    """At most `max_restarts` worker replacements within any `restart_window_s` seconds: a worker that
    keeps dying (bad node, OOM at every batch) ends the run with a message instead of looping forever."""

    def __init__(self, cfg: ReliabilityConfig, clock: Callable[[], float] = time.monotonic):
        self.max_restarts, self.window_s, self.clock = cfg.max_restarts, cfg.restart_window_s, clock
        self.recent: deque[float] = deque()
        self.total = 0  # for the log and TensorBoard (faults/restarts)

    def charge(self, who: str, error: BaseException) -> None:
        """Account for replacing `who`; raises `RunStopped` when the budget is spent."""
        now = self.clock()
        while self.recent and now - self.recent[0] > self.window_s:
            self.recent.popleft()
        if len(self.recent) >= self.max_restarts:
            raise RunStopped(f"{who} lost ({error}); {len(self.recent)} workers were already replaced within "
                             f"{self.window_s:.0f} s (reliability.max_restarts={self.max_restarts}): stopping. "
                             "Check that node's logs (OOM killer, hardware) before resuming.") from error
        self.recent.append(now)
        self.total += 1
        warnings.warn(f"replacing {who} (restart {self.total}): {error}", stacklevel=2)


class NonFiniteGuard:
    """Counts updates skipped for a NaN/inf (in rewards, advantages, loss or gradients); `max_in_row`
    skipped in a row stop the run (something upstream is broken, not a one-off)."""

    def __init__(self, max_in_row: int):
        self.max_in_row, self.in_row, self.total = max_in_row, 0, 0

    def record(self, step: int, reason: str | None) -> None:
        """`reason`: why step `step`'s update was skipped, or None when it went through."""
        if reason is None:
            self.in_row = 0
            return
        self.in_row += 1
        self.total += 1
        warnings.warn(f"step {step}: update skipped: {reason}", stacklevel=2)
        if self.in_row >= self.max_in_row:
            raise RunStopped(f"{self.in_row} updates in a row skipped for non-finite values (last, step {step}: "
                             f"{reason}; reliability.max_nonfinite_steps={self.max_in_row}): stopping")


def nonfinite(name: str, values: Any) -> str | None:
    """A reason naming `name` when `values` hold a NaN or inf, else None."""
    array = np.asarray(values, dtype=np.float64)
    bad = int(np.count_nonzero(~np.isfinite(array)))
    return f"{bad} non-finite {name} of {array.size}" if bad else None


class Chaos:
    """The fault drill: every `kill_every` steps, kill one worker chosen by (seed, step) from
    `targets`, at a moment drawn in the step's first second, while its calls are in flight. Killing
    is `ray.kill`: Ray force-kills the actor's process wherever it runs, as a node loss would."""

    def __init__(self, cfg: ChaosConfig):
        self.cfg = cfg
        self.kills: list[tuple[int, str]] = []  # (step, victim name): what the drill did, for the report
        self._timer: threading.Timer | None = None

    def pick(self, step: int, workers: dict[str, list[tuple[str, Any]]]) -> tuple[str, Any, float] | None:
        """The kill of step `step` (1-based), if any: (victim name, handle, delay in s), drawn from
        (seed, step) among `workers` (target -> [(name, handle)])."""
        if not self.cfg.kill_every or step % self.cfg.kill_every:
            return None
        rng = np.random.default_rng([self.cfg.seed, step])
        target = self.cfg.targets[int(rng.integers(len(self.cfg.targets)))]
        name, handle = workers[target][int(rng.integers(len(workers[target])))]
        return name, handle, float(rng.uniform(0.0, 1.0))

    def start(self, step: int, workers: dict[str, list[tuple[str, Any]]]) -> None:
        """At the start of step `step`: schedule its kill, if any."""
        kill = self.pick(step, workers)
        if kill is not None:
            name, handle, delay = kill
            self._timer = threading.Timer(delay, self._kill, (step, name, handle))
            self._timer.start()

    def finish(self) -> None:
        """End of the step's data phase: the scheduled kill has landed (the next calls find it)."""
        if self._timer is not None:
            self._timer.join()
            self._timer = None

    def _kill(self, step: int, name: str, handle: Any) -> None:
        import ray

        ray.kill(handle, no_restart=True)
        self.kills.append((step, name))
        print(f"chaos: killed {name} at step {step}", flush=True)
