"""The domain and its top-level parts: ``<vcpu>``, ``<os>``, ``<cpu>``, ``<features>``."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Literal, Optional

from .base import XMLPart, one_of, sub
from .devices import IOMMU, HostdevOnRootPort, HostdevPCI, Serial
from .qemu_args import QemuCommandline


@dataclass
class VCPU(XMLPart):
    """Virtual CPUs -> ``<vcpu placement='static' cpuset='16-23,40-47'>16</vcpu>``.

    ``cpuset`` keeps every vCPU on those host CPUs (one NUMA node in the seed).
    """

    count: int
    cpuset: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"vcpu count must be a positive integer, got {self.count!r}")

    def to_element(self) -> ET.Element:
        element = ET.Element("vcpu", placement="static")
        if self.cpuset:
            element.set("cpuset", self.cpuset)
        element.text = str(self.count)
        return element


@dataclass
class OS(XMLPart):
    """Machine type and boot -> ``<os>``; ``kernel``/``initrd``/``cmdline`` boot a kernel directly."""

    machine: str = "q35"
    arch: str = "x86_64"
    kernel: Optional[str] = None
    initrd: Optional[str] = None
    cmdline: Optional[str] = None
    boot_dev: Optional[Literal["hd", "cdrom", "network"]] = None

    def __post_init__(self) -> None:
        if (self.initrd or self.cmdline) and not self.kernel:
            raise ValueError("initrd and cmdline only make sense with a kernel (direct kernel boot)")
        if self.boot_dev is not None:
            one_of("boot device", self.boot_dev, ("hd", "cdrom", "network"))

    def to_element(self) -> ET.Element:
        element = ET.Element("os")
        sub(element, "type", "hvm", arch=self.arch, machine=self.machine)
        if self.kernel:
            sub(element, "kernel", self.kernel)
        if self.initrd:
            sub(element, "initrd", self.initrd)
        if self.cmdline:
            sub(element, "cmdline", self.cmdline)
        if self.boot_dev:
            sub(element, "boot", dev=self.boot_dev)
        return element


@dataclass
class CPU(XMLPart):
    """The guest CPU model and topology -> ``<cpu mode=...>``.

    ``host-passthrough`` (the seed, under KVM) hands the host CPU, vmx/svm
    included, to the guest; under TCG use ``maximum`` (QEMU's ``-cpu max``).
    ``<topology>`` appears only when sockets, cores and threads are all given;
    each name in ``disabled`` becomes ``<feature policy='disable' name=.../>``
    (a CPU flag the guest does not see).
    """

    mode: Literal["host-passthrough", "host-model", "maximum", "custom"] = "host-passthrough"
    sockets: Optional[int] = None
    cores: Optional[int] = None
    threads: Optional[int] = None
    check: Optional[Literal["none", "partial", "full"]] = None
    model: Optional[str] = None  # only for mode='custom', e.g. 'qemu64'
    disabled: tuple[str, ...] = ()  # CPU flags hidden from the guest, libvirt's names (e.g. 'erms')

    def __post_init__(self) -> None:
        one_of("cpu mode", self.mode, ("host-passthrough", "host-model", "maximum", "custom"))
        for name in self.disabled:
            if not re.fullmatch(r"[a-z0-9_.-]+", name):
                raise ValueError(f"cpu feature {name!r}: expected a libvirt feature name like 'erms'")
        if self.check is not None:
            one_of("cpu check", self.check, ("none", "partial", "full"))
        given = [v is not None for v in (self.sockets, self.cores, self.threads)]
        if any(given) and not all(given):
            raise ValueError("cpu topology needs sockets, cores and threads together")
        if self.mode == "custom" and not self.model:
            raise ValueError("cpu mode 'custom' needs a model")
        if self.mode != "custom" and self.model:
            raise ValueError("a cpu model is only given with mode 'custom'")

    @property
    def topology_vcpus(self) -> Optional[int]:
        if self.sockets is None:
            return None
        return self.sockets * self.cores * self.threads  # type: ignore[operator]

    def to_element(self) -> ET.Element:
        element = ET.Element("cpu", mode=self.mode)
        if self.check:
            element.set("check", self.check)
        if self.model:
            sub(element, "model", self.model)
        for name in self.disabled:
            sub(element, "feature", policy="disable", name=name)
        if self.sockets is not None:
            sub(element, "topology", sockets=self.sockets, cores=self.cores, threads=self.threads)
        return element


@dataclass
class Features(XMLPart):
    """Platform features -> ``<features>``.

    ``ioapic_driver='qemu'`` is libvirt's form of ``kernel-irqchip=split`` (needed
    by the vIOMMU's interrupt remapping); ``kvm_hidden`` is the seed's
    ``--feature kvm_hidden=on`` -> ``<kvm><hidden state='on'/></kvm>``.
    """

    acpi: bool = True
    apic: bool = True
    ioapic_driver: Optional[Literal["qemu", "kvm"]] = None
    kvm_hidden: bool = False

    def __post_init__(self) -> None:
        if self.ioapic_driver is not None:
            one_of("ioapic driver", self.ioapic_driver, ("qemu", "kvm"))

    def to_element(self) -> ET.Element:
        element = ET.Element("features")
        if self.acpi:
            sub(element, "acpi")
        if self.apic:
            sub(element, "apic")
        if self.kvm_hidden:
            kvm = sub(element, "kvm")
            sub(kvm, "hidden", state="on")
        if self.ioapic_driver:
            sub(element, "ioapic", driver=self.ioapic_driver)
        return element


@dataclass
class Domain(XMLPart):
    """A whole guest -> ``<domain>``.

    ``type='kvm'`` on a real host, ``'qemu'`` (TCG) in the lab. ``xmlns:qemu`` is
    declared only when ``qemu_args`` are present. ``to_element()`` refuses a
    definition libvirt or QEMU is known to refuse at start (see ``problems()``).
    """

    name: str
    type: Literal["kvm", "qemu"]
    memory_mib: int
    vcpu: VCPU
    os: OS = field(default_factory=OS)
    cpu: CPU = field(default_factory=CPU)
    features: Features = field(default_factory=Features)
    devices: list[XMLPart] = field(default_factory=list)
    qemu_args: Optional[QemuCommandline] = None
    uuid: Optional[str] = None
    description: Optional[str] = None

    def __post_init__(self) -> None:
        one_of("domain type", self.type, ("kvm", "qemu"))
        if not self.name or any(c in self.name for c in "/\n"):
            raise ValueError(f"domain name must be non-empty without '/' or newlines, got {self.name!r}")
        if not isinstance(self.memory_mib, int) or self.memory_mib < 1:
            raise ValueError(f"memory_mib must be a positive integer, got {self.memory_mib!r}")

    def problems(self) -> list[str]:
        """What libvirt or QEMU would refuse when the guest starts; empty when none is known."""
        out = []
        if self.type == "qemu" and self.cpu.mode in ("host-passthrough", "host-model"):
            out.append(f"cpu mode {self.cpu.mode!r} needs type 'kvm'; under TCG (type 'qemu') use 'maximum'")
        if self.cpu.topology_vcpus is not None and self.cpu.topology_vcpus != self.vcpu.count:
            out.append(f"cpu topology gives {self.cpu.topology_vcpus} vCPUs "
                       f"(sockets x cores x threads) but vcpu count is {self.vcpu.count}")
        for iommu in (d for d in self.devices if isinstance(d, IOMMU)):
            if iommu.intremap and self.features.ioapic_driver != "qemu":
                out.append("iommu intremap='on' needs Features(ioapic_driver='qemu') (split irqchip)")
            if iommu.eim and not iommu.intremap:
                out.append("iommu eim='on' needs intremap='on'")
        hostdevs = [d for d in self.devices if isinstance(d, (HostdevPCI, HostdevOnRootPort))]
        for iommu in (d for d in self.devices if isinstance(d, IOMMU)) if hostdevs else ():
            # QEMU (hw/i386/intel_iommu.c) refuses a vfio-pci device behind intel-iommu without caching
            # mode ("device ... requires caching mode"): VFIO must see every mapping the guest makes.
            if iommu.model == "intel" and not iommu.caching_mode:
                out.append("a host PCI device (hostdev) behind the intel vIOMMU needs caching_mode='on': "
                           "QEMU refuses it otherwise (VFIO must be told of every mapping the guest makes)")
            if iommu.model == "amd":
                out.append("a host PCI device (hostdev) cannot sit behind the amd vIOMMU: it has no caching "
                           "mode, and QEMU refuses VFIO devices behind it")
        if sum(isinstance(d, IOMMU) for d in self.devices) > 1:
            out.append("a domain has at most one iommu")
        return out

    def to_element(self) -> ET.Element:
        problems = self.problems()
        if problems:
            raise ValueError(f"domain {self.name!r} would not start: " + "; ".join(problems))
        element = ET.Element("domain", type=self.type)
        sub(element, "name", self.name)
        if self.uuid:
            sub(element, "uuid", self.uuid)
        if self.description:
            sub(element, "description", self.description)
        sub(element, "memory", str(self.memory_mib * 1024), unit="KiB")
        element.append(self.vcpu.to_element())
        element.append(self.os.to_element())
        element.append(self.features.to_element())
        element.append(self.cpu.to_element())
        devices = sub(element, "devices")
        for device in self.devices:
            if isinstance(device, (Serial, HostdevOnRootPort)):
                devices.extend(device.elements())
            else:
                devices.append(device.to_element())
        if self.qemu_args is not None and self.qemu_args.args:
            element.append(self.qemu_args.to_element())
        return element
