"""Progress of a long stage (GRPO and SFT steps, evaluation rows, sweep runs): a tqdm bar with its ETA on a
terminal, plain lines where the output is a log.

A bar redraws itself with carriage returns; a log file, `ray job logs` or CI keep every redraw, glued to the
next printed line. Where stdout or stderr is not a terminal, a `Progress` prints no bar: the stage's own lines
(`write`) end with the ETA, and the first update after `every_s` seconds without a line prints a status line
(done/total, elapsed, ETA, the latest metrics)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

PLAIN_EVERY_S = 30.0  # in a log: a status line at the first update after this long without a line


def say(line: str) -> None:
    """Print and flush: a log behind a pipe shows the line now, not when a buffer fills."""
    print(line, flush=True)


def on_terminal() -> bool:
    """Both streams are terminals: the bar (stderr) and the lines between its redraws (stdout) are seen live."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def quiet_library_bars() -> None:
    """In a log, turn off the bars transformers and huggingface_hub draw while loading and writing weights
    (`Writing model shards: 0%|...`): their redraws would be glued into the log as ours would. Actors never
    draw them (`Platform.actor_env`)."""
    if not on_terminal():
        from transformers.utils import logging

        logging.disable_progress_bar()


def clock(seconds: float) -> str:
    """'MM:SS', or 'H:MM:SS' from an hour on."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """`total` units of work named `desc`, `initial` of them done before this start (a resumed run): the rate
    and so the ETA count only the units done since. Lines go to `log`; `terminal` None: `on_terminal()`."""

    def __init__(self, total: int, desc: str, initial: int = 0, log: Callable[[str], Any] = say,
                 terminal: bool | None = None, every_s: float = PLAIN_EVERY_S,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.done, self.first = total, desc, initial, initial
        self.log, self.every_s, self.now = log, every_s, now
        self.metrics: dict[str, str] = {}
        self.started = self.last_line = now()
        self.bar = None
        if on_terminal() if terminal is None else terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def eta(self) -> float | None:
        """Seconds left at the rate since this start; None before the first unit."""
        if self.done <= self.first:
            return None
        return (self.now() - self.started) / (self.done - self.first) * max(self.total - self.done, 0)

    def eta_text(self) -> str:
        eta = self.eta()
        return "ETA " + ("--:--" if eta is None else clock(eta))

    def status(self) -> str:
        """'grpo 28/30 (93%) 02:23 elapsed, ETA 00:09 | reward 0.512'."""
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        elapsed = clock(self.now() - self.started)
        line = f"{self.desc} {self.done}/{self.total}{share} {elapsed} elapsed, {self.eta_text()}"
        shown = " ".join(f"{k} {v}" for k, v in self.metrics.items())
        return f"{line} | {shown}" if shown else line

    def update(self, n: int = 1, **metrics: float | str) -> None:
        """`n` more units done; `metrics` are shown beside the count (floats with 3 decimals)."""
        self.done += n
        self.metrics |= {k: f"{v:.3f}" if isinstance(v, float) else str(v) for k, v in metrics.items()}
        if self.bar is not None:
            self.bar.set_postfix(self.metrics, refresh=False)
            self.bar.update(n)
        elif self.now() - self.last_line >= self.every_s:
            self._print(self.status())

    def write(self, line: str) -> None:
        """One of the stage's own lines: above the bar on a terminal, else ending with the ETA."""
        if self.bar is not None:
            with self.bar.external_write_mode():
                self.log(line)
        else:
            self._print(f"{line}  {self.eta_text()}")

    def close(self) -> None:
        """Remove the bar; in a log, one last line with the count and the time taken."""
        if self.bar is not None:
            self.bar.close()
        else:
            self._print(f"{self.desc} {self.done}/{self.total} in {clock(self.now() - self.started)}")

    def _print(self, line: str) -> None:
        self.log(line)
        self.last_line = self.now()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
