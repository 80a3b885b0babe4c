"""libvirt XML for the runbook: one small class per libvirt part, typed fields in, XML out.

Rule: XML in and out only: no libvirt connection, no machine.

Build a ``Domain`` from the parts, print it with ``to_xml()``, check a defined
domain against it with ``differences()``, show the equivalent ``virt-install``
command with ``virt_install_command()``.
"""
from .base import QEMU_NS, XMLPart
from .compare import differences
from .devices import (
    IOMMU,
    NATIVE_AMD_IOMMU_MIN_LIBVIRT,
    NATIVE_NVME_MIN_LIBVIRT,
    RNG,
    Channel,
    Controller,
    Disk,
    HostdevOnRootPort,
    HostdevPCI,
    Interface,
    Memballoon,
    Serial,
    supports_native_amd_iommu,
    supports_native_nvme,
)
from .domain import CPU, OS, VCPU, Domain, Features
from .qemu_args import QemuCommandline, amd_iommu_qemu_args, nvme_qemu_args, user_net_qemu_args
from .virt_install import virt_install_command

__all__ = [
    "QEMU_NS", "XMLPart",
    "Domain", "VCPU", "OS", "CPU", "Features",
    "Disk", "Interface", "Channel", "Serial", "HostdevOnRootPort", "HostdevPCI", "IOMMU", "Memballoon", "RNG", "Controller",
    "QemuCommandline", "amd_iommu_qemu_args", "nvme_qemu_args", "user_net_qemu_args",
    "NATIVE_NVME_MIN_LIBVIRT", "supports_native_nvme", "NATIVE_AMD_IOMMU_MIN_LIBVIRT", "supports_native_amd_iommu",
    "differences", "virt_install_command",
]
