"""Judging the NVMe's way from L1 to L2: which controller the parameters mean, whether
it may go (not in use, not L1's system disk, a viable IOMMU group), whether L1 gave it up
to VFIO, and whether L2 sees it. Each judgment reads facts (``facts.pci``, ``facts.storage``)
and refuses with the reason (RunbookError) or returns what it found."""
from __future__ import annotations

from ..errors import RunbookError
from ..facts import pci
from ..facts import storage
from ..facts.pci import Handover, PciDevice, Readiness
from ..guest import Guest
from ..params import Select


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


def may_pass(dev: PciDevice, r: Readiness) -> Readiness:
    """Refuse, with the reason, a device that is in use in L1 or whose IOMMU group is not viable."""
    if r.root_disk and r.root_disk in r.disks:
        raise RunbookError(f"{dev.bdf} holds L1's own root filesystem ({r.root_disk})",
                           hint="pass through another NVMe; L1 cannot give away its system disk")
    if r.mounts:
        raise RunbookError(f"{dev.bdf} is in use in L1: " + ", ".join(r.mounts),
                           hint="unmount it in L1 first (umount ...), or select another device")
    if dev.iommu_group is None:
        raise RunbookError(f"{dev.bdf} has no IOMMU group: the IOMMU is off in L1",
                           hint="run stage 03 (intel_iommu=on and a reboot) first")
    bad = group_offenders(r.group_members, dev.bdf)
    if bad:
        raise RunbookError(f"IOMMU group {dev.iommu_group} of {dev.bdf} is not viable: "
                           + ", ".join(bad) + " still on host drivers",
                           hint="pass the whole group through, or unbind those devices, or move the NVMe to its own slot")
    return r


def check_passable(guest: Guest, dev: PciDevice) -> Readiness:
    """``may_pass`` on what ``guest`` (L1) shows now."""
    return may_pass(dev, pci.readiness(guest, dev))


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
