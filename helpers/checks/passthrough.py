"""Judging an NVMe's way into a guest: which controller the parameters mean, whether it may
leave its machine's driver, whether that machine gave it up to VFIO, and whether the guest
sees it. Each judgment reads facts (``facts.pci``, ``facts.holders``, ``facts.storage``) and
refuses with the reason (RunbookError) or returns what it found.

Whether it may go is one proof on any machine (L0 for a host NVMe, L1 before L2 takes the
emulated one): ``prove_free(guest, bdf, role=...)`` describes the controller and returns one
Check per question (not the system disk, not mounted, not swap, no LVM, md, device-mapper,
loop or bcache holder, no ZFS, not open by a process, a viable IOMMU group, interrupt
remapping; warnings for another device of the same vendor:device, a NUMA node away from
L1's CPUs, no function-level reset); ``refuse_unless_free`` turns the failures into one
RunbookError naming each thing and what to do. ``select_host_nvme`` chooses L0's controller
by serial, BDF or model and never takes 'the only NVMe' by default."""
from __future__ import annotations

from ..errors import RunbookError
from ..facts import pci
from ..facts import holders
from ..facts import storage
from ..facts.pci import Handover, PciDevice, Readiness
from ..guest import Guest
from ..params import Select
from .base import Check


def select_nvme(devices: list[PciDevice], select: Select, serials: dict[str, str | None],
                models: dict[str, str | None] | None = None) -> PciDevice:
    """The NVMe controller the parameters mean: by BDF, serial or model, or the only one."""
    models = models or {}
    nvmes = [d for d in devices if d.is_nvme]
    listing = ", ".join(f"{d.bdf} (serial {serials.get(d.bdf) or '?'})" for d in nvmes) or "none"
    if select.bdf:
        match = [d for d in devices if d.bdf == select.bdf]
        if not match:
            raise RunbookError(f"no PCI device at {select.bdf} in L1 (NVMe controllers there: {listing})",
                               hint="fix l2.select.bdf, or leave it empty and select by serial")
        dev = match[0]
        if not dev.is_nvme:
            raise RunbookError(
                f"{select.bdf} is {dev.vendor} {dev.product} (class {dev.pci_class:#08x}), "
                f"not an NVMe controller (class {pci.NVME_CLASS:#08x})",
                hint=f"choose an NVMe controller: {listing}")
        nvmes = [dev]
    if select.serial:
        nvmes = [d for d in nvmes if serials.get(d.bdf) == select.serial]
    if select.model:
        nvmes = [d for d in nvmes if select.model in (models.get(d.bdf) or d.product)]
    if not nvmes:
        wanted = ", ".join(f"{k} {v}" for k, v in select.model_dump().items() if v)
        raise RunbookError(f"no NVMe controller in L1 matches {wanted or 'the selection'} (found: {listing})",
                           hint="fix l2.select in the parameters")
    if len(nvmes) > 1:
        raise RunbookError(f"{len(nvmes)} NVMe controllers match in L1: {listing}",
                           hint="narrow l2.select by serial or bdf")
    return nvmes[0]


def group_offenders(members: dict[str, tuple[str | None, int]], bdf: str) -> list[str]:
    """Other endpoints of the group still bound to a host driver: they block VFIO.
    Bridges do not count; unbound devices and vfio-pci ones are fine."""
    bad = []
    for other, (driver, cls) in sorted(members.items()):
        if other == bdf or (cls >> 8) in pci.BRIDGE_CLASSES:
            continue
        if driver not in (None, "vfio-pci"):
            bad.append(f"{other} (driver {driver})")
    return bad


def check_passable(guest: Guest, dev: PciDevice, *, root: str = "") -> Readiness:
    """In L1, before L2 takes ``dev``: ``prove_free`` with role 'l1' (not L1's system disk,
    nothing mounted, no swap, no holder, not open, a viable IOMMU group, interrupt
    remapping), refused with every reason named; what was found, for the run state."""
    desc, checks = prove_free(guest, dev.bdf, role="l1", root=root)
    refuse_unless_free(checks, dev.bdf, "L1")
    u = desc.uses
    return Readiness(desc.disks, [f"{u.chain(m.name)} on {m.mountpoint}" for m in u.mounts],
                     u.system_mounts.get("/", ("", ""))[1] or None,
                     {m.bdf: (m.driver, m.pci_class) for m in desc.group}, desc, checks)


def given_up(dev: PciDevice, h: Handover, serial: str | None) -> dict:
    """After L2 started: the driver is vfio-pci, /dev/vfio/<group> exists, and
    `nvme list` in L1 no longer shows the disk."""
    still = [d for d in h.listed if serial and d.get("SerialNumber", "").strip() == serial]
    result = {"driver": h.driver, "vfio_node": h.vfio_node, "vfio_node_exists": h.vfio_node_exists,
              "nvme_list_in_l1": [d.get("DevicePath") for d in h.listed], "disk_gone_from_l1": not still}
    if h.driver != "vfio-pci" or not h.vfio_node_exists or still:
        raise RunbookError(f"L1 has not given {dev.bdf} up to VFIO: driver {h.driver}, "
                           f"{h.vfio_node} {'exists' if h.vfio_node_exists else 'missing'}, "
                           f"nvme list shows {[d.get('DevicePath') for d in still]}",
                           hint="check that the hostdev is managed='yes' and L2 is running (virsh list in L1)")
    return result


def check_given_up(guest: Guest, dev: PciDevice, serial: str | None) -> dict:
    """``given_up`` on what ``guest`` (L1) shows now."""
    return given_up(dev, pci.handover(guest, dev), serial)


def l2_controller(guest: Guest) -> tuple[storage.Controller, str]:
    """The NVMe controller L2 sees (there must be one), and the full lspci output."""
    found, out = storage.nvme_controllers(guest)
    if not found:
        raise RunbookError(f"{guest.name} sees no NVMe controller in lspci -Dnn",
                           hint="check the hostdev in L2's definition (virsh dumpxml in L1) and L2's console log")
    return found[0], out


def l2_namespaces(guest: Guest) -> tuple[list[dict], str]:
    """`nvme list`'s namespaces in L2 (there must be one) and the human table."""
    devs, table = storage.namespaces(guest)
    if not devs:
        raise RunbookError(f"`nvme list` in {guest.name} shows no namespace",
                           hint="the nvme driver did not bind in L2: read `dmesg | grep nvme` there")
    return devs, table


# --- proving a controller free, on any machine --------------------------------------------------

# The checks' names, in table order.
NOT_SYSTEM = "not the system disk"
NOT_MOUNTED = "not mounted"
NOT_SWAP = "not swap"
NO_LVM = "no LVM"
NO_MD = "no md RAID"
NO_DM = "no device-mapper"
NO_LOOP = "no loop device"
NO_BCACHE = "no bcache"
NO_ZFS = "no ZFS"
NOT_OPEN = "not open"
DRIVER = "driver"
GROUP = "IOMMU group viable"
IRQ = "interrupt remapping"
SAME_IDS = "one device of its kind"
NUMA = "NUMA node"
RESET = "function-level reset"
FREE_CHECKS = (NOT_SYSTEM, NOT_MOUNTED, NOT_SWAP, NO_LVM, NO_MD, NO_DM, NO_LOOP, NO_BCACHE, NO_ZFS, NOT_OPEN,
               DRIVER, GROUP, IRQ, SAME_IDS, NUMA, RESET)
DESCRIPTION_COLUMNS = ["fact", "value"]
ROLES = {"l0": ("L0", "on L0"), "l1": ("L1", "in L1")}


def prove_free(guest: Guest, bdf: str, *, role: str, l1_cpus: str | list[int] | None = None, root: str = ""
               ) -> tuple[pci.DeviceDescription, list[Check]]:
    """Describe the NVMe controller at ``bdf`` on ``guest`` (L0 with role 'l0', L1 with role
    'l1'; Local, SSH or Agent alike, in one round trip) and prove it may leave that machine's
    driver. Returns the description (``.rows()`` for a table) and one Check per question,
    in table order: each 'fail' names the thing (namespace or partition, mount point, holder,
    process and pid) and says what to do; 'warn' says why. ``l1_cpus``: the CPUs L1 is
    pinned to (cpuset text or list), to compare with the device's NUMA node. ``root``: a
    fixture tree in tests (prefixes /sys, /proc, /dev), empty on a machine.

    Refuses (RunbookError) only what cannot be judged at all: no PCI device at ``bdf``, or one
    that is not an NVMe controller (named). ``refuse_unless_free(checks, ...)`` turns the
    failed checks into one RunbookError."""
    where = ROLES[role][0]
    found = pci.describe(guest, bdf, root=root)
    if found is None:
        raise RunbookError(f"no PCI device at {bdf} in {where}" if role == "l1" else f"no PCI device at {bdf} on {where}",
                           hint=f"list {where}'s NVMe controllers with `lspci -D -d ::0108` and fix the BDF")
    if not found.is_nvme:
        raise RunbookError(not_nvme(found.pci), hint=f"choose an NVMe controller of {where} (`lspci -D -d ::0108`)")
    return found, judge_free(found, role=role, l1_cpus=l1_cpus)


def not_nvme(d: PciDevice) -> str:
    """'0000:00:03.0 is a Virtio block device (Red Hat, Inc., class 0x010000), not an NVMe controller'."""
    what = d.product or f"PCI device of class {d.pci_class:#08x}"
    by = ", ".join(x for x in (d.vendor, f"class {d.pci_class:#08x}") if x)
    return f"{d.bdf} is a {what} ({by}), not an NVMe controller (class {pci.NVME_CLASS:#08x})"


def _names(items) -> str:
    return ", ".join(items)


def judge_free(desc: pci.DeviceDescription, *, role: str, l1_cpus: str | list[int] | None = None) -> list[Check]:
    """The checks of ``prove_free`` on a description already read (see there): one small
    judge per question, in table order (``FREE_CHECKS``)."""
    return [judge_not_system(desc, role), judge_not_mounted(desc, role), judge_not_swap(desc, role),
            judge_lvm(desc, role), judge_md(desc, role), judge_dm(desc, role), judge_loop(desc, role),
            judge_bcache(desc, role), judge_zfs(desc, role), judge_not_open(desc, role), judge_driver(desc, role),
            judge_group(desc, role), judge_irq(desc, role), judge_same_ids(desc, role),
            judge_numa(desc, l1_cpus), judge_reset(desc)]


def _verdict(name: str, failed: list[str], fixes: list[str], clean: str, prefix: str = "") -> Check:
    """'fail' naming each thing found (after ``prefix``) with every fix once, or 'pass' saying ``clean``."""
    if failed:
        return Check(name, prefix + _names(failed), "fail", "; ".join(dict.fromkeys(fixes)))
    return Check(name, clean, "pass")


def _system_mounts(u: holders.Uses) -> list[holders.Mount]:
    """/, /boot and /boot/efi of this machine's own mount namespace, on the device."""
    return [m for m in u.mounts if m.mountpoint in holders.SYSTEM_MOUNTS and m.ns_pid is None]


def _with_signature(u: holders.Uses, kind: str) -> list[str]:
    """The device's block devices where blkid found a signature of ``kind`` (its TYPE)."""
    return [n for n in u.devices if u.signatures.get(n, {}).get("TYPE") == kind]


def judge_not_system(desc: pci.DeviceDescription, role: str) -> Check:
    """The system disk: /, /boot, /boot/efi on a namespace or anything stacked on it."""
    who, _ = ROLES[role]
    u = desc.uses
    kinds = {"/": "root filesystem", "/boot": "boot filesystem", "/boot/efi": "EFI system partition"}
    elsewhere = ", ".join(f"{mp} on {v[0] or '?'}" for mp, v in u.system_mounts.items())
    return _verdict(NOT_SYSTEM, [f"{kinds[m.mountpoint]} {m.mountpoint} on {u.chain(m.name)}" for m in _system_mounts(u)],
                    [f"choose another NVMe: {who} cannot give away the disk it runs from"],
                    f"{who}'s system is elsewhere ({elsewhere or 'no /, /boot or /boot/efi read'})",
                    prefix=f"{desc.bdf} holds {who}'s own ")


def judge_not_mounted(desc: pci.DeviceDescription, role: str) -> Check:
    """Any other mounted filesystem, directly, through a partition or a holder, in any mount namespace."""
    _, where = ROLES[role]
    u, disks = desc.uses, desc.disks
    sys_m = _system_mounts(u)
    other = [m for m in u.mounts if m not in sys_m]
    return _verdict(NOT_MOUNTED, [f"{u.chain(m.name)} on {m.mountpoint} ({m.fstype}"
                                  + (f"; in the mount namespace of {m.ns_comm or '?'}, pid {m.ns_pid})" if m.ns_pid else ")")
                                  for m in other],
                    [f"umount {m.mountpoint} {where} (and take it out of /etc/fstab)" if m.ns_pid is None else
                     f"nsenter -t {m.ns_pid} -m umount {m.mountpoint} {where}, or stop {m.ns_comm or 'that process'}"
                     for m in other],
                    f"no filesystem of {_names(disks)} is mounted" if disks else f"no namespace of it {where}: nothing mounted",
                    prefix=f"{desc.bdf} is in use {where}: ")


def judge_not_swap(desc: pci.DeviceDescription, role: str) -> Check:
    """Active swap on it: a swap partition or volume, or a swap file on one of its filesystems."""
    _, where = ROLES[role]
    u = desc.uses
    return _verdict(NOT_SWAP, [u.chain(s.name) + (f" (swap file {s.path})" if not s.path.startswith("/dev/") else "")
                               + (f", {pci.human_bytes(s.size_kib * 1024).split(' (')[0]}" if s.size_kib else "")
                               for s in u.swaps],
                    [f"swapoff {s.path} {where} (and take it out of /etc/fstab)" for s in u.swaps],
                    "no active swap on it", prefix=f"{desc.bdf} is in use {where} as swap: ")


def judge_lvm(desc: pci.DeviceDescription, role: str) -> Check:
    """LVM: a logical volume on it, a physical volume pvs names, or an LVM label blkid finds."""
    _, where = ROLES[role]
    u = desc.uses
    lvm = [h for h in u.holders() if h.holder_kind == "lvm"]
    pv_sig = _with_signature(u, "LVM2_member")
    lvm_failed = [f"{h.label}, an LVM logical volume of volume group {holders.lvm_vg(h.dm_name)}, on {_names(h.on)}"
                  for h in lvm]
    lvm_failed += [f"{n} is a physical volume of volume group {vg} (pvs)" for n, vg in u.pvs.items()
                   if not any(n in h.on for h in lvm)]
    lvm_failed += [f"{n} carries an LVM physical volume label (blkid: LVM2_member"
                   + ("; lvm2 is not installed here to say more)" if "pvs" not in u.tools else ")")
                   for n in pv_sig if n not in u.pvs and not any(n in h.on for h in lvm)]
    vgs = sorted({holders.lvm_vg(h.dm_name) for h in lvm} | set(u.pvs.values()))
    return _verdict(NO_LVM, lvm_failed,
                    [f"vgchange -an {vg} {where} (after unmounting its volumes)" for vg in vgs]
                    + ([f"if that volume group is gone for good: pvremove (or wipefs -a) the device {where}; "
                        "else choose another NVMe"] if pv_sig and not lvm else []),
                    "no LVM logical volume on it" + ("" if "blkid" in u.tools else " (blkid missing: signatures not read)"),
                    prefix=f"{desc.bdf} is used by LVM {where}: ")


def judge_md(desc: pci.DeviceDescription, role: str) -> Check:
    """md RAID: an array holding it, or a member's superblock of an array not running."""
    _, where = ROLES[role]
    u = desc.uses
    md = [h for h in u.holders() if h.holder_kind == "md"]
    md_sig = [n for n in _with_signature(u, "linux_raid_member") if not any(n in h.on for h in md)]
    return _verdict(NO_MD, [f"{h.name} (an md array) holds {_names(h.on)}" for h in md]
                    + [f"{n} carries an md RAID superblock (blkid: linux_raid_member), of an array not running"
                       for n in md_sig],
                    [f"mdadm --stop /dev/{h.name} {where} (after unmounting it)" for h in md]
                    + [f"if that array is gone for good: mdadm --zero-superblock /dev/{n}; else choose another NVMe"
                       for n in md_sig],
                    "no md array on it", prefix=f"{desc.bdf} is an md RAID member {where}: ")


DM_FIX = {"dm-crypt": "cryptsetup close {n}", "multipath": "multipath -f {n}", "device-mapper": "dmsetup remove {n}"}


def judge_dm(desc: pci.DeviceDescription, role: str) -> Check:
    """Device-mapper targets other than LVM: dm-crypt, multipath, plain dmsetup ones."""
    _, where = ROLES[role]
    dm = [h for h in desc.uses.holders() if h.holder_kind in DM_FIX]
    return _verdict(NO_DM, [f"{h.label}, a {h.holder_kind} target, on {_names(h.on)}" for h in dm],
                    [DM_FIX[h.holder_kind].format(n=h.dm_name or h.name) + f" {where} (after unmounting it)" for h in dm],
                    "no device-mapper target on it", prefix=f"{desc.bdf} is held {where} by device-mapper: ")


def judge_loop(desc: pci.DeviceDescription, role: str) -> Check:
    """A loop device backed by one of its block devices."""
    _, where = ROLES[role]
    loops = [h for h in desc.uses.holders() if h.holder_kind == "loop"]
    return _verdict(NO_LOOP, [f"/dev/{h.name} is backed by /dev/{h.on[0]}" for h in loops],
                    [f"losetup -d /dev/{h.name} {where}" for h in loops],
                    "no loop device backed by it", prefix=f"{desc.bdf} backs a loop device {where}: ")


def judge_bcache(desc: pci.DeviceDescription, role: str) -> Check:
    """bcache: a bcache device holding it, a registered cache device, or a bcache superblock."""
    _, where = ROLES[role]
    u = desc.uses
    bc = [h for h in u.holders() if h.holder_kind == "bcache"]
    bc_reg = [n for n in u.bcache if u.devices.get(n) and u.devices[n].kind in ("namespace", "partition")
              and not any(n in h.on for h in bc)]
    bc_sig = [n for n in _with_signature(u, "bcache") if n not in bc_reg and not any(n in h.on for h in bc)]
    return _verdict(NO_BCACHE, [f"{h.name} (bcache) holds {_names(h.on)}" for h in bc]
                    + [f"{n} is registered with bcache (a cache device)" for n in bc_reg]
                    + [f"{n} carries a bcache superblock (blkid: bcache)" for n in bc_sig],
                    [f"echo 1 > /sys/block/{h.name}/bcache/stop {where} (after unmounting it)" for h in bc]
                    + [f"unregister its cache set {where}: echo 1 > /sys/block/{n}/bcache/set/unregister" for n in bc_reg]
                    + [f"if that bcache is gone for good: wipefs -a /dev/{n}; else choose another NVMe" for n in bc_sig],
                    "no bcache on it", prefix=f"{desc.bdf} is used by bcache {where}: ")


def judge_zfs(desc: pci.DeviceDescription, role: str) -> Check:
    """ZFS: a member of an imported pool, or a ZFS label blkid finds."""
    _, where = ROLES[role]
    u = desc.uses
    zsig = [n for n in _with_signature(u, "zfs_member") if n not in u.zpools]
    return _verdict(NO_ZFS, [f"{n} is in ZFS pool {p}" for n, p in u.zpools.items()]
                    + [f"{n} carries a ZFS label (blkid: zfs_member"
                       + ("; no zpool here to name the pool)" if "zpool" not in u.tools else ", in no imported pool)")
                       for n in zsig],
                    [f"zpool export {p} {where}" for p in sorted(set(u.zpools.values()))]
                    + [f"if that pool is gone for good: zpool labelclear /dev/{n}; else choose another NVMe" for n in zsig],
                    "no ZFS pool on it", prefix=f"{desc.bdf} is a ZFS pool member {where}: ")


def judge_not_open(desc: pci.DeviceDescription, role: str) -> Check:
    """A process holding one of its block or character devices open (or processes not readable)."""
    _, where = ROLES[role]
    u, disks = desc.uses, desc.disks
    opened = [f"{o.comm or '?'} (pid {o.pid}) holds {o.path} open" for o in u.openers]
    if u.fd_unreadable and not opened:
        return Check(NOT_OPEN, f"the open files of {u.fd_unreadable} processes {where} could not be read",
                     "fail", f"run as root {where}: only root sees every process's open files")
    return _verdict(NOT_OPEN, opened, [f"close it: stop {o.comm or 'the process'} (kill {o.pid}) {where}" for o in u.openers],
                    f"no process has {_names(disks)} or its character devices open" if disks else
                    f"no process has its character devices open ({_names(desc.controllers + desc.generic) or 'none'} {where})",
                    prefix=f"{desc.bdf} is open {where}: ")


def judge_driver(desc: pci.DeviceDescription, role: str) -> Check:
    """The driver it is bound to now (a fact, always 'pass')."""
    _, where = ROLES[role]
    drv = desc.pci.driver
    return Check(DRIVER, {"nvme": f"nvme ({_names(desc.controllers) or 'no controller'})",
                          "vfio-pci": f"vfio-pci: already given to VFIO, no block device of it {where}",
                          None: "none bound"}.get(drv, drv), "pass")


def judge_group(desc: pci.DeviceDescription, role: str) -> Check:
    """An IOMMU group, and no other endpoint of it on a host driver."""
    _, where = ROLES[role]
    bdf, g = desc.bdf, desc.pci.iommu_group
    if g is None:
        fix = ("run stage 03 (intel_iommu=on and a reboot) first" if role == "l1" else
               "turn the IOMMU on: VT-d or AMD-Vi in the firmware, intel_iommu=on (Intel) on the kernel command line, reboot")
        return Check(GROUP, f"{bdf} has no IOMMU group: the IOMMU is off {where}", "fail", fix)
    bad = group_offenders({m.bdf: (m.driver, m.pci_class) for m in desc.group}, bdf)
    if bad:
        return Check(GROUP, f"IOMMU group {g} of {bdf} is not viable: " + _names(bad) + " still on host drivers", "fail",
                     "pass the whole group through, or unbind those devices, or move the NVMe to its own slot")
    others = [m for m in desc.group if m.bdf != bdf]
    return Check(GROUP, f"group {g}: " + (
        f"{bdf} with " + _names(f"{m.bdf} ({'bridge' if m.is_bridge else m.driver or 'no driver'})"
                                for m in others) if others else f"{bdf} alone"), "pass")


def judge_irq(desc: pci.DeviceDescription, role: str) -> Check:
    """Interrupt remapping on the machine (or allow_unsafe_interrupts, a warning)."""
    who, where = ROLES[role]
    if desc.irq_remapped:
        return Check(IRQ, f"on {who}: {desc.irq_remapped} remapped interrupt chips (IR-) in /proc/interrupts", "pass")
    if desc.allow_unsafe_interrupts:
        return Check(IRQ, f"none {where}, and vfio_iommu_type1 allow_unsafe_interrupts=Y: a guest could "
                          "inject interrupts into the host", "warn",
                     "enable interrupt remapping (x2APIC and IR in the firmware) and drop allow_unsafe_interrupts")
    return Check(IRQ, f"no interrupt remapping {where} (no IR- interrupt chip in /proc/interrupts): "
                      "VFIO would need allow_unsafe_interrupts", "fail",
                 "enable interrupt remapping: x2APIC and VT-d/AMD-Vi interrupt remapping in the firmware"
                 + (" (intremap=on on L1's vIOMMU)" if role == "l1" else "")
                 + "; the runbook never sets allow_unsafe_interrupts")


def judge_same_ids(desc: pci.DeviceDescription, role: str) -> Check:
    """Another device of the same vendor:device (a warning: binding by ID would take it too)."""
    _, where = ROLES[role]
    if not desc.same_ids:
        return Check(SAME_IDS, f"no other {desc.pci.ids} {where}", "pass")
    one = len(desc.same_ids) == 1
    others = _names(f"{o.bdf} ({o.driver or 'no driver'})" for o in desc.same_ids)
    return Check(SAME_IDS, f"{others} {'is' if one else 'are'} also {desc.pci.ids} {where}: binding by "
                           f"vendor:device (new_id, vfio-pci.ids=) would take {'both' if one else 'all'}", "warn",
                 "nothing to do for the runbook: it binds by address only; never bind this model by ID by hand")


def judge_numa(desc: pci.DeviceDescription, l1_cpus: str | list[int] | None) -> Check:
    """The device's NUMA node against the CPUs L1 is pinned to (a warning when they differ)."""
    from ..params import parse_cpuset
    node, cpus = desc.pci.numa_node, desc.node_cpus
    if node is None:
        return Check(NUMA, "the device reports no NUMA node (one node)", "pass")
    near = f"node {node} (CPUs {pci.format_cpus(cpus) or 'unknown'})"
    pinned = parse_cpuset(l1_cpus) if isinstance(l1_cpus, str) and l1_cpus else list(l1_cpus or [])
    far = sorted(set(pinned) - set(cpus))
    if not pinned:
        return Check(NUMA, f"{near}; L1 not pinned yet: place it on that node's CPUs", "pass")
    if far and cpus:
        return Check(NUMA, f"the device is on {near}, L1's CPUs {pci.format_cpus(far)} are not: every I/O "
                           "crosses the link between the sockets", "warn",
                     f"pin L1 to node {node}'s CPUs (l1.cpuset within {pci.format_cpus(cpus)}), "
                     "or leave l1.cpuset empty")
    return Check(NUMA, f"{near}; L1's CPUs {pci.format_cpus(pinned)} are on it", "pass")


def judge_reset(desc: pci.DeviceDescription) -> Check:
    """Function-level reset (a warning without it: the device may keep state between guests)."""
    r = desc.reset_methods
    if r is None:
        return Check(RESET, "unknown: the kernel has no reset_method file (before 5.15); a reset exists", "warn",
                     f"look for FLReset+ in `lspci -vv -s {desc.bdf}`")
    if "flr" in r:
        return Check(RESET, f"reset methods: {_names(r)}", "pass")
    return Check(RESET, ("reset methods: " + _names(r) if r else "no reset method at all")
                 + ": no function-level reset, so between guests the device is reset "
                 + ("through its bus or slot (and all behind it)" if r else "not at all"),
                 "warn", "expect the device to keep state between guests; a model with FLR is safer")


def cpuset_near(desc: pci.DeviceDescription, nodes: dict[int, list[int]], siblings: dict[int, list[int]],
                vcpus: int, threads: int = 1) -> tuple[str | None, str]:
    """L1's cpuset when l1.cpuset is empty and L1 gets this device: ``numa.choose_cpuset``
    inside the device's NUMA node (``nodes``/``siblings`` from ``facts.cpu.topology`` of the
    same machine), and why; any node when the device reports none or its node has no room."""
    from ..numa import choose_cpuset
    node = desc.pci.numa_node
    if node is None or node not in nodes:
        cpuset, why = choose_cpuset(nodes, siblings, vcpus, threads)
        return cpuset, f"{why} (the NVMe reports no NUMA node)"
    cpuset, why = choose_cpuset({node: nodes[node]}, siblings, vcpus, threads)
    if cpuset:
        return cpuset, f"{why}, on the NVMe's NUMA node"
    cpuset, why = choose_cpuset(nodes, siblings, vcpus, threads)
    return cpuset, f"{why} (the NVMe's node {node} has no room for {vcpus} vCPUs: its I/O crosses nodes)"


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.verdict == "fail"]


def refuse_unless_free(checks: list[Check], bdf: str, where: str = "") -> None:
    """One RunbookError naming every failed check of ``prove_free`` (its observed words)
    and every fix; nothing when none failed."""
    bad = failed(checks)
    if not bad:
        return
    message = bad[0].observed if len(bad) == 1 else (
        f"{bdf} may not be passed through{f' from {where}' if where else ''}, for {len(bad)} reasons: "
        + "; ".join(c.observed for c in bad))
    raise RunbookError(message, hint="; ".join(dict.fromkeys(c.fix for c in bad if c.fix)))


def select_host_nvme(guest: Guest, select, *, role: str = "l0", param: str = "nvme.select", root: str = ""
                     ) -> pci.DeviceDescription:
    """The NVMe controller of ``guest`` that ``select`` names (its ``serial``, ``bdf`` or
    ``model``), described. Never 'the only NVMe there' by default: it may be the machine's
    system disk, so an empty selection is refused, with every NVMe listed. A ``bdf`` that is
    not an NVMe controller is refused naming what it is. Whether the device may go is
    ``prove_free``'s question, asked right before it leaves its driver."""
    who, where = ROLES[role]
    bdf, serial, model = (getattr(select, k, None) for k in ("bdf", "serial", "model"))
    devices, descs = pci.describe_all(guest, None, root=root)
    listing = _names(f"{d.bdf} (serial {d.serial or '?'}, model {d.model or '?'}, "
                     f"{pci.human_bytes(sum(n.size_bytes or 0 for n in d.namespaces)).split(' (')[0]}"
                     + (", holds " + _names(m.mountpoint for m in d.uses.mounts if m.mountpoint in holders.SYSTEM_MOUNTS)
                        if any(m.mountpoint in holders.SYSTEM_MOUNTS for m in d.uses.mounts) else "") + ")"
                     for d in descs.values()) or "none"
    if not (bdf or serial or model):
        raise RunbookError(f"{param} names no NVMe controller: the runbook never takes 'the only NVMe' {where} by "
                           f"default (it may be {who}'s system disk); NVMe controllers {where}: {listing}",
                           hint=f"set {param}.serial (or {param}.bdf) to the controller you mean to give away")
    chosen = list(descs.values())
    if bdf:
        match = [d for d in devices if d.bdf == bdf]
        if not match:
            raise RunbookError(f"no PCI device at {bdf} {where} (NVMe controllers there: {listing})",
                               hint=f"fix {param}.bdf, or select by serial")
        if not match[0].is_nvme:
            raise RunbookError(not_nvme(match[0]), hint=f"choose an NVMe controller {where}: {listing}")
        chosen = [d for d in chosen if d.bdf == bdf]
    if serial:
        chosen = [d for d in chosen if d.serial == serial]
    if model:
        chosen = [d for d in chosen if model in (d.model or d.pci.product)]
    if not chosen:
        wanted = _names(f"{k} {v}" for k, v in (("bdf", bdf), ("serial", serial), ("model", model)) if v)
        raise RunbookError(f"no NVMe controller {where} matches {wanted} (found: {listing})",
                           hint=f"fix {param} in the parameters")
    if len(chosen) > 1:
        raise RunbookError(f"{len(chosen)} NVMe controllers {where} match: "
                           + _names(f"{d.bdf} (serial {d.serial or '?'})" for d in chosen),
                           hint=f"name one by {param}.serial or {param}.bdf")
    return chosen[0]
