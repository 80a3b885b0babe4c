"""One run at a time per L1: a lock that names the run holding it.

Two runs driving the same L1 (say a `make run` in one terminal and a teardown in
another) would reboot, pass through and destroy under each other's feet. The
runner takes ``/run/nested-nvme/<l1 name>.lock`` before its first stage: an
exclusive ``flock`` (the kernel drops it when its holder dies, however it dies)
on a file that says who holds it. A second run is refused at once with the
holder's run id and pid; a lock whose holder is gone is taken over, saying so.

The stage notebooks run in Jupyter kernels, child processes of the runner, which
outlive a runner killed with SIGKILL. They carry ``NESTED_NVME_OWNER`` in their
environment, so whoever takes the lock over can stop them before they act on L1
again.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .errors import RunbookError

LOCK_DIR = Path("/run/nested-nvme")  # NESTED_NVME_LOCK_DIR overrides it (the runner's own tests)
OWNER_ENV = "NESTED_NVME_OWNER"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owned_processes(owner: str, proc: Path = Path("/proc")) -> list[int]:
    """Pids whose environment has NESTED_NVME_OWNER=<owner> (the kernels of one run)."""
    needle = f"{OWNER_ENV}={owner}".encode()
    found = []
    for d in proc.iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in env:
            found.append(int(d.name))
    return found


def stop_processes(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is left after ``grace`` seconds."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class L1Lock:
    """The lock for one L1 (by domain name), held by one run."""

    l1_name: str
    run_id: str
    params: str
    lock_dir: Path = field(default_factory=lambda: Path(os.environ.get("NESTED_NVME_LOCK_DIR", LOCK_DIR)))
    notes: list[str] = field(default_factory=list)
    _fd: int | None = None

    @property
    def path(self) -> Path:
        return self.lock_dir / f"{self.l1_name}.lock"

    @property
    def owner(self) -> str:
        return f"{self.l1_name}:{os.getpid()}"

    def holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "L1Lock":
        """Take the lock or raise RunbookError naming its holder. Notes what was taken over."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = self.holder()
            raise RunbookError(
                f"another run is using L1 '{self.l1_name}': run {h.get('run_id', '?')} (pid {h.get('pid', '?')}, "
                f"started {h.get('started', '?')}, parameters {h.get('params', '?')})",
                hint=f"wait for it to finish, or stop it with `kill -INT {h.get('pid', 'PID')}` (it stops at once "
                     "and says how to resume); the lock is " + str(self.path)) from None
        self._fd = fd
        left = self.holder()
        pid = left.get("pid")
        if isinstance(pid, int) and pid != os.getpid():
            self.notes.append(f"took over the lock of run {left.get('run_id', '?')} (pid {pid}, no longer running)")
            kernels = owned_processes(f"{self.l1_name}:{pid}")
            if kernels:
                stop_processes(kernels)
                self.notes.append(f"stopped {len(kernels)} process(es) that run left behind "
                                  f"(its notebook kernels: pids {', '.join(map(str, kernels))})")
        self._write()
        os.environ[OWNER_ENV] = self.owner  # inherited by the kernels papermill starts
        return self

    def _write(self) -> None:
        record = {"pid": os.getpid(), "run_id": self.run_id, "params": self.params,
                  "started": datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(record).encode(), 0)

    def name_run(self, run_id: str) -> None:
        """The run's folder name, once it is known."""
        self.run_id = run_id
        self._write()

    def release(self) -> None:
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # an empty lock file: released cleanly, nothing to take over
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        os.environ.pop(OWNER_ENV, None)

    def __enter__(self) -> "L1Lock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
