"""System facts: memory, free disk at a path, the distribution (os-release), the kernel release."""
from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass

from helpers.guest import Guest


@dataclass
class Memory:
    total_mib: int
    available_mib: int


OSRELEASE = "/proc/sys/kernel/osrelease"
READS = ("/proc/meminfo", "/etc/os-release", "/usr/lib/os-release", OSRELEASE)


def memory(guest: Guest) -> Memory:
    """MemTotal and MemAvailable from /proc/meminfo, in MiB (0 when unreadable)."""
    text = guest.read_text("/proc/meminfo") or ""

    def kib(key: str) -> int:
        m = re.search(rf"^{key}:\s+(\d+)\s*kB", text, re.M)
        return int(m.group(1)) if m else 0
    return Memory(total_mib=kib("MemTotal") // 1024,
                  available_mib=(kib("MemAvailable") or kib("MemFree")) // 1024)


@dataclass
class Disk:
    """Free space where ``path`` would go: df on its nearest existing parent."""

    path: str
    checked: str | None = None     # the existing folder df looked at
    avail_bytes: int | None = None
    mount: str | None = None
    error: str = ""
    exists: bool = False           # the path itself exists already
    fstype: str = ""               # the filesystem's type (ext4, xfs, vfat, ...)


def df_command(path: str) -> str:
    return f"df -B1 --output=fstype,avail,target {shlex.quote(path)}"


def free_disk(guest: Guest, path: str) -> Disk:
    path = posixpath.normpath(str(path))
    here = path
    while not guest.exists(here) and here != "/":
        here = posixpath.dirname(here)
    r = guest.run(df_command(here), timeout=60)
    rows = r.out.strip().splitlines()[1:] if r.ok else []
    if not rows:
        return Disk(path, here, error=(r.err or r.out).strip() or f"df exit code {r.rc}",
                    exists=here == path)
    fstype, avail, mount = rows[-1].split(None, 2)
    return Disk(path, here, int(avail), mount.strip(), exists=here == path, fstype=fstype)


@dataclass
class OSRelease:
    id: str = ""
    id_like: str = ""
    version_id: str = ""
    pretty_name: str = ""

    def like(self, *ids: str) -> bool:
        """Is this distribution one of ``ids`` or derived from one?"""
        return bool({self.id, *self.id_like.split()} & set(ids))


def os_release(guest: Guest) -> OSRelease:
    """ID, ID_LIKE, VERSION_ID and PRETTY_NAME from /etc/os-release (or /usr/lib/os-release)."""
    text = guest.read_text("/etc/os-release") or guest.read_text("/usr/lib/os-release") or ""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            try:
                value = " ".join(shlex.split(value))
            except ValueError:
                value = value.strip("\"'")
            values[key.strip()] = value
    return OSRelease(values.get("ID", ""), values.get("ID_LIKE", ""),
                     values.get("VERSION_ID", ""), values.get("PRETTY_NAME", ""))


def kernel_release(guest: Guest) -> str | None:
    """The running kernel's release (what `uname -r` prints), or None when unreadable."""
    text = (guest.read_text(OSRELEASE) or "").strip()
    return text or None
