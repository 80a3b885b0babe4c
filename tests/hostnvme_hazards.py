"""Hazards made for real on a machine's NVMe, each undone on leaving: the namespace mounted,
a partition mounted, swap, a device-mapper linear target, a loop device, a process holding
it open. For lab tests that prove ``checks.passthrough.prove_free`` (and the stages built on
it) refuses each, naming it:

    with hostnvme_hazards.swap(l0, "0000:00:10.0") as h:
        desc, checks = prove_free(l0, h.bdf, role="l0")
        assert h.refused_in(checks)            # the check h.check failed, naming h.names

They write to the namespace (mkfs, mkswap, a partition table): each first proves the
device is the lab's emulated scratch NVMe (model 'QEMU NVMe Ctrl', the serial given,
1b36:0010) and refuses anything else. Tools they use, all in the lab's L1: mkfs.xfs,
mkswap/swapon, dmsetup, losetup, wipefs, partx, setsid. On leaving, every signature they
wrote is wiped, so the namespace is as empty as it was."""
from __future__ import annotations

import contextlib
import shlex
from dataclasses import dataclass

from helpers.checks import passthrough as pt
from helpers.facts import pci
from helpers.guest import Guest

LAB_MODEL, LAB_IDS = "QEMU NVMe Ctrl", "1b36:0010"
MOUNT_POINT = "/mnt/h23a-hazard"


@dataclass
class Hazard:
    """One hazard in place: the check that must fail and the words its refusal must hold."""

    what: str              # "the namespace mounted"
    bdf: str
    check: str             # pt.NOT_MOUNTED, ...
    names: list[str]       # e.g. ["nvme0n1 on /mnt/h23a-hazard"], ["sleep (pid 1234)"]

    def failure(self, checks) -> "pt.Check | None":
        return next((c for c in checks if c.name == self.check and c.verdict == "fail"), None)

    def refused_in(self, checks) -> bool:
        """The check failed and its words name the thing."""
        c = self.failure(checks)
        return c is not None and all(n in c.observed for n in self.names)

    def named_in(self, text: str) -> bool:
        """A refusal's message (a RunbookError, a stage's output) names the thing."""
        return all(n in text for n in self.names)


def _run(g: Guest, cmd: str, timeout: float = 120) -> str:
    return g.run(cmd, timeout=timeout, check=True).out


def lab_namespace(g: Guest, bdf: str, serial: str = "1234", *, root: str = "") -> str:
    """The namespace (nvme0n1) of the lab's scratch NVMe at ``bdf``; refuses any other device."""
    d = pci.describe(g, bdf, root=root)
    if d is None or d.pci.ids != LAB_IDS or d.model != LAB_MODEL or d.serial != serial or len(d.disks) != 1:
        raise RuntimeError(f"{bdf} on {g.name} is not the lab's scratch NVMe ({LAB_IDS}, {LAB_MODEL}, serial {serial}, "
                           f"one namespace): {d and (d.pci.ids, d.model, d.serial, d.disks)}; no hazard is made on it")
    return d.disks[0]


def _wipe(g: Guest, dev: str) -> None:
    g.run(f"wipefs -a -q {dev}; partx -d {dev} 2>/dev/null; udevadm settle 2>/dev/null; true")


@contextlib.contextmanager
def mounted(g: Guest, bdf: str, serial: str = "1234"):
    """An XFS on the namespace itself, mounted at /mnt/h23a-hazard."""
    ns = lab_namespace(g, bdf, serial)
    dev = f"/dev/{ns}"
    _run(g, f"mkfs.xfs -q -f {dev} && mkdir -p {MOUNT_POINT} && mount {dev} {MOUNT_POINT}")
    try:
        yield Hazard("the namespace mounted", bdf, pt.NOT_MOUNTED, [f"{ns} on {MOUNT_POINT} (xfs)"])
    finally:
        g.run(f"umount {MOUNT_POINT}; rmdir {MOUNT_POINT}")
        _wipe(g, dev)


def _mbr(sectors: int, start: int = 2048) -> str:
    """printf arguments for a DOS partition table with one Linux partition from ``start`` to the end."""
    def le32(n: int) -> bytes:
        return n.to_bytes(4, "little")
    entry = bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + le32(start) + le32(sectors - start)
    return "".join(f"\\{b:03o}" for b in entry)


@contextlib.contextmanager
def partition_mounted(g: Guest, bdf: str, serial: str = "1234"):
    """A DOS partition table with one partition (no sfdisk or parted in the lab's L1: written
    with printf and dd, read in with partx), an XFS on it, mounted at /mnt/h23a-hazard."""
    ns = lab_namespace(g, bdf, serial)
    dev, part = f"/dev/{ns}", f"/dev/{ns}p1"
    sectors = int(_run(g, f"cat /sys/class/block/{ns}/size").strip())
    _run(g, f"wipefs -a -q {dev} && "
            f"printf '{_mbr(sectors)}' | dd of={dev} bs=1 seek=446 conv=notrunc status=none && "
            f"printf '\\125\\252' | dd of={dev} bs=1 seek=510 conv=notrunc status=none && sync && "
            f"partx -a {dev} 2>/dev/null; udevadm settle; test -b {part} && "
            f"mkfs.xfs -q -f {part} && mkdir -p {MOUNT_POINT} && mount {part} {MOUNT_POINT}")
    try:
        yield Hazard("a partition mounted", bdf, pt.NOT_MOUNTED, [f"{ns}p1 on {MOUNT_POINT} (xfs)"])
    finally:
        g.run(f"umount {MOUNT_POINT}; rmdir {MOUNT_POINT}")
        g.run(f"wipefs -a -q {part}")
        _wipe(g, dev)


@contextlib.contextmanager
def swap(g: Guest, bdf: str, serial: str = "1234"):
    """The namespace as active swap."""
    ns = lab_namespace(g, bdf, serial)
    dev = f"/dev/{ns}"
    _run(g, f"mkswap -q {dev} >/dev/null && swapon {dev}")
    try:
        yield Hazard("the namespace as swap", bdf, pt.NOT_SWAP, [f"as swap: {ns}"])
    finally:
        g.run(f"swapoff {dev}")
        _wipe(g, dev)


@contextlib.contextmanager
def dm_linear(g: Guest, bdf: str, serial: str = "1234", name: str = "h23a-lin"):
    """A device-mapper linear target over the whole namespace."""
    ns = lab_namespace(g, bdf, serial)
    dev = f"/dev/{ns}"
    sectors = int(_run(g, f"cat /sys/class/block/{ns}/size").strip())
    _run(g, f"dmsetup create {name} --table {shlex.quote(f'0 {sectors} linear {dev} 0')}")
    try:
        yield Hazard("a device-mapper target", bdf, pt.NO_DM, [f"({name}), a device-mapper target, on {ns}"])
    finally:
        g.run(f"dmsetup remove {name}")


@contextlib.contextmanager
def loop(g: Guest, bdf: str, serial: str = "1234"):
    """A loop device backed by the namespace."""
    ns = lab_namespace(g, bdf, serial)
    dev = f"/dev/{ns}"
    loopdev = _run(g, f"losetup --find --show {dev}").strip()
    try:
        yield Hazard("a loop device", bdf, pt.NO_LOOP, [f"{loopdev} is backed by {dev}"])
    finally:
        g.run(f"losetup -d {loopdev}")


@contextlib.contextmanager
def held_open(g: Guest, bdf: str, serial: str = "1234"):
    """A process (sleep 600) holding the namespace open on its standard input."""
    ns = lab_namespace(g, bdf, serial)
    pid = _run(g, f"setsid sh -c 'exec sleep 600' </dev/{ns} >/dev/null 2>&1 & echo $!").strip()
    try:
        yield Hazard("a process holding it open", bdf, pt.NOT_OPEN, [f"sleep (pid {pid}) holds /dev/{ns} open"])
    finally:
        g.run(f"kill {pid}")


ALL = (mounted, partition_mounted, swap, dm_linear, loop, held_open)


def each_refused(g: Guest, bdf: str, role: str, serial: str = "1234") -> list[tuple[Hazard, "pt.Check | None", bool]]:
    """Make each hazard in turn on ``g``, prove the device with ``prove_free`` while it is in
    place, undo it: (hazard, the failed check or None, whether the refusal names the thing).
    About 35 s for all six on the lab's L1."""
    out = []
    for make in ALL:
        with make(g, bdf, serial) as h:
            _, checks = pt.prove_free(g, bdf, role=role)
            out.append((h, h.failure(checks), h.refused_in(checks)))
    return out
