"""QEMU arguments libvirt passes through untouched: ``<qemu:commandline>``.

libvirt 9.0 has no element for an emulated NVMe controller (LAB-FACTS, libvirt
at L0, pitfall 4), so the seed adds it as raw QEMU arguments. Two pitfalls
shape the builders below:

* libvirt neither relabels nor chowns files named only here: the backing file
  must already be readable and writable by the QEMU user (pitfall 1);
* a ``-device`` without an address takes a PCI slot libvirt gives its own
  root ports: always pass an explicit ``bus=pcie.0,addr=0x..`` (pitfall 2).
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from .base import QEMU_NS, XMLPart

_ADDR_RE = re.compile(r"^0x[0-9a-fA-F]{1,2}$")


@dataclass
class QemuCommandline(XMLPart):
    """Raw QEMU arguments -> ``<qemu:commandline><qemu:arg value='...'/>...``."""

    args: list[str] = field(default_factory=list)

    def to_element(self) -> ET.Element:
        element = ET.Element(f"{{{QEMU_NS}}}commandline")
        for arg in self.args:
            ET.SubElement(element, f"{{{QEMU_NS}}}arg", {"value": arg})
        return element


def _qemu_opt_value(text: str) -> str:
    """Escape a value inside a QEMU option list: a comma is written twice."""
    return text.replace(",", ",,")


def _check_addr(addr: str) -> None:
    if not _ADDR_RE.match(addr) or not 0 < int(addr, 16) <= 0x1F:
        raise ValueError(f"PCI slot address must be 0x01..0x1f, got {addr!r}")


def nvme_qemu_args(path: str, serial: str, drive_id: str = "nvm",
                   bus: str = "pcie.0", addr: str = "0x10") -> list[str]:
    """The seed's emulated NVMe: a raw ``-drive`` plus ``-device nvme`` at a fixed PCI slot.

    >>> nvme_qemu_args('/srv/nvme.raw', '1234')[1]
    'file=/srv/nvme.raw,if=none,id=nvm,format=raw'
    """
    if not serial:
        raise ValueError("an emulated NVMe controller needs a serial (QEMU refuses none)")
    _check_addr(addr)
    return [
        "-drive", f"file={_qemu_opt_value(path)},if=none,id={drive_id},format=raw",
        "-device", f"nvme,drive={drive_id},serial={_qemu_opt_value(serial)},bus={bus},addr={addr}",
    ]


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


def amd_iommu_qemu_args(intremap: bool = True, device_iotlb: bool | None = True,
                        pt: bool | None = None, xtsup: bool | None = None,
                        dma_remap: bool | None = None) -> list[str]:
    """QEMU's AMD vIOMMU for a libvirt without ``<iommu model='amd'>`` (before 11.5).

    ``-device amd-iommu`` is a system-bus device that creates its own PCI function
    (``AMDVI-PCI``, 1022:1419, class 0806) in the first free slot of pcie.0: QEMU
    10.0 gives it no ``addr`` option, so the runbook keeps the slots it places by
    hand (NVMe, NIC) high. List it before the NVMe: a PCI device created before
    the vIOMMU gets plain memory as its DMA address space and bypasses it.
    ``intremap=on`` needs the split irqchip (``<ioapic driver='qemu'/>``) under KVM;
    ``xtsup`` only matters beyond 255 vCPUs. Which of ``pt`` and ``dma-remap`` a QEMU
    needs, and why ``device-iotlb`` does nothing for an NVMe, is decided in
    ``checks.viommu.amd_iommu_options``; None leaves an option out (QEMU's default).

    >>> amd_iommu_qemu_args()
    ['-device', 'amd-iommu,intremap=on,device-iotlb=on']
    """
    opts = [f"intremap={_on_off(intremap)}"]
    if device_iotlb is not None:
        opts.append(f"device-iotlb={_on_off(device_iotlb)}")
    if pt is not None:
        opts.append(f"pt={_on_off(pt)}")
    if xtsup is not None:
        opts.append(f"xtsup={_on_off(xtsup)}")
    if dma_remap is not None:
        opts.append(f"dma-remap={_on_off(dma_remap)}")
    return ["-device", "amd-iommu," + ",".join(opts)]


def user_net_qemu_args(ssh_port: int, bind: str = "127.0.0.1", addr: str = "0x11",
                       netdev_id: str = "labnet", bus: str = "pcie.0") -> list[str]:
    """User-mode networking whose only door is the guest's SSH, forwarded on ``bind:ssh_port``.

    ``restrict=on`` cuts the guest off from the outside; ``hostfwd`` still works.
    ``romfile=`` leaves out the NIC's iPXE option ROM: the guest boots from disk.
    """
    if not 0 < int(ssh_port) < 65536:
        raise ValueError(f"ssh_port must be 1..65535, got {ssh_port!r}")
    _check_addr(addr)
    return [
        "-netdev", f"user,id={netdev_id},restrict=on,hostfwd=tcp:{bind}:{int(ssh_port)}-:22",
        "-device", f"virtio-net-pci,netdev={netdev_id},bus={bus},addr={addr},romfile=",
    ]
