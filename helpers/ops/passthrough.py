"""Stage 04: choose the NVMe in L1, check it may be passed through, and check
afterwards that L1 gave it up to vfio-pci."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import RunbookError
from ..facts import pci
from ..facts.pci import PciDevice
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


@dataclass
class Readiness:
    """What was checked before touching the device."""

    disks: list[str]
    mounts: list[str]
    root_disk: str | None
    group_members: dict[str, tuple[str | None, int]]


def check_passable(guest: Guest, dev: PciDevice) -> Readiness:
    """Refuse, with the reason, a device that is in use in L1 or whose IOMMU group is not viable."""
    disks = pci.block_devices(guest, dev.bdf)
    mounts = pci.mounts_on(guest, disks)
    root = pci.root_disk(guest)
    if root and root in disks:
        raise RunbookError(f"{dev.bdf} holds L1's own root filesystem ({root})",
                           hint="pass through another NVMe; L1 cannot give away its system disk")
    if mounts:
        raise RunbookError(f"{dev.bdf} is in use in L1: " + ", ".join(mounts),
                           hint="unmount it in L1 first (umount ...), or select another device")
    if dev.iommu_group is None:
        raise RunbookError(f"{dev.bdf} has no IOMMU group: the IOMMU is off in L1",
                           hint="run stage 03 (intel_iommu=on and a reboot) first")
    members = pci.group_drivers(guest, dev.iommu_group)
    bad = group_offenders(members, dev.bdf)
    if bad:
        raise RunbookError(f"IOMMU group {dev.iommu_group} of {dev.bdf} is not viable: "
                           + ", ".join(bad) + " still on host drivers",
                           hint="pass the whole group through, or unbind those devices, or move the NVMe to its own slot")
    return Readiness(disks, mounts, root, members)


def check_given_up(guest: Guest, dev: PciDevice, serial: str | None) -> dict:
    """After L2 started: the driver is vfio-pci, /dev/vfio/<group> exists, and
    `nvme list` in L1 no longer shows the disk."""
    driver = pci.driver_of(guest, dev.bdf)
    vfio_node = f"/dev/vfio/{dev.iommu_group}"
    listed = pci.nvme_list(guest)
    still = [d for d in listed if serial and d.get("SerialNumber", "").strip() == serial]
    result = {"driver": driver, "vfio_node": vfio_node, "vfio_node_exists": guest.exists(vfio_node),
              "nvme_list_in_l1": [d.get("DevicePath") for d in listed], "disk_gone_from_l1": not still}
    if driver != "vfio-pci" or not result["vfio_node_exists"] or still:
        raise RunbookError(f"L1 has not given {dev.bdf} up to VFIO: driver {driver}, "
                           f"{vfio_node} {'exists' if result['vfio_node_exists'] else 'missing'}, "
                           f"nvme list shows {[d.get('DevicePath') for d in still]}",
                           hint="check that the hostdev is managed='yes' and L2 is running (virsh list in L1)")
    return result
