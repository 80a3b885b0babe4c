"""PCI devices as libvirt sees them (``virsh nodedev-dumpxml``), and the NVMe
facts around them: serial, namespaces, mounts, IOMMU group members."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from ..guest import Guest

NVME_CLASS = 0x010802
BRIDGE_CLASSES = (0x0604, 0x0600)  # PCI bridges and host bridges do not count against group viability


@dataclass
class PciDevice:
    """One PCI function, with the fields the seed reads off ``nodedev-dumpxml``."""

    name: str             # libvirt's node device name, pci_0000_00_02_0
    bdf: str              # 0000:00:02.0
    pci_class: int        # 0x010802
    vendor_id: str = ""
    vendor: str = ""
    product_id: str = ""
    product: str = ""
    driver: str | None = None
    iommu_group: int | None = None
    group_members: list[str] = field(default_factory=list)
    numa_node: int | None = None

    @property
    def is_nvme(self) -> bool:
        return self.pci_class == NVME_CLASS

    @property
    def is_bridge(self) -> bool:
        return (self.pci_class >> 8) in BRIDGE_CLASSES

    @property
    def ids(self) -> str:
        return f"{self.vendor_id.removeprefix('0x')}:{self.product_id.removeprefix('0x')}"


def bdf_fields(bdf: str) -> dict[str, str]:
    """0000:00:02.0 -> domain, bus, device (slot), function: the seed's table."""
    dom, bus, rest = bdf.split(":")
    dev, fn = rest.split(".")
    return {"domain": dom, "bus": bus, "device": dev, "function": fn}


def _addr(a: ET.Element) -> str:
    return (f"{int(a.get('domain'), 16):04x}:{int(a.get('bus'), 16):02x}:"
            f"{int(a.get('slot'), 16):02x}.{int(a.get('function'), 16):x}")


def parse_nodedev(xml: str) -> PciDevice | None:
    """A PciDevice from one ``virsh nodedev-dumpxml`` document (None if not PCI)."""
    root = ET.fromstring(xml)
    cap = root.find("capability[@type='pci']")
    if cap is None:
        return None
    num = lambda tag: int(cap.findtext(tag, "0"), 0)  # noqa: E731
    bdf = f"{num('domain'):04x}:{num('bus'):02x}:{num('slot'):02x}.{num('function'):x}"
    vendor, product = cap.find("vendor"), cap.find("product")
    group = cap.find("iommuGroup")
    numa = cap.find("numa")
    return PciDevice(
        name=root.findtext("name", ""), bdf=bdf, pci_class=int(cap.findtext("class", "0"), 0),
        vendor_id=vendor.get("id", "") if vendor is not None else "",
        vendor=(vendor.text or "") if vendor is not None else "",
        product_id=product.get("id", "") if product is not None else "",
        product=(product.text or "") if product is not None else "",
        driver=root.findtext("driver/name"),
        iommu_group=int(group.get("number")) if group is not None else None,
        group_members=[_addr(a) for a in group.findall("address")] if group is not None else [],
        numa_node=int(numa.get("node")) if numa is not None else None)


SEP = "----nodedev----"


def pci_devices(guest: Guest, uri: str = "qemu:///system") -> list[PciDevice]:
    """Every PCI device libvirt knows on ``guest``, in one round trip."""
    script = (f"for d in $(virsh -c {uri} nodedev-list --cap pci); do "
              f"virsh -c {uri} nodedev-dumpxml $d; echo {SEP}; done")
    out = guest.run(script, timeout=180, check=True).out
    devs = [parse_nodedev(x) for x in out.split(SEP) if x.strip()]
    return [d for d in devs if d]


def nvme_serial(guest: Guest, bdf: str) -> str | None:
    """The controller's serial from sysfs (present only while bound to nvme)."""
    r = guest.run(f"cat /sys/bus/pci/devices/{bdf}/nvme/nvme*/serial 2>/dev/null | head -1")
    return r.out.strip() or None


def nvme_model(guest: Guest, bdf: str) -> str | None:
    r = guest.run(f"cat /sys/bus/pci/devices/{bdf}/nvme/nvme*/model 2>/dev/null | head -1")
    return r.out.strip() or None


def block_devices(guest: Guest, bdf: str) -> list[str]:
    """Block devices (namespaces) of the NVMe controller at ``bdf``: nvme0n1, ..."""
    r = guest.run(f"ls -1 /sys/bus/pci/devices/{bdf}/nvme/*/ 2>/dev/null | grep -E '^nvme[0-9]+n[0-9]+$'")
    return sorted(set(r.out.split()))


def mounts_on(guest: Guest, disks: list[str]) -> list[str]:
    """Mounted filesystems (or swap) on the given disks or their partitions: 'nvme0n1p1 on /data'."""
    if not disks:
        return []
    r = guest.run("lsblk -J -o NAME,MOUNTPOINT " + " ".join(f"/dev/{d}" for d in disks))
    if not r.ok:
        return []
    found = []

    def walk(nodes):
        for n in nodes:
            if n.get("mountpoint"):
                found.append(f"{n['name']} on {n['mountpoint']}")
            walk(n.get("children", []))
    walk(json.loads(r.out).get("blockdevices", []))
    return found


def root_disk(guest: Guest) -> str | None:
    """The disk holding / (e.g. vda), so the runbook never passes it through."""
    r = guest.run("lsblk -no PKNAME $(findmnt -no SOURCE /) 2>/dev/null | head -1")
    return r.out.strip() or None


def driver_of(guest: Guest, bdf: str) -> str | None:
    link = guest.readlink(f"/sys/bus/pci/devices/{bdf}/driver")
    return link.rsplit("/", 1)[-1] if link else None


def group_drivers(guest: Guest, group: int) -> dict[str, tuple[str | None, int]]:
    """Each device of an IOMMU group -> (driver, PCI class), read from sysfs."""
    out = {}
    for bdf in guest.listdir(f"/sys/kernel/iommu_groups/{group}/devices"):
        cls = guest.read_text(f"/sys/bus/pci/devices/{bdf}/class") or "0"
        out[bdf] = (driver_of(guest, bdf), int(cls.strip(), 16))
    return out


def nvme_list(guest: Guest) -> list[dict]:
    """``nvme list -o json``'s devices (empty when there are none)."""
    r = guest.run("nvme list -o json", timeout=60)
    if not r.ok or not r.out.strip():
        return []
    return json.loads(r.out).get("Devices", [])
