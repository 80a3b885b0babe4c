"""Stage 05 inside L2: the controller, `nvme list`, then (with consent)
mkfs.xfs, mount and df, as the seed does after "登录L2-kvm"."""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from ..errors import RunbookError
from ..guest import Guest
from . import Change, did, no_change

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


def controller(guest: Guest) -> tuple[Controller, str]:
    """The NVMe controller L2 sees, and the full lspci output."""
    out = guest.run("lspci -Dnn", check=True).out
    found = parse_lspci(out)
    if not found:
        raise RunbookError(f"{guest.name} sees no NVMe controller in lspci -Dnn",
                           hint="check the hostdev in L2's definition (virsh dumpxml in L1) and L2's console log")
    return found[0], out


def namespaces(guest: Guest) -> tuple[list[dict], str]:
    """`nvme list -o json`'s devices and the human table."""
    r = guest.run("nvme list -o json", check=True)
    devs = json.loads(r.out or "{}").get("Devices", [])
    if not devs:
        raise RunbookError(f"`nvme list` in {guest.name} shows no namespace",
                           hint="the nvme driver did not bind in L2: read `dmesg | grep nvme` there")
    return devs, guest.run("nvme list").out


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


def make_xfs(guest: Guest, device: str, mount_point: str, consent: bool, force: bool) -> tuple[Change, str]:
    """mkfs.xfs on ``device`` only with consent; refuse an existing signature unless forced."""
    what = f"mkfs.xfs {device}"
    m = mounted_at(guest, mount_point)
    if m and m[0] == device and m[1] == "xfs":
        return no_change(what, f"already XFS and mounted at {mount_point}"), ""
    if not consent:
        raise RunbookError(f"mkfs.xfs would destroy the data on {device} in {guest.name}, and the parameters do not consent",
                           hint="set verify.mkfs: true to allow it (only on a disk whose data you do not need)")
    sig = signature(guest, device)
    if sig and not force:
        raise RunbookError(f"{device} in {guest.name} already carries a {sig} signature; refusing to overwrite it",
                           hint="set verify.force_wipe: true if its data may be destroyed")
    out = guest.run(["mkfs.xfs", "-f", device], timeout=600, check=True).out
    return did(what, f"formatted (was: {sig or 'no signature'})"), out


def mount(guest: Guest, device: str, mount_point: str) -> Change:
    what = f"mount {device} {mount_point}"
    m = mounted_at(guest, mount_point)
    if m and m[0] == device:
        return no_change(what, "already mounted")
    if m:
        raise RunbookError(f"{mount_point} in {guest.name} already has {m[0]} mounted",
                           hint="choose another verify.mount_point")
    guest.run(f"mkdir -p {shlex.quote(mount_point)} && mount {shlex.quote(device)} {shlex.quote(mount_point)}",
              check=True)
    return did(what, "mounted")


def df(guest: Guest, mount_point: str) -> tuple[dict, str]:
    """`df -Th` of the mount point, as the seed shows it, and its fields."""
    out = guest.run(["df", "-Th", mount_point], check=True).out
    lines = out.strip().splitlines()
    cols = lines[-1].split()
    return {"source": cols[0], "type": cols[1], "size": cols[2], "mounted_on": cols[-1]}, out
