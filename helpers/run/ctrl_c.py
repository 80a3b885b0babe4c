"""Ctrl-C (SIGINT) during a run: taken where it is safe, not wherever the main thread happens to be.

Python's own handling raises KeyboardInterrupt at whatever line the main thread runs. Raised
inside importlib's bookkeeping of a module lock (the report's renderer imports nbconvert in a
thread of its own while the stages run), it was swallowed ("Exception ignored in ...
_get_module_lock") and left that lock held: the run went on as if nothing had been pressed,
then hung for good at the report, holding L1's lock. So the runner's handler raises nothing:

- the first Ctrl-C is noted, and every process of the run (its notebook kernels and what they
  started: ``NESTED_NVME_OWNER``) is stopped at once and again every 0.2 s until the run ends,
  so nothing more acts on L1; the stage's papermill call then ends (its kernel died) and the
  runner records the stage as interrupted, runs no other, and writes the summary and report;
- a second Ctrl-C exits at once (the stage stays 'running' in summary.json: the next run
  records it as killed and resumes).
"""
from __future__ import annotations

import os
import signal
import threading
import time

from ..runlock import owned_processes, stop_processes

REAP_EVERY = 0.2  # seconds between two sweeps for the run's processes after Ctrl-C


class CtrlC:
    """The run's SIGINT handler while it is entered (``with CtrlC(owner) as ctrl_c``)."""

    def __init__(self, owner: str):
        self.owner = owner  # the lock's owner: NESTED_NVME_OWNER of the run's processes
        self.requested: float | None = None  # time.monotonic() of the first Ctrl-C
        self._done = threading.Event()
        self._reaper: threading.Thread | None = None
        self._before = None

    def __enter__(self) -> CtrlC:
        # the reaper thread starts here, not in the handler: a handler may run while the main
        # thread holds threading's own locks, and must take none itself
        self._reaper = threading.Thread(target=self._reap, name="ctrl-c-reaper", daemon=True)
        self._reaper.start()
        self._before = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._before)
        self._done.set()
        self._reaper.join(timeout=5)

    def _on_sigint(self, signum, frame) -> None:
        if self.requested is not None:
            stop_processes(owned_processes(self.owner), grace=0)
            _say("\nsecond Ctrl-C: stopped at once. summary.json still shows the stage as running: "
                 "the next run records it as killed and resumes it\n")
            os._exit(130)
        self.requested = time.monotonic()  # an assignment: no lock taken, nothing raised
        _say("\nCtrl-C: stopping the run (its kernels now; the summary and report are still written). "
             "Ctrl-C again stops at once\n")

    def _reap(self) -> None:
        while not self._done.is_set():
            if self.requested is not None:
                stop_processes(owned_processes(self.owner), grace=0)
                self._done.wait(REAP_EVERY)
            else:
                self._done.wait(0.1)

    def note(self) -> None:
        """An interruption the runner learnt of otherwise (a kernel's own KeyboardInterrupt)."""
        if self.requested is None:
            self.requested = time.monotonic()


def _say(text: str) -> None:
    """Straight to stderr's file descriptor: print() takes the stream's lock, which the
    interrupted main thread may hold."""
    try:
        os.write(2, text.encode())
    except OSError:
        pass
