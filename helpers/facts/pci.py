"""PCI devices with the fields libvirt gives them (``virsh nodedev-dumpxml``), read
from sysfs and lspci in one round trip, and the NVMe facts around them: serial,
namespaces, mounts, IOMMU group members."""
from __future__ import annotations

import json
import re
import shlex
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


LSPCI_SEP = "----lspci----"

# One POSIX sh script, one round trip: a line per /sys/bus/pci/devices/* entry, then
# the separator, then `lspci -Dmmnn` for the names. Builtins only for the sysfs part
# (read, cd -P, globs, printf): no process per device, which matters in an emulated L1.
SYSFS_SCRIPT = r"""for p in /sys/bus/pci/devices/*; do
  [ -r "$p/class" ] || continue
  c=; v=; i=; n=; drv=; grp=; mem=
  read -r c 2>/dev/null <"$p/class"
  read -r v 2>/dev/null <"$p/vendor"
  read -r i 2>/dev/null <"$p/device"
  read -r n 2>/dev/null <"$p/numa_node"
  if cd -P "$p/driver" 2>/dev/null; then drv=${PWD##*/}; fi
  if cd -P "$p/iommu_group" 2>/dev/null; then grp=${PWD##*/}; fi
  for m in "$p"/iommu_group/devices/*; do [ -e "$m" ] && mem=$mem${mem:+,}${m##*/}; done
  printf '%s class=%s vendor=%s device=%s driver=%s iommu_group=%s numa_node=%s members=%s\n' \
    "${p##*/}" "$c" "$v" "$i" "$drv" "$grp" "$n" "$mem"
done
echo '""" + LSPCI_SEP + r"""'
lspci -Dmmnn 2>/dev/null || true
"""

_ID_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{4}\]$")


def node_device_name(bdf: str) -> str:
    """libvirt's node device name for a BDF: 0000:00:02.0 -> pci_0000_00_02_0."""
    return "pci_" + bdf.replace(":", "_").replace(".", "_")


def _lspci_name(field: str, placeholder: str) -> str:
    """'Red Hat, Inc. [1b36]' -> 'Red Hat, Inc.'. lspci prints 'Device [0d57]' (or
    'Vendor [...]') when pci.ids has no name; libvirt leaves the name empty then."""
    name = _ID_SUFFIX.sub("", field).strip()
    return "" if name == placeholder else name


def _lspci_names(text: str) -> dict[str, tuple[str, str]]:
    """BDF -> (vendor, product) from ``lspci -Dmmnn``."""
    names = {}
    for line in text.splitlines():
        try:
            fields = shlex.split(line)
        except ValueError:  # an unbalanced quote: take the quoted fields as they are
            slot = line.split(None, 1)[0] if line.strip() else ""
            fields = [slot, *re.findall(r'"([^"]*)"', line)]
        if len(fields) >= 4:
            names[fields[0]] = (_lspci_name(fields[2], "Vendor"), _lspci_name(fields[3], "Device"))
    return names


def parse_sysfs_listing(text: str) -> list[PciDevice]:
    """PciDevices, ordered by BDF, from the output of ``SYSFS_SCRIPT``: the same values
    ``parse_nodedev`` reads off libvirt's XML. Without the lspci part, names are empty."""
    sysfs, _, lspci = text.partition(LSPCI_SEP)
    names = _lspci_names(lspci)
    devs = []
    for line in sysfs.splitlines():
        bdf, _, rest = line.strip().partition(" ")
        if not bdf:
            continue
        f = dict(kv.split("=", 1) for kv in rest.split() if "=" in kv)
        numa = int(f["numa_node"]) if f.get("numa_node") else -1
        vendor, product = names.get(bdf, ("", ""))
        devs.append(PciDevice(
            name=node_device_name(bdf), bdf=bdf, pci_class=int(f.get("class") or "0", 16),
            vendor_id=f.get("vendor", ""), vendor=vendor, product_id=f.get("device", ""), product=product,
            driver=f.get("driver") or None,
            iommu_group=int(f["iommu_group"]) if f.get("iommu_group") else None,
            group_members=sorted(m for m in f.get("members", "").split(",") if m),
            numa_node=numa if numa >= 0 else None))  # libvirt omits <numa> for -1
    return sorted(devs, key=lambda d: d.bdf)


def pci_devices(guest: Guest) -> list[PciDevice]:
    """Every PCI device on ``guest``, as libvirt would describe it, from sysfs and lspci
    in one round trip (``virsh nodedev-dumpxml`` per device costs seconds in an emulated L1)."""
    return parse_sysfs_listing(guest.run(SYSFS_SCRIPT, timeout=60, check=True).out)


def nvme_serial(guest: Guest, bdf: str) -> str | None:
    """The controller's serial from sysfs (present only while bound to nvme)."""
    r = guest.run(f"cat /sys/bus/pci/devices/{bdf}/nvme/nvme*/serial 2>/dev/null | head -1")
    return r.out.strip() or None


def nvme_model(guest: Guest, bdf: str) -> str | None:
    r = guest.run(f"cat /sys/bus/pci/devices/{bdf}/nvme/nvme*/model 2>/dev/null | head -1")
    return r.out.strip() or None


# The namespaces' block devices of the controller(s) at one BDF. Without native NVMe
# multipath they sit in the controller's folder (nvme0/nvme0n1). With it (the kernel's
# nvme_core.multipath=Y, which QEMU >= 8's NVMe subsystem model brings out), the
# controller's folder holds only the hidden path device nvme0c0n1 and the block device
# nvme0n1 belongs to the subsystem (/sys/class/nvme-subsystem/nvme-subsys0/), which
# links the controller: look in both places.
BLOCK_SCRIPT = r"""for c in {sys}/bus/pci/devices/{bdf}/nvme/nvme*; do
  [ -d "$c" ] || continue
  ls -1 "$c"
  for s in {sys}/class/nvme-subsystem/*; do [ -e "$s/${{c##*/}}" ] && ls -1 "$s"; done
done 2>/dev/null"""
NAMESPACE_BLOCK = re.compile(r"^nvme\d+n\d+$")


def parse_block_listing(text: str) -> list[str]:
    """nvme0n1, ... from the folder listings of BLOCK_SCRIPT (path devices nvme0c0n1 are
    not block devices one can open)."""
    return sorted({name for name in text.split() if NAMESPACE_BLOCK.match(name)})


def block_devices(guest: Guest, bdf: str, sysfs: str = "/sys") -> list[str]:
    """Block devices (namespaces) of the NVMe controller at ``bdf``: nvme0n1, ..."""
    return parse_block_listing(guest.run(BLOCK_SCRIPT.format(sys=sysfs, bdf=bdf)).out)


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


@dataclass
class Readiness:
    """What tells whether a device may be passed through, as read before touching it:
    its block devices, what is mounted on them, L1's root disk, and its IOMMU group's
    members (each with its driver and PCI class)."""

    disks: list[str]
    mounts: list[str]
    root_disk: str | None
    group_members: dict[str, tuple[str | None, int]]


def readiness(guest: Guest, dev: PciDevice) -> Readiness:
    disks = block_devices(guest, dev.bdf)
    return Readiness(disks, mounts_on(guest, disks), root_disk(guest),
                     group_drivers(guest, dev.iommu_group) if dev.iommu_group is not None else {})


@dataclass
class Handover:
    """After L2 started: the device's driver in L1, VFIO's node for its group, and `nvme list` in L1."""

    driver: str | None
    vfio_node: str
    vfio_node_exists: bool
    listed: list[dict]


def handover(guest: Guest, dev: PciDevice) -> Handover:
    node = f"/dev/vfio/{dev.iommu_group}"
    return Handover(driver_of(guest, dev.bdf), node, guest.exists(node), nvme_list(guest))
