"""L1's kernels: which one runs, which are installed, and whether each has the driver
of a vIOMMU (read only).

A kernel argument cannot turn on a driver the kernel was built without. Debian's
cloud kernel (``linux-image-cloud-amd64``, the lab's L1 kernel) has
``CONFIG_INTEL_IOMMU=y`` but not ``CONFIG_AMD_IOMMU``: behind QEMU's amd-iommu it
prints ``Unknown kernel command line parameters "amd_iommu=on"`` and no ``AMD-Vi``
line at all, and ``/sys/kernel/iommu_groups`` stays empty. Distribution kernels
built for hardware (Debian's ``linux-image-amd64``, RHEL's ``kernel``) have both.
Nothing is downloaded: a kernel with the driver must already be installed (the lab's
image carries Debian's generic kernel beside the cloud one).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..guest import Guest

KCONFIG = {"intel": "CONFIG_INTEL_IOMMU", "amd": "CONFIG_AMD_IOMMU"}


def has_driver(config_text: str | None, kind: str) -> bool | None:
    """Is the ``kind`` IOMMU driver built in, by a kernel's ``/boot/config-*`` text (None: no text)?"""
    if config_text is None:
        return None
    return re.search(rf"^{KCONFIG[kind]}=y\s*$", config_text, re.M) is not None


def running_kernel(guest: Guest) -> str:
    return guest.run("uname -r", timeout=30, check=True).out.strip()


def installed_kernels(guest: Guest) -> list[str]:
    """Releases with a ``/boot/vmlinuz-<release>``, newest name first."""
    return sorted((n.removeprefix("vmlinuz-") for n in guest.listdir("/boot") if n.startswith("vmlinuz-")),
                  reverse=True)


@dataclass
class KernelChoice:
    running: str
    boot: str | None   # the release to boot instead; None: the running one will do
    reason: str
    lacking: str = ""  # the driver's config option no installed kernel has ("": one has it)


def kernel_for(guest: Guest, kind: str) -> KernelChoice:
    """The kernel L1 should boot for a ``kind`` vIOMMU: the running one when it has the
    driver (or its config cannot be read: the kernel log after the reboot tells), else an
    installed one that has it; when none has, ``lacking`` names the option (a fact: stage 03
    refuses)."""
    release = running_kernel(guest)
    ok = has_driver(guest.read_text(f"/boot/config-{release}"), kind)
    if ok is None:
        return KernelChoice(release, None, f"/boot/config-{release} is not readable: the kernel log after the "
                                           "reboot tells")
    if ok:
        return KernelChoice(release, None, f"the running kernel {release} has {KCONFIG[kind]}=y")
    target = next((k for k in installed_kernels(guest)
                   if k != release and has_driver(guest.read_text(f"/boot/config-{k}"), kind)), None)
    if target is None:
        return KernelChoice(release, None, f"L1's kernel {release} is built without {KCONFIG[kind]} and no other "
                                           "installed kernel has it", lacking=KCONFIG[kind])
    return KernelChoice(release, target, f"the running kernel {release} lacks {KCONFIG[kind]}; {target} has it")
