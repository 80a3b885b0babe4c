"""Make sure libvirtd and virtlogd run, started directly when systemd is not PID 1."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

DAEMONS = ("virtlogd", "libvirtd")


def running(name: str) -> bool:
    """Is a process of that name running?"""
    return subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0


def stale(name: str) -> bool:
    """Does a running daemon of that name run a binary that has since been
    replaced on disk (an upgrade, e.g. QEMU and libvirt from backports)?"""
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True).stdout.split()
    for pid in out:
        try:
            if os.readlink(f"/proc/{pid}/exe").endswith(" (deleted)"):
                return True
        except OSError:
            continue
    return False


def systemd_is_init() -> bool:
    try:
        return os.readlink("/proc/1/exe").endswith("systemd")
    except OSError:
        return False


def libvirt_answers(uri: str = "qemu:///system") -> bool:
    return subprocess.run(["virsh", "-c", uri, "version"], capture_output=True, timeout=60).returncode == 0


def ensure_daemons(uri: str = "qemu:///system", timeout: float = 30, say=print) -> list[str]:
    """Start what is not running; return what was started. Raises RuntimeError
    with what to do when libvirt still does not answer."""
    if not shutil.which("libvirtd"):
        raise RuntimeError("libvirtd is not installed: run `make setup` (installs libvirt-daemon-system)")
    started = []
    for name in DAEMONS:
        if running(name) and stale(name):
            say(f"[setup] {name} runs a binary replaced since it started (an upgrade): restarting it")
            if systemd_is_init():
                subprocess.run(["systemctl", "restart", name], check=True)
                started.append(name)
                continue
            subprocess.run(["pkill", "-x", name])
            for _ in range(50):
                if not running(name):
                    break
                time.sleep(0.2)
        if running(name):
            continue
        cmd = ["systemctl", "start", name] if systemd_is_init() else [name, "-d"]
        subprocess.run(cmd, check=True)
        started.append(name)
    deadline = time.monotonic() + timeout
    while not libvirt_answers(uri):
        if time.monotonic() > deadline:
            raise RuntimeError(f"libvirtd does not answer at {uri} after {timeout:.0f} s; "
                               "look at `virsh -c {uri} version` and the libvirtd log")
        time.sleep(0.5)
    say(f"[setup] libvirt daemons: {'started ' + ', '.join(started) if started else 'already running, no change'}")
    return started


if __name__ == "__main__":
    try:
        ensure_daemons()
    except (RuntimeError, subprocess.CalledProcessError) as e:
        print(f"[setup] {e}", file=sys.stderr)
        sys.exit(1)
