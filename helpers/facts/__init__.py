"""Facts: what a machine is, read through a ``Guest`` and never changed.

Each fact is a function ``(guest) -> dataclass or value``; the same functions
read the host (L0, through ``Local`` or, with host.ssh, SSH) and L1 (through SSH). Judging the facts
is the job of ``helpers.checks``.

- ``cpu``: vendor, model, vmx/svm, online CPUs, NUMA nodes and thread siblings
- ``kvm``: /dev/kvm, KVM modules, nested, kernel command line, a KVM smoke boot
- ``iommu``: ACPI DMAR/IVRS, kernel log lines, /sys/class/iommu, IOMMU groups
- ``libvirt``: virsh version and capabilities, QEMU's device list
- ``system``: memory, free disk at a path, os-release
"""
