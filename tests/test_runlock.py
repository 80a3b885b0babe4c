"""The run lock: one run per L1, its holder named, a dead holder's lock taken over
and the processes it left behind stopped."""
import os
import subprocess
import sys
import time

import pytest

from helpers.errors import RunbookError
from helpers.runlock import L1Lock, OWNER_ENV, alive, owned_processes


def test_a_held_lock_refuses_with_the_holders_run_and_pid(tmp_path):
    first = L1Lock("l1x", "run-a", "/p/lab.yaml", lock_dir=tmp_path).acquire()
    # a second process (flock locks belong to open files: another process, as in real use)
    code = ("from helpers.runlock import L1Lock\nfrom helpers.errors import RunbookError\n"
            f"try:\n  L1Lock('l1x', 'run-b', 'x', lock_dir=__import__('pathlib').Path({str(tmp_path)!r})).acquire()\n"
            "except RunbookError as e:\n  print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert f"another run is using L1 'l1x': run run-a (pid {os.getpid()}, started " in out
    assert f"kill -INT {os.getpid()}" in out
    first.release()
    assert L1Lock("l1x", "run-c", "x", lock_dir=tmp_path).acquire().notes == []  # released cleanly


def test_a_dead_holders_lock_is_taken_over_and_its_processes_stopped(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / "l1y.lock").write_text(f'{{"pid": {pid}, "run_id": "old-run"}}')
    orphan = subprocess.Popen(["sleep", "60"], env={**os.environ, OWNER_ENV: f"l1y:{pid}"})
    _wait_until_exec(orphan.pid, f"l1y:{pid}")
    try:
        lock = L1Lock("l1y", "new-run", "x", lock_dir=tmp_path).acquire()
        assert lock.notes[0] == f"took over the lock of run old-run (pid {pid}, no longer running)"
        assert f"pids {orphan.pid}" in lock.notes[1]
        orphan.wait(timeout=10)
        assert not alive(orphan.pid)
        assert os.environ[OWNER_ENV] == f"l1y:{os.getpid()}"
        lock.release()
        assert OWNER_ENV not in os.environ
    finally:
        orphan.kill()


def _wait_until_exec(pid: int, owner: str, timeout: float = 10) -> None:
    """Until the child has exec'd with its own environment (before that, /proc shows the parent's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if f"{OWNER_ENV}={owner}".encode() in open(f"/proc/{pid}/environ", "rb").read():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} never showed {OWNER_ENV}={owner}")


def test_owned_processes_finds_only_that_owner(tmp_path):
    mine = subprocess.Popen(["sleep", "30"], env={**os.environ, OWNER_ENV: "a:1"})
    other = subprocess.Popen(["sleep", "30"], env={**os.environ, OWNER_ENV: "a:2"})
    try:
        _wait_until_exec(mine.pid, "a:1")
        _wait_until_exec(other.pid, "a:2")
        assert owned_processes("a:1") == [mine.pid]
    finally:
        mine.kill(), other.kill()
