"""The ``<devices>`` parts: disks, NICs, the guest agent channel, the serial log,
the passed-through PCI device, the vIOMMU and the small extras.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Literal, Optional

from .base import XMLPart, on_off, one_of, sub, yes_no

# libvirt >= 11.5.0 emulates NVMe natively: <target dev='nvme0n1' bus='nvme'/>
# plus a <serial> (NEWS.rst, v11.5.0, "qemu: Add support for NVMe disks").
NATIVE_NVME_MIN_LIBVIRT = 11_005_000


def supports_native_nvme(libvirt_version: int) -> bool:
    """Does this libvirt (``virConnect.getLibVersion()``, e.g. 9000000) know ``bus='nvme'``?"""
    return libvirt_version >= NATIVE_NVME_MIN_LIBVIRT


_DEFAULT_TARGET = {"virtio": "vda", "sata": "sda", "nvme": "nvme0n1"}
_TARGET_RE = {
    "virtio": re.compile(r"^vd[a-z]+$"),
    "sata": re.compile(r"^sd[a-z]+$"),
    "nvme": re.compile(r"^nvme\d+n\d+$"),
}


@dataclass
class Disk(XMLPart):
    """A disk image or block device -> ``<disk>``.

    ``bus='nvme'`` is libvirt's native NVMe bus (libvirt >= 11.5): QEMU needs a
    serial, so one is required; the target is named ``nvme<ctrl>n<ns>``. A path
    under ``/dev/`` becomes ``type='block'``.
    """

    path: str
    format: Literal["raw", "qcow2"] = "qcow2"
    target_dev: str = ""  # "" -> vda / sda / nvme0n1 by bus
    bus: Literal["virtio", "nvme", "sata"] = "virtio"
    cache: Optional[str] = None
    serial: Optional[str] = None
    readonly: bool = False
    discard: Optional[Literal["unmap", "ignore"]] = None   # unmap: the guest's TRIM frees space in the image

    def __post_init__(self) -> None:
        one_of("disk format", self.format, ("raw", "qcow2"))
        if self.discard is not None:
            one_of("disk discard", self.discard, ("unmap", "ignore"))
        one_of("disk bus", self.bus, ("virtio", "nvme", "sata"))
        if self.cache is not None:
            one_of("disk cache", self.cache,
                   ("default", "none", "writeback", "writethrough", "directsync", "unsafe"))
        if not self.path.startswith("/"):
            raise ValueError(f"disk path must be absolute (libvirt refuses relative paths), got {self.path!r}")
        self.target_dev = self.target_dev or _DEFAULT_TARGET[self.bus]
        if not _TARGET_RE[self.bus].match(self.target_dev):
            raise ValueError(f"target dev {self.target_dev!r} does not suit bus {self.bus!r} "
                             f"(expected like {_DEFAULT_TARGET[self.bus]!r})")
        if self.bus == "nvme" and not self.serial:
            raise ValueError("an NVMe disk needs a serial: QEMU's nvme controller refuses to start without one")

    @property
    def is_block(self) -> bool:
        return self.path.startswith("/dev/")

    def to_element(self) -> ET.Element:
        element = ET.Element("disk", type="block" if self.is_block else "file", device="disk")
        sub(element, "driver", name="qemu", type=self.format, cache=self.cache, discard=self.discard)
        if self.is_block:
            sub(element, "source", dev=self.path)
        else:
            sub(element, "source", file=self.path)
        sub(element, "target", dev=self.target_dev, bus=self.bus)
        if self.serial:
            sub(element, "serial", self.serial)
        if self.readonly:
            sub(element, "readonly")
        return element


@dataclass
class Interface(XMLPart):
    """A NIC -> ``<interface>``: libvirt's user-mode (``type='user'``) or a host bridge.

    The seed's ``--network bridge=bridge0,model=virtio,driver_name=vhost,driver_queues=8``
    is ``Interface('bridge', 'bridge0', driver_name='vhost', queues=8)``.
    """

    type: Literal["user", "bridge"] = "user"
    source_bridge: Optional[str] = None
    model: str = "virtio"
    driver_name: Optional[Literal["vhost", "qemu"]] = None
    queues: Optional[int] = None
    mac: Optional[str] = None

    def __post_init__(self) -> None:
        one_of("interface type", self.type, ("user", "bridge"))
        if self.type == "bridge" and not self.source_bridge:
            raise ValueError("a bridge interface needs source_bridge (e.g. 'bridge0')")
        if self.type == "user" and self.source_bridge:
            raise ValueError("a user-mode interface has no source bridge")
        if self.driver_name is not None:
            one_of("interface driver name", self.driver_name, ("vhost", "qemu"))
        if self.queues is not None and self.queues < 1:
            raise ValueError(f"queues must be >= 1, got {self.queues}")

    def to_element(self) -> ET.Element:
        element = ET.Element("interface", type=self.type)
        if self.mac:
            sub(element, "mac", address=self.mac)
        if self.type == "bridge":
            sub(element, "source", bridge=self.source_bridge)
        sub(element, "model", type=self.model)
        if self.driver_name or self.queues:
            sub(element, "driver", name=self.driver_name, queues=self.queues)
        return element


@dataclass
class Channel(XMLPart):
    """A virtio-serial channel; by default the QEMU guest agent's -> ``<channel type='unix'>``."""

    name: str = "org.qemu.guest_agent.0"

    def to_element(self) -> ET.Element:
        element = ET.Element("channel", type="unix")
        sub(element, "target", type="virtio", name=self.name)
        return element


@dataclass
class Serial(XMLPart):
    """The guest's serial console, logged to a host file the runbook can tail while it boots.

    ``kind='file'``: QEMU writes the port straight to ``log_path``
    (``<serial type='file'>``). ``kind='pty'``: a pty (so ``virsh console`` also
    works) whose output virtlogd copies to ``log_path`` (``<log file=.../>``).
    ``console=True`` adds the matching ``<console>`` libvirt would add anyway.
    """

    log_path: str
    kind: Literal["file", "pty"] = "file"
    port: int = 0
    console: bool = True
    append: bool = False

    def __post_init__(self) -> None:
        one_of("serial kind", self.kind, ("file", "pty"))
        if not self.log_path.startswith("/"):
            raise ValueError(f"serial log path must be absolute, got {self.log_path!r}")

    def _source(self, element: ET.Element) -> None:
        if self.kind == "file":
            sub(element, "source", path=self.log_path, append="on" if self.append else None)
        else:
            sub(element, "log", file=self.log_path, append=on_off(self.append))

    def elements(self) -> list[ET.Element]:
        """``<serial>`` and, when asked for, its ``<console>``."""
        serial = ET.Element("serial", type=self.kind)
        self._source(serial)
        sub(serial, "target", port=self.port)
        out = [serial]
        if self.console:
            console = ET.Element("console", type=self.kind)
            if self.kind == "file":
                sub(console, "source", path=self.log_path)
            sub(console, "target", type="serial", port=self.port)
            out.append(console)
        return out

    def to_element(self) -> ET.Element:
        """The ``<serial>`` alone (``Domain`` uses ``elements()`` to add the console too)."""
        return self.elements()[0]


BDF_RE = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-1][0-9a-fA-F])\.([0-7])$")
NODEDEV_RE = re.compile(r"^pci_([0-9a-fA-F]{4})_([0-9a-fA-F]{2})_([0-1][0-9a-fA-F])_([0-7])$")


@dataclass
class HostdevPCI(XMLPart):
    """A host PCI device given to the guest through VFIO -> ``<hostdev type='pci'>``.

    ``managed=True`` lets libvirt unbind the device from its driver, bind it to
    vfio-pci on start and give it back afterwards.
    """

    domain: int
    bus: int
    slot: int
    function: int
    managed: bool = True

    def __post_init__(self) -> None:
        for name, value, top in (("domain", self.domain, 0xFFFF), ("bus", self.bus, 0xFF),
                                 ("slot", self.slot, 0x1F), ("function", self.function, 7)):
            if not isinstance(value, int) or not 0 <= value <= top:
                raise ValueError(f"PCI {name} must be 0..{top:#x}, got {value!r}")

    @classmethod
    def from_bdf(cls, bdf: str, managed: bool = True) -> "HostdevPCI":
        """From ``lspci -D`` form ``0000:00:02.0``; anything else is refused."""
        match = BDF_RE.match(bdf.strip()) if isinstance(bdf, str) else None
        if not match:
            raise ValueError(f"PCI address {bdf!r} is not of the form DDDD:BB:DD.F "
                             "(domain:bus:device.function in hex, e.g. 0000:00:02.0, as `lspci -D` prints)")
        d, b, s, f = (int(x, 16) for x in match.groups())
        return cls(d, b, s, f, managed)

    @classmethod
    def from_nodedev(cls, name: str, managed: bool = True) -> "HostdevPCI":
        """From libvirt's node device name ``pci_0000_00_02_0`` (the seed's ``--hostdev``)."""
        match = NODEDEV_RE.match(name.strip()) if isinstance(name, str) else None
        if not match:
            raise ValueError(f"node device name {name!r} is not of the form pci_DDDD_BB_DD_F")
        d, b, s, f = (int(x, 16) for x in match.groups())
        return cls(d, b, s, f, managed)

    @property
    def bdf(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"

    def to_element(self) -> ET.Element:
        element = ET.Element("hostdev", mode="subsystem", type="pci", managed=yes_no(self.managed))
        source = sub(element, "source")
        sub(source, "address", domain=f"0x{self.domain:04x}", bus=f"0x{self.bus:02x}",
            slot=f"0x{self.slot:02x}", function=f"0x{self.function:x}")
        return element


@dataclass
class HostdevOnRootPort(XMLPart):
    """A host PCI device (an NVMe controller of L0) given to the guest on a PCIe root
    port of its own -> ``<controller type='pci' model='pcie-root-port' index='N'/>`` and
    ``<hostdev mode='subsystem' type='pci' managed='yes'>`` at slot 0 of bus N.

    A port of its own keeps the device alone on its bus in the guest (its own IOMMU
    group behind a vIOMMU) and hot-pluggable; ``managed`` lets libvirt move it from
    the host's driver to vfio-pci at start and back at stop. ``port_index`` must be a
    controller index nothing else in the domain uses.
    """

    bdf: str
    port_index: int
    managed: bool = True

    def __post_init__(self) -> None:
        HostdevPCI.from_bdf(self.bdf)  # refuses a malformed address
        self.bdf = self.bdf.lower()
        if not isinstance(self.port_index, int) or not 1 <= self.port_index <= 0xFF:
            raise ValueError(f"a root port's index is its bus number in the guest, 1..255, got {self.port_index!r}")

    @property
    def hostdev(self) -> HostdevPCI:
        return HostdevPCI.from_bdf(self.bdf, managed=self.managed)

    @property
    def guest_address(self) -> str:
        """Where the guest sees the device: the port's bus, slot 0."""
        return f"0000:{self.port_index:02x}:00.0"

    def elements(self) -> list[ET.Element]:
        """The root port, then the hostdev placed on it."""
        port = ET.Element("controller", type="pci", index=str(self.port_index), model="pcie-root-port")
        hostdev = self.hostdev.to_element()
        sub(hostdev, "address", type="pci", domain="0x0000", bus=f"0x{self.port_index:02x}", slot="0x00",
            function="0x0")
        return [port, hostdev]

    def to_element(self) -> ET.Element:
        """The ``<hostdev>`` alone (``Domain`` uses ``elements()`` to add its port too)."""
        return self.elements()[1]


# libvirt >= 11.5.0 knows <iommu model='amd'> with driver attributes intremap, iotlb,
# passthrough and xtsup (NEWS.rst, v11.5.0, "qemu: add support for AMD IOMMU device");
# 11.3's schema (domaincommon.rng) offers intel, smmuv3 and virtio only.
NATIVE_AMD_IOMMU_MIN_LIBVIRT = 11_005_000


def supports_native_amd_iommu(libvirt_version: int) -> bool:
    """Does this libvirt (``virConnect.getLibVersion()``) know ``<iommu model='amd'>``?"""
    return libvirt_version >= NATIVE_AMD_IOMMU_MIN_LIBVIRT


@dataclass
class IOMMU(XMLPart):
    """The guest's vIOMMU -> ``<iommu model='intel'|'amd'><driver .../></iommu>``.

    ``intel``: libvirt's form of the seed's ``-device intel-iommu,intremap=on,device-iotlb=on``.
    ``caching_mode`` is what lets the guest hand devices to VFIO (nested passthrough);
    ``intremap`` needs ``Features(ioapic_driver='qemu')`` (split irqchip).
    ``amd`` (libvirt >= 11.5, QEMU's ``amd-iommu``): ``intremap``, ``iotlb``,
    ``passthrough`` (QEMU's ``pt``) and ``xtsup`` (x2APIC beyond 255 vCPUs); it has
    no caching mode and no ``eim``. With an older libvirt use
    ``qemu_args.amd_iommu_qemu_args`` instead.
    """

    model: Literal["intel", "amd"] = "intel"
    intremap: Optional[bool] = True
    caching_mode: Optional[bool] = True
    iotlb: Optional[bool] = True
    eim: Optional[bool] = None
    passthrough: Optional[bool] = None
    xtsup: Optional[bool] = None

    def __post_init__(self) -> None:
        one_of("iommu model", self.model, ("intel", "amd"))
        if self.model == "amd":
            for name in ("caching_mode", "eim"):
                if getattr(self, name):
                    raise ValueError(f"iommu model 'amd' has no {name} (QEMU's amd-iommu offers intremap, "
                                     "device-iotlb, pt and xtsup)")
            self.caching_mode = self.eim = None
        else:
            for name in ("passthrough", "xtsup"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} is an attribute of iommu model 'amd', not {self.model!r}")

    def to_element(self) -> ET.Element:
        element = ET.Element("iommu", model=self.model)
        attrs = {"intremap": on_off(self.intremap), "caching_mode": on_off(self.caching_mode),
                 "eim": on_off(self.eim), "iotlb": on_off(self.iotlb),
                 "passthrough": on_off(self.passthrough), "xtsup": on_off(self.xtsup)}
        if any(v is not None for v in attrs.values()):
            sub(element, "driver", **attrs)
        return element


@dataclass
class Memballoon(XMLPart):
    """The memory balloon; ``none`` keeps a benchmark guest's memory still -> ``<memballoon>``."""

    model: Literal["none", "virtio"] = "none"

    def __post_init__(self) -> None:
        one_of("memballoon model", self.model, ("none", "virtio"))

    def to_element(self) -> ET.Element:
        return ET.Element("memballoon", model=self.model)


@dataclass
class RNG(XMLPart):
    """A virtio-rng fed from the host: a fresh guest gets boot entropy at once -> ``<rng>``."""

    backend: str = "/dev/urandom"

    def to_element(self) -> ET.Element:
        element = ET.Element("rng", model="virtio")
        sub(element, "backend", self.backend, model="random")
        return element


@dataclass
class Controller(XMLPart):
    """A controller -> ``<controller>``, e.g. a spare ``pcie-root-port`` for a hotplug,
    or (libvirt >= 11.5) ``type='nvme'`` carrying the NVMe controller's ``<serial>``.
    ``root_slot`` (with ``function``) pins it to that slot of pcie.0, where libvirt
    would otherwise pick the first free one.
    """

    type: str
    model: Optional[str] = None
    index: Optional[int] = None
    serial: Optional[str] = None
    root_slot: Optional[int] = None
    function: int = 0

    def __post_init__(self) -> None:
        if self.serial is not None and self.type != "nvme":
            raise ValueError("only an nvme controller has a serial")
        if self.root_slot is not None and not (0 < self.root_slot <= 0x1F and 0 <= self.function <= 7):
            raise ValueError(f"a controller's slot on pcie.0 must be 0x01..0x1f and its function 0..7, "
                             f"got {self.root_slot!r}.{self.function!r}")

    def to_element(self) -> ET.Element:
        element = ET.Element("controller", type=self.type)
        if self.index is not None:
            element.set("index", str(self.index))
        if self.model is not None:
            element.set("model", self.model)
        if self.serial is not None:
            sub(element, "serial", self.serial)
        if self.root_slot is not None:
            sub(element, "address", type="pci", domain="0x0000", bus="0x00", slot=f"0x{self.root_slot:02x}",
                function=f"0x{self.function:x}", multifunction="on" if self.function == 0 else None)
        return element
