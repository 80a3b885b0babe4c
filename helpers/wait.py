"""Waiting for something slow (a boot, a reboot, fio) with progress and a timeout."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

from .errors import RunbookError

T = TypeVar("T")
INTERACTIVE = False  # set by helpers.nb.stage(): a live bar in Jupyter, lines in batch runs
# every finished wait_for, in order: (what, seconds); Stage.apply reads the ones of its step
WAITED: list[tuple[str, float]] = []


class Progress:
    """A bar in interactive runs (tqdm), a line every ``every`` seconds in batch runs."""

    def __init__(self, what: str, total: float, every: float = 10):
        self.what, self.total, self.every = what, total, every
        self.t0 = time.monotonic()
        self.last = -every
        self.bar = None
        if INTERACTIVE:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=int(total), desc=what, unit="s")
        else:
            print(f"{what}: waiting up to {total:.0f} s", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def tick(self, note: str = "") -> None:
        e = self.elapsed()
        if self.bar is not None:
            self.bar.n = min(int(e), int(self.total))
            if note:
                self.bar.set_postfix_str(note)
            self.bar.refresh()
        elif e - self.last >= self.every:
            self.last = e
            print(f"  {self.what}: {e:.0f} s{' - ' + note if note else ''}", flush=True)

    def done(self, message: str) -> None:
        if self.bar is not None:
            self.bar.close()
        print(f"{self.what}: {message} after {self.elapsed():.1f} s", flush=True)


def tail(path, lines: int = 25) -> str:
    """The last lines of a log file (a guest's serial console), or why not.
    ``path`` may also be a function that returns the log's text (a log inside a guest)."""
    if callable(path):
        try:
            return "\n".join(path().splitlines()[-lines:]) or "(empty)"
        except Exception as e:  # the guest holding the log may be gone too
            return f"(cannot read the log: {e})"
    if not path:
        return "(no log file)"
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"(cannot read {path}: {e.strerror})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def wait_for(check: Callable[[], T], what: str, timeout: float, interval: float = 2,
             log: str | Path | None = None, hint: str = "", note: Callable[[], str] | None = None) -> T:
    """Call ``check`` until it returns something truthy; raise RunbookError on timeout,
    showing the last lines of ``log`` (a serial console) and ``hint``."""
    p = Progress(what, timeout)
    while True:
        value = check()
        if value:
            p.done("ready")
            WAITED.append((what, round(p.elapsed(), 2)))
            return value
        if p.elapsed() > timeout:
            WAITED.append((what, round(p.elapsed(), 2)))
            if p.bar is not None:
                p.bar.close()
            name = (log.__doc__ or "the console log") if callable(log) else log
            print(f"--- last lines of {name} ---\n{tail(log)}", file=sys.stderr, flush=True)
            raise RunbookError(f"{what}: not ready after {timeout:.0f} s", hint=hint or
                               f"read the console log {log}; raise the timeout in the parameters if the machine is slow")
        p.tick(note() if note else "")
        time.sleep(interval)
