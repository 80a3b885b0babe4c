"""Facts: what a machine is, read through a ``Guest`` and never changed.

Rule: a fact only reads a machine, never changes it; judging the facts is elsewhere.

Each fact is a function ``(guest) -> dataclass or value``; the same functions
read the host (L0, through ``Local`` or, with host.ssh, SSH) and L1 (through SSH). Judging the facts
is the job of ``helpers.checks``.

- ``cpu``: vendor, model, vmx/svm, online CPUs, NUMA nodes and thread siblings
- ``kvm``: /dev/kvm, KVM modules, nested, kernel command line, what a KVM smoke boot printed
- ``iommu``: ACPI DMAR/IVRS, kernel log lines, /sys/class/iommu, IOMMU groups
- ``libvirt``: virsh version and capabilities, QEMU's device list
- ``system``: memory, free disk at a path, os-release
- ``pci``: PCI devices, NVMe serials, what may hold a device (mounts, IOMMU group), its driver
- ``storage``: NVMe controllers in lspci, `nvme list`, signatures, mounts and df (as L2 sees them)
"""
