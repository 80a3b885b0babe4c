"""Storage facts, as a guest (L2 in stage 05) sees them: NVMe controllers in lspci,
`nvme list`'s namespaces, a device's signature, what is mounted where, and df."""
from __future__ import annotations

import json
import shlex
import re
from dataclasses import dataclass

from helpers.guest import Guest

LSPCI_RE = re.compile(r"^(?P<bdf>\S+) (?P<desc>.*?) \[(?P<cls>[0-9a-f]{4})\]: (?P<name>.*) \[(?P<ids>[0-9a-f]{4}:[0-9a-f]{4})\]")


@dataclass
class Controller:
    bdf: str
    pci_class: str
    ids: str
    line: str


def parse_lspci(out: str) -> list[Controller]:
    """NVMe controllers (class 0108) in ``lspci -Dnn`` output."""
    found = []
    for line in out.splitlines():
        m = LSPCI_RE.match(line)
        if m and m.group("cls") == "0108":
            found.append(Controller(m.group("bdf"), m.group("cls"), m.group("ids"), line.strip()))
    return found


def nvme_controllers(guest: Guest) -> tuple[list[Controller], str]:
    """The NVMe controllers ``guest`` sees, and the full lspci output."""
    out = guest.run("lspci -Dnn", check=True).out
    return parse_lspci(out), out


def namespaces(guest: Guest) -> tuple[list[dict], str]:
    """`nvme list -o json`'s devices and the human table."""
    r = guest.run("nvme list -o json", check=True)
    devs = json.loads(r.out or "{}").get("Devices", [])
    return devs, (guest.run("nvme list").out if devs else "")


def signature(guest: Guest, device: str) -> str | None:
    """The filesystem or partition-table signature on ``device`` (blkid), if any."""
    r = guest.run(["blkid", "-p", "-o", "export", device])
    if r.rc == 2 or not r.out.strip():
        return None
    fields = dict(line.split("=", 1) for line in r.out.split() if "=" in line)
    return fields.get("TYPE") or fields.get("PTTYPE") or "unknown"


def mounted_at(guest: Guest, mount_point: str) -> tuple[str, str] | None:
    """(source, fstype) mounted at ``mount_point``, or None."""
    r = guest.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", mount_point])
    parts = r.out.split()
    return (parts[0], parts[1]) if r.ok and len(parts) >= 2 else None


def df(guest: Guest, mount_point: str) -> tuple[dict, str]:
    """`df -Th` of the mount point, as the seed shows it, and its fields."""
    out = guest.run(["df", "-Th", mount_point], check=True).out
    lines = out.strip().splitlines()
    cols = lines[-1].split()
    return {"source": cols[0], "type": cols[1], "size": cols[2], "mounted_on": cols[-1]}, out


def mounts_of(guest: Guest, device: str) -> list[str]:
    """Where ``device`` or a partition of it is mounted (lsblk), empty when nowhere."""
    r = guest.run(["lsblk", "-nr", "-o", "MOUNTPOINT", device])
    return [m for m in r.out.split() if m] if r.ok else []


def virtio_by_serial(guest: Guest, serial: str) -> str | None:
    """The virtio-blk disk whose serial is ``serial`` (/sys/block/vdX/serial), as /dev/vdX; None if none."""
    r = guest.run(f"grep -lx -- {shlex.quote(serial)} /sys/block/vd*/serial 2>/dev/null")
    found = [line.split("/")[3] for line in r.out.split() if line.startswith("/sys/block/")]
    return f"/dev/{found[0]}" if len(found) == 1 else None
